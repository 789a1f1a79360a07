"""All 30 Synthea FHIR R4 bundles through the real pipeline into a real SQLite store (one ingest per module)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sage_health.data.embed import MiniLMEmbedder
from sage_health.data.ingest.pipeline import IngestPipeline, IngestReport
from sage_health.data.store.protocol import SearchFilters, SearchQuery
from sage_health.data.store.sqlite import SqliteDocumentStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Record types in the store. Claim 375 + ExplanationOfBenefit 310 + Organization 39 + Practitioner 39
# + CarePlan 33 + Goal 10 + AllergyIntolerance 4 = 810 generic resources, of which 20 are the same
# Organization/Practitioner shared by two or three bundles (identical content, stored once): 790.
EXPECTED_BY_TYPE = {
    "Condition": 108,
    "DiagnosticReport": 89,
    "Encounter": 310,
    "FhirResource": 790,
    "Immunization": 321,
    "MedicationRequest": 65,
    "Observation": 1836,
    "Patient": 30,
    "Procedure": 108,
}


@dataclass
class Ingested:
    folder: Path
    store: SqliteDocumentStore
    report: IngestReport
    entries: int
    distinct: int
    patients: dict[str, str]
    """manifest file name -> Patient record id"""


@pytest.fixture(scope="module")
def ingested(data_dir: Path, embedder: MiniLMEmbedder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingested]:
    folder = data_dir / "synthea_fhir_r4"
    entries = 0
    distinct: set[tuple[str, str]] = set()
    for bundle in sorted((folder / "bundles").glob("*.json")):
        for entry in json.loads(bundle.read_text(encoding="utf-8"))["entry"]:
            entries += 1
            distinct.add((entry["resource"]["resourceType"], entry["resource"]["id"]))
    with (folder / "manifest.csv").open(encoding="utf-8", newline="") as handle:
        patients = {row["file"]: f"synthea/Patient/{row['patient_id']}" for row in csv.DictReader(handle)}
    with SqliteDocumentStore(tmp_path_factory.mktemp("fhir-store") / "sage.db", embedder) as store:
        report = IngestPipeline(store).run([folder])
        yield Ingested(folder, store, report, entries, len(distinct), patients)


def test_every_entry_is_a_record_or_a_problem(ingested: Ingested) -> None:
    report = ingested.report
    stats = report.stats["fhir-bundle"]

    assert ingested.entries == 3677
    assert report.problems == []
    assert report.failed_files == 0
    assert set(report.stats) == {"fhir-bundle"}
    assert stats.files == 30
    assert stats.records + stats.errors == ingested.entries
    assert stats.records == 3677
    assert (stats.inserted, stats.unchanged, stats.updated) == (ingested.distinct, 20, 0)
    assert ingested.distinct == 3657
    skipped = {Path(p).name: reason for p, reason in report.skipped}
    assert skipped == {"SOURCE.md": "dataset documentation", "manifest.csv": "dataset manifest (file inventory)"}

    stored = ingested.store.stats()
    assert stored["by_type"] == EXPECTED_BY_TYPE
    assert stored["records"] == stored["record_versions"] == 3657
    assert stored["by_source"] == {"synthea": 3657}
    assert stored["patients"] == 30


def test_patient_links(ingested: Ingested) -> None:
    store = ingested.store
    patient_ids = {r.record.id for r in store.iter_records(SearchFilters(resource_types=("Patient",)))}
    assert patient_ids == set(ingested.patients.values())
    assert len(patient_ids) == 30

    observations = list(store.iter_records(SearchFilters(resource_types=("Observation",))))
    assert len(observations) == 1836
    assert {o.record.patient_id for o in observations} <= patient_ids
    assert all(o.record.patient_id for o in observations)

    unlinked = Counter(
        getattr(r.record, "fhir_type", r.record.resource_type)
        for r in store.iter_records()
        if r.record.patient_id is None
    )
    assert unlinked == {"Organization": 29, "Practitioner": 29}  # 39 each, 10 of each shared between bundles


def test_reingest_adds_nothing(ingested: Ingested) -> None:
    again = IngestPipeline(ingested.store).run([ingested.folder])
    assert again.problems == []
    assert again.stats["fhir-bundle"].inserted == 0
    assert sum(reason == "unchanged since a completed ingest" for _, reason in again.skipped) == 30

    forced = IngestPipeline(ingested.store, force=True).run([ingested.folder])  # re-parse: same content hashes
    stats = forced.stats["fhir-bundle"]
    assert (stats.records, stats.inserted, stats.updated, stats.unchanged) == (3677, 0, 0, 3677)
    assert ingested.store.stats()["record_versions"] == 3657


def test_patient_filtered_search(ingested: Ingested) -> None:
    patient = ingested.patients["Alfreda_Wyman_3287b938-4670-47eb-91e5-e0ce3df71405.json"]
    text = "lipid panel cholesterol"

    unfiltered = ingested.store.search(SearchQuery(text=text, k=50))
    assert len({h.patient_id for h in unfiltered}) > 1

    hits = ingested.store.search(SearchQuery(text=text, k=50, filters=SearchFilters(patient_id=patient)))
    assert hits
    assert {h.patient_id for h in hits} == {patient}
    panels = [h for h in hits if h.resource_type == "DiagnosticReport" and "Lipid Panel" in h.text]
    assert len(panels) == 3  # the three lipid panels in her bundle
    assert all(h.provenance.locator and h.provenance.locator.startswith("$.entry[") for h in hits)


def test_bad_bundle_reports_and_stores_only_valid_records(
    tmp_path: Path, data_dir: Path, store: SqliteDocumentStore
) -> None:
    """Through the pipeline: a malformed file stores nothing; an invalid resource is skipped with its locator."""
    source = data_dir / "synthea_fhir_r4" / "bundles" / "Agustin_Fonseca_cb5696d9-a0de-4f49-94f9-433f96a28eb0.json"
    bundle = json.loads(source.read_text(encoding="utf-8"))
    entries = bundle["entry"][:6]
    bad_index = next(i for i, e in enumerate(entries) if e["resource"]["resourceType"] == "Observation")
    bad = entries[bad_index]["resource"]
    del bad["code"]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a_malformed.json").write_text('{"resourceType": "Bundle", "entry": [', encoding="utf-8")
    (tmp_path / "in" / "b_partly_invalid.json").write_text(
        json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}), encoding="utf-8"
    )

    report = IngestPipeline(store).run([tmp_path / "in"])

    lines = [p.line() for p in report.problems]
    assert lines == [
        f"{tmp_path / 'in' / 'a_malformed.json'}: malformed JSON: Expecting value at line 1 column 38",
        f"{tmp_path / 'in' / 'b_partly_invalid.json'}:$.entry[{bad_index}].resource (Observation/{bad['id']}): "
        "invalid FHIR Observation: code: Field required",
    ]
    assert report.failed_files == 1
    stored = {r.record.id for r in store.iter_records()}
    assert stored == {
        f"synthea/{e['resource']['resourceType']}/{e['resource']['id']}"
        for i, e in enumerate(entries)
        if i != bad_index
    }
    sources = {r.record.provenance.source_file for r in store.iter_records()}
    assert sources == {str((tmp_path / "in" / "b_partly_invalid.json").resolve())}
