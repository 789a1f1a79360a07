"""FHIR R4 bundle connector on real Synthea entries (bad inputs are built in tmp_path at run time)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from sage_health.core.errors import IngestionError
from sage_health.core.hashing import sha256_file
from sage_health.data.ingest.base import IngestContext, RecordProblem, read_head
from sage_health.data.ingest.fhir import FhirBundleConnector
from sage_health.data.ingest.registry import builtin_connectors
from sage_health.data.schema import DiagnosticReport, FhirResource, Observation, Patient, RecordBase

CTX = IngestContext(run_id="run-fhir-test")
CONNECTOR = FhirBundleConnector()

# One real Synthea bundle and the entries of it the tests use (positions in its "entry" list).
BUNDLE = "Alfreda_Wyman_3287b938-4670-47eb-91e5-e0ce3df71405.json"
PATIENT_ID = "6d23a95e-7e18-4201-90ec-9501fa89fbd2"
PATIENT_RECORD = f"synthea/Patient/{PATIENT_ID}"
PATIENT_AT, HBA1C_AT, LIPID_PANEL_AT, LIPID_RESULTS_AT = 0, 91, 94, (85, 86, 87, 88)

Json = dict[str, Any]


@pytest.fixture(scope="module")
def real_entries(data_dir: Path) -> list[Json]:
    bundle = json.loads((data_dir / "synthea_fhir_r4" / "bundles" / BUNDLE).read_text(encoding="utf-8"))
    entries: list[Json] = bundle["entry"]
    return entries


@pytest.fixture
def small_bundle(real_entries: list[Json]) -> Json:
    """Patient, the lipid panel report *before* its four results, and an HbA1c observation."""
    order = [PATIENT_AT, LIPID_PANEL_AT, *LIPID_RESULTS_AT, HBA1C_AT]
    return {"resourceType": "Bundle", "type": "transaction", "entry": [copy.deepcopy(real_entries[i]) for i in order]}


def _write(tmp_path: Path, obj: Any, name: str = "bundle.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _parse(path: Path) -> tuple[list[RecordBase], list[RecordProblem]]:
    assert CONNECTOR.detect(path, read_head(path))
    items = list(CONNECTOR.parse(path, sha256_file(path), CTX))
    return [i for i in items if isinstance(i, RecordBase)], [i for i in items if isinstance(i, RecordProblem)]


def _strings(obj: Any) -> set[str]:
    """Every string value in a JSON document (keys and resourceType excluded)."""
    if isinstance(obj, dict):
        return {s for k, v in obj.items() if k != "resourceType" for s in _strings(v)}
    if isinstance(obj, list):
        return {s for v in obj for s in _strings(v)}
    return {obj} if isinstance(obj, str) else set()


def test_real_entries_map_to_linked_records(tmp_path: Path, small_bundle: Json) -> None:
    path = _write(tmp_path, small_bundle)
    records, problems = _parse(path)

    assert problems == []
    by_id = {r.id: r for r in records}
    assert len(by_id) == len(records) == 7
    assert all(r.patient_id == PATIENT_RECORD for r in records)
    assert all(r.source == "synthea" for r in records)

    patient = by_id[PATIENT_RECORD]
    assert isinstance(patient, Patient)
    assert (patient.gender, patient.birth_date, patient.marital_status) == ("female", date(1980, 10, 28), "married")
    assert patient.family_name == small_bundle["entry"][0]["resource"]["name"][0]["family"]
    us_core = {
        e["url"].rsplit("-", 1)[1]: next(x["valueString"] for x in e["extension"] if x["url"] == "text")
        for e in small_bundle["entry"][0]["resource"]["extension"]
        if e["url"].startswith("http://hl7.org/fhir/us/core/StructureDefinition/us-core-") and "extension" in e
    }
    assert (patient.race, patient.ethnicity) == (us_core["race"], us_core["ethnicity"])
    assert len(patient.address) == 1
    raw_ids = small_bundle["entry"][0]["resource"]["identifier"]
    assert [(i.system, i.code) for i in patient.identifiers] == [(r["system"], r["value"]) for r in raw_ids]

    hba1c = by_id[f"synthea/Observation/{small_bundle['entry'][6]['resource']['id']}"]
    assert isinstance(hba1c, Observation)
    assert hba1c.render() == "2018-11-27 Hemoglobin A1c/Hemoglobin.total in Blood 6.10643 %"
    assert hba1c.effective == datetime(2018, 11, 27, 20, 43, 11, tzinfo=UTC)
    assert (hba1c.category, hba1c.code.system, hba1c.code.code) == ("laboratory", "http://loinc.org", "4548-4")

    panel = by_id[f"synthea/DiagnosticReport/{small_bundle['entry'][1]['resource']['id']}"]
    assert isinstance(panel, DiagnosticReport)
    assert panel.category == "LAB"
    assert panel.effective == datetime(2018, 11, 27, 20, 43, 11, tzinfo=UTC)
    assert panel.render() == (
        "2018-11-27 Lipid Panel: Total Cholesterol 187.671 mg/dL; Triglycerides 103.991 mg/dL; "
        "Low Density Lipoprotein Cholesterol 103.23 mg/dL; High Density Lipoprotein Cholesterol 63.643 mg/dL"
    )

    # provenance points back into the file, entry by entry
    locators = {r.id: r.provenance.locator for r in records}
    assert locators[PATIENT_RECORD] == "$.entry[0].resource"
    assert locators[panel.id] == "$.entry[1].resource"
    assert locators[hba1c.id] == "$.entry[6].resource"
    prov = hba1c.provenance
    assert prov.source_sha256 == sha256_file(path)
    assert prov.source_file == str(path)
    assert prov.run_id == CTX.run_id
    assert [(t.name, t.version) for t in prov.transforms] == [("ingest.fhir-bundle", "1")]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(lambda r: r.pop("code"), "code: Field required", id="missing-code"),
        pytest.param(
            lambda r: r.update(status="SECRET-STATUS-1234"),
            "status: code is not in the required value set",
            id="invalid-status",
        ),
        pytest.param(
            lambda r: r.update(effectiveDateTime="SECRET 27/11/2018"),
            "effectiveDateTime: Value error, DateTime value string does not match spec regex",
            id="invalid-date",
        ),
    ],
)
def test_invalid_resource_is_rejected_without_phi_and_others_kept(
    tmp_path: Path, small_bundle: Json, mutate: Any, expected: str
) -> None:
    bad = small_bundle["entry"][3]["resource"]  # the Triglycerides result of the panel
    mutate(bad)
    records, problems = _parse(_write(tmp_path, small_bundle))

    assert len(problems) == 1
    problem = problems[0]
    assert problem.locator == f"$.entry[3].resource (Observation/{bad['id']})"
    assert problem.reason.startswith("invalid FHIR Observation: ")
    assert expected in problem.reason
    leaked = {s for s in _strings(bad) if len(s) >= 4 and s in problem.reason}
    assert leaked == set(), f"reason repeats input values: {leaked}"

    assert len(records) == 6
    assert f"synthea/Observation/{bad['id']}" not in {r.id for r in records}
    panel = next(r for r in records if isinstance(r, DiagnosticReport))
    assert panel.results[1] == "Triglycerides (result not available)"
    assert all(r.patient_id == PATIENT_RECORD for r in records)


def test_unknown_resource_type_is_a_problem(tmp_path: Path, real_entries: list[Json]) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            real_entries[PATIENT_AT],
            {"fullUrl": "urn:uuid:x1", "resource": {"resourceType": "Spaceship", "id": "x1"}},
            {"request": {"method": "DELETE", "url": "Observation/gone"}},
        ],
    }
    records, problems = _parse(_write(tmp_path, bundle))

    assert [r.id for r in records] == [PATIENT_RECORD]
    assert [(p.locator, p.reason) for p in problems] == [
        ("$.entry[1].resource (Spaceship/x1)", "unknown resourceType (not a FHIR R4B resource type)"),
        ("$.entry[2]", "entry has no resource object (e.g. a DELETE or a response); nothing to ingest"),
    ]


def test_unknown_contained_resource_type_is_a_problem(tmp_path: Path, real_entries: list[Json]) -> None:
    observation = copy.deepcopy(real_entries[HBA1C_AT]["resource"])
    observation["contained"] = [{"resourceType": "Spaceship", "id": "c1"}]
    records, problems = _parse(_write(tmp_path, observation))

    assert records == []
    assert [p.reason for p in problems] == ["invalid FHIR Observation: contained[0]: unknown nested resourceType"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b'{"resourceType": "Bundle", "type": "transaction", "entry": [', "malformed JSON", id="json"),
        pytest.param(b'{"resourceType": "Patient", "id": "p\xff"}', "not valid UTF-8", id="encoding"),
        pytest.param(b'{"resourceType": "Bundle", "entry": []}', "invalid FHIR Bundle: type:", id="bundle-type"),
        pytest.param(b'{"resourceType": "Bundle", "type": "batch", "entry": {}}', "'entry' must be a list", id="entry"),
    ],
)
def test_bad_file_raises_ingestion_error_naming_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "broken.json"
    path.write_bytes(content)

    with pytest.raises(IngestionError) as info:
        list(CONNECTOR.parse(path, sha256_file(path), CTX))

    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    assert message in info.value.reason


def test_bare_resource_with_relative_reference(tmp_path: Path, real_entries: list[Json]) -> None:
    """A single resource file, not tagged by Synthea: source 'fhir', subject 'Patient/<id>' resolved by id."""
    observation = copy.deepcopy(real_entries[HBA1C_AT]["resource"])
    del observation["meta"]
    observation["subject"] = {"reference": f"Patient/{PATIENT_ID}"}
    records, problems = _parse(_write(tmp_path, observation, "obs.json"))

    assert problems == []
    (record,) = records
    assert record.id == f"fhir/Observation/{observation['id']}"
    assert record.patient_id == f"fhir/Patient/{PATIENT_ID}"
    assert record.provenance.locator == "$"
    assert record.render() == "2018-11-27 Hemoglobin A1c/Hemoglobin.total in Blood 6.10643 %"


def test_searchset_bundle_without_full_urls(tmp_path: Path, real_entries: list[Json]) -> None:
    """Entries referencing each other as Type/id (no urn:uuid fullUrls) resolve inside the bundle."""
    patient = copy.deepcopy(real_entries[PATIENT_AT]["resource"])
    observation = copy.deepcopy(real_entries[HBA1C_AT]["resource"])
    observation["subject"] = {"reference": f"http://example.org/fhir/Patient/{PATIENT_ID}/_history/1"}
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": observation, "search": {"mode": "match"}}, {"resource": patient}],
    }
    records, problems = _parse(_write(tmp_path, bundle))

    assert problems == []
    assert {r.id: r.patient_id for r in records} == {
        f"synthea/Observation/{observation['id']}": PATIENT_RECORD,
        PATIENT_RECORD: PATIENT_RECORD,
    }


def test_duplicate_resource_in_one_bundle_is_reported_once(tmp_path: Path, real_entries: list[Json]) -> None:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [real_entries[PATIENT_AT]] * 2}
    records, problems = _parse(_write(tmp_path, bundle))

    assert [r.id for r in records] == [PATIENT_RECORD]
    assert [(p.locator, p.reason) for p in problems] == [
        (
            f"$.entry[1].resource (Patient/{PATIENT_ID})",
            "duplicate resource: same Type/id as $.entry[0].resource; the first one is kept",
        )
    ]


def test_generic_resources_get_brief_summaries(tmp_path: Path, real_entries: list[Json]) -> None:
    wanted = {"Claim", "ExplanationOfBenefit", "CarePlan", "Goal", "Organization", "Practitioner"}
    picked = {}
    for entry in real_entries:
        kind = entry["resource"]["resourceType"]
        if kind in wanted and kind not in picked:
            picked[kind] = entry
    assert set(picked) == wanted
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [real_entries[PATIENT_AT], *picked.values()]}
    records, problems = _parse(_write(tmp_path, bundle))

    assert problems == []
    generic = {r.fhir_type: r for r in records if isinstance(r, FhirResource)}
    assert set(generic) == wanted
    for kind in ("Claim", "ExplanationOfBenefit", "CarePlan", "Goal"):
        assert generic[kind].patient_id == PATIENT_RECORD
    assert generic["Organization"].patient_id is None
    for record in generic.values():
        text = record.render()
        assert len(text) < 400
        assert "USD" not in text  # no billing amounts
    assert generic["Claim"].render().split(": ", 1)[1].startswith("institutional claim (active) for ")


def test_detect_and_registration(tmp_path: Path, data_dir: Path) -> None:
    bundle = data_dir / "synthea_fhir_r4" / "bundles" / BUNDLE
    assert CONNECTOR.detect(bundle, read_head(bundle))
    assert not CONNECTOR.detect(tmp_path / "x.json", b'{"QUESTION": "q", "CONTEXTS": []}')
    assert not CONNECTOR.detect(tmp_path / "x.jsonl", b'{"resourceType": "Patient"}')
    assert isinstance(builtin_connectors()[0], FhirBundleConnector)
