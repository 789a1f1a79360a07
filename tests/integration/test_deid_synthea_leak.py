"""Synthea identities as canaries: none may survive de-identification (tag and surrogate/date-shift modes).

Every Synthea patient's bundle is parsed with the real FHIR connector (no store, no embedding). For each patient the
test de-identifies (a) a free-text summary paragraph composed from the Patient resource (names, birth date in several
formats, address, phone, SSN, MRN, licence and passport numbers), (b) the rendered text of each of the patient's
records that contains a canary value (both with the patient's names from the FHIR ``name`` fields as known
identifiers), and (c) each record through ``deidentify_record`` (structured rules), then
asserts that no canary survives anywhere in the output (case-insensitive; names and numbers as whole words).
"""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from sage_health.data.governance.deid import DeidMode, PresidioDeidentifier, deidentify_record
from sage_health.data.ingest.base import IngestContext, load_json
from sage_health.data.ingest.fhir import FhirBundleConnector
from sage_health.data.schema import Patient, RecordBase
from sage_health.testing.canaries import Canaries, canaries, date_formats, leaks, patient_resource

pytestmark = pytest.mark.integration

KEY = b"synthea-leak-test-key-0123456789"
MODES: tuple[DeidMode, ...] = ("tag", "surrogate")


def _bundles(data_dir: Path) -> list[Path]:
    paths = sorted((data_dir / "synthea_fhir_r4" / "bundles").glob("*.json"))
    assert len(paths) == 30, "expected the 30 shared Synthea bundles"
    return paths


def _canaries(resource: dict[str, Any]) -> Canaries:
    """The patient's identity canaries (names of 2+ letters; the real id is not PHI in this text-level test)."""
    found = canaries(resource, min_name_length=2)
    return Canaries({k: v for k, v in found.values.items() if k != "patient_id"})


def _only(found: Canaries, *, keep: str | None = None, drop: str | None = None) -> Canaries:
    return Canaries({k: v for k, v in found.values.items() if (keep is None or k == keep) and k != drop})


def _summary(resource: dict[str, Any]) -> str:
    name = resource["name"][0]
    given = " ".join(name.get("given", []))
    family = name.get("family", "")
    birth = date.fromisoformat(resource["birthDate"])
    formats = date_formats(birth)
    addr = resource["address"][0]
    ids = {i.get("type", {}).get("text", "Synthea ID"): i["value"] for i in resource.get("identifier", [])}
    phone = next(t["value"] for t in resource["telecom"])
    line = ", ".join(addr.get("line", []))
    return (
        f"{given} {family}, born {formats[0]} ({formats[3]}; DOB {formats[1]}), lives at {line}, "
        f"{addr['city']}, {addr['state']} {addr.get('postalCode', '')}. Phone {phone}. "
        f"SSN {ids.get('Social Security Number', '')}. MRN {ids.get('Medical Record Number', '')}. "
        f"Driver's license {ids.get(chr(68) + 'river' + chr(39) + 's License', '')}. "
        f"Passport number {ids.get('Passport Number', '')}. Mr. {family} was seen on {formats[4]}; "
        f"{given.split()[0]} reports no chest pain. Signed: Dr. {family}."
    )


@pytest.fixture(scope="module")
def deid() -> PresidioDeidentifier:
    return PresidioDeidentifier(KEY)


def test_no_synthea_identity_survives(data_dir: Path, deid: PresidioDeidentifier) -> None:
    connector = FhirBundleConnector()
    ctx = IngestContext(run_id="leak-test")
    failures: list[str] = []
    checked_texts = 0
    name_leaks_without_known = 0
    for path in _bundles(data_dir):
        bundle = load_json(path)
        resource = patient_resource(bundle)
        canaries = _canaries(resource)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        records = [r for r in connector.parse(path, sha, ctx) if isinstance(r, RecordBase)]
        patient = next(r for r in records if isinstance(r, Patient))
        own = [r for r in records if r.patient_id == patient.id]
        texts = [_summary(resource)] + [r.render() for r in own if leaks(r.render(), canaries)]
        assert leaks(texts[0], canaries), "the composed summary must contain the canaries"
        known_names = [n for n in canaries.values["name"] if n]
        for mode in MODES:
            for number, text in enumerate(texts):
                out = deid.deidentify(text, patient_key=patient.id, mode=mode, known={"NAME": known_names}).text
                checked_texts += 1
                for kind in leaks(out, canaries):
                    failures.append(f"{path.name[-41:-5]} {mode} free text #{number}: {kind}")
            for record in own:
                cleaned = deidentify_record(record, deid, mode=mode)
                dumped = cleaned.model_dump_json()
                for kind in leaks(cleaned.render() + " " + dumped, canaries):
                    failures.append(f"{path.name[-41:-5]} {mode} record {record.resource_type}: {kind}")
            # without the structured names, the detector alone must still catch every non-name canary
            alone = deid.deidentify(texts[0], patient_key=patient.id, mode=mode).text
            for kind in leaks(alone, _only(canaries, drop="name")):
                failures.append(f"{path.name[-41:-5]} {mode} summary without known names: {kind}")
            name_leaks_without_known += bool(leaks(alone, _only(canaries, keep="name")))
    assert checked_texts >= 30 * len(MODES)
    # the detector alone (no FHIR name fields) leaves a name part in at most this many of the 60 summaries
    assert name_leaks_without_known <= 12, name_leaks_without_known
    assert failures == [], f"{len(failures)} leaks: {failures[:40]}"


def test_surrogate_mode_is_consistent_within_a_patient(data_dir: Path, deid: PresidioDeidentifier) -> None:
    path = _bundles(data_dir)[0]
    resource = patient_resource(load_json(path))
    text = _summary(resource)
    first = deid.deidentify(text, patient_key="p1", mode="surrogate").text
    again = deid.deidentify(text, patient_key="p1", mode="surrogate").text
    other = deid.deidentify(text, patient_key="p2", mode="surrogate").text
    assert first == again
    assert first != other
