"""The ingest pipeline on real data: versioning, auxiliary files, duplicates, --source, run reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sage_health.data.ingest.pipeline import IngestPipeline
from sage_health.data.store.protocol import SearchFilters, SearchQuery
from sage_health.data.store.sqlite import SqliteDocumentStore

pytestmark = [pytest.mark.integration]


def _iu_rows(data_dir: Path, n: int) -> list[dict]:  # type: ignore[type-arg]
    with (data_dir / "iu_xray" / "reports.jsonl").open(encoding="utf-8") as handle:
        return [json.loads(next(handle)) for _ in range(n)]


def _write_jsonl(path: Path, rows: list[dict]) -> None:  # type: ignore[type-arg]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_changed_file_versions_changed_records_only(data_dir: Path, tmp_path: Path, store: SqliteDocumentStore) -> None:
    rows = _iu_rows(data_dir, 6)
    path = tmp_path / "reports.jsonl"
    _write_jsonl(path, rows)
    pipeline = IngestPipeline(store, batch_records=4)
    first = pipeline.run([path])
    assert first.total().inserted == 6
    rows[2] = {**rows[2], "impression": "Interval development of a small right pleural effusion."}
    _write_jsonl(path, rows)
    second = pipeline.run([path])
    total = second.total()
    assert (total.inserted, total.updated, total.unchanged) == (0, 1, 5)
    rid = f"iu-xray/DiagnosticReport/{rows[2]['uid']}"
    current, old = store.get(rid), store.get(rid, version=1)
    assert current is not None
    assert old is not None
    assert current.version == 2
    assert current.record.provenance.run_id == second.run_id
    assert old.record.provenance.run_id == first.run_id
    assert old.record.provenance.source_sha256 != current.record.provenance.source_sha256
    hits = store.search(SearchQuery(text="small right pleural effusion", k=3, mode="bm25"))
    assert hits[0].record_id == rid
    assert hits[0].record_version == 2
    assert store.check()["ok"]


def test_walking_a_dataset_folder_skips_docs_and_auxiliary_tables(data_dir: Path, store: SqliteDocumentStore) -> None:
    nih = data_dir / "nih_chestxray14_samples"
    report = IngestPipeline(store).run([nih, data_dir / "chexpert_labeler"])
    skipped = dict(report.skipped)
    assert skipped[str(nih / "SOURCE.md")] == "dataset documentation"
    assert "sidecar" in skipped[str(nih / "labels.csv")] or "label table" in skipped[str(nih / "labels.csv")]
    assert "NIH" in skipped[str(nih / "Data_Entry_2017_v2020.csv.gz")]
    assert "labeler" in skipped[str(data_dir / "chexpert_labeler" / "labeled_reports.csv")]
    assert any("phrases" in p for p in skipped)
    assert report.problems == []
    assert store.stats()["by_type"] == {"Image": 9}


def test_duplicate_ids_in_one_file_keep_the_first(data_dir: Path, tmp_path: Path, store: SqliteDocumentStore) -> None:
    rows = _iu_rows(data_dir, 3)
    dup = {**rows[0], "impression": "Different text under the same uid."}
    path = tmp_path / "reports.jsonl"
    _write_jsonl(path, [*rows, dup])
    report = IngestPipeline(store).run([path])
    assert [(p.locator, p.reason.split(" (")[0]) for p in report.problems] == [
        ("line 4", f"duplicate record id iu-xray/DiagnosticReport/{rows[0]['uid']}")
    ]
    stored = store.get(f"iu-xray/DiagnosticReport/{rows[0]['uid']}")
    assert stored is not None
    assert stored.record.report_sections.impression == rows[0]["impression"]  # type: ignore[union-attr]
    assert store.run_errors(report.run_id)[0]["locator"] == "line 4"


def test_source_override_names_the_dataset(data_dir: Path, tmp_path: Path, store: SqliteDocumentStore) -> None:
    path = tmp_path / "reports.jsonl"
    _write_jsonl(path, _iu_rows(data_dir, 2))
    IngestPipeline(store, source_override="hospital-a").run([path])
    hits = store.search(SearchQuery(text="chest", k=5, filters=SearchFilters(sources=("hospital-a",))))
    assert hits
    assert all(h.record_id.startswith("hospital-a/DiagnosticReport/") for h in hits)


def test_missing_path_is_reported(tmp_path: Path, store: SqliteDocumentStore) -> None:
    report = IngestPipeline(store).run([tmp_path / "absent.jsonl"])
    assert report.failed_files == 1
    assert report.problems[0].line().endswith("absent.jsonl: no such file or directory")
