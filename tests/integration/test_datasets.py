"""Dataset snapshots on a real store (IU X-ray reports + Synthea patients, real MiniLM embedder): content addressing,
patient-level splits, de-identification and consent for researchers, datasheet, lineage, export, audit, CLI."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sage_health.core.config import Settings
from sage_health.core.errors import PolicyViolation, ValidationError
from sage_health.core.hashing import sha256_file
from sage_health.data.datasets import (
    SPLITS,
    SnapshotInfo,
    create_snapshot,
    export_snapshot,
    get_snapshot,
    list_snapshots,
    split_of,
)
from sage_health.data.embed import MiniLMEmbedder
from sage_health.data.governance.access import GovernedStore, open_governed
from sage_health.data.governance.audit import AuditLog
from sage_health.data.governance.lineage import LineageStore, snapshot_node
from sage_health.data.governance.policy import PolicyEngine
from sage_health.data.governance.views import DeidentifiedView
from sage_health.data.ingest.pipeline import IngestPipeline
from sage_health.data.schema import DiagnosticReport
from sage_health.data.store.protocol import SearchFilters
from sage_health.data.store.sqlite import SqliteDocumentStore

pytestmark = [pytest.mark.integration]

IU_REPORTS = 120
BUNDLES = 4


@pytest.fixture(scope="module")
def base_store(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, embedder: MiniLMEmbedder) -> Path:
    """One ingest per module: the first IU reports and the smallest Synthea bundles (real patients to split)."""
    root = tmp_path_factory.mktemp("datasets-base")
    reports = root / "reports.jsonl"
    with (data_dir / "iu_xray" / "reports.jsonl").open(encoding="utf-8") as handle:
        reports.write_text("".join(next(handle) for _ in range(IU_REPORTS)), encoding="utf-8")
    bundles = sorted((data_dir / "synthea_fhir_r4" / "bundles").glob("*.json"), key=lambda p: p.stat().st_size)
    store_dir = root / "store"
    with SqliteDocumentStore(store_dir / "sage.db", embedder) as store:
        report = IngestPipeline(store).run([reports, *bundles[:BUNDLES]])
        assert report.problems == []
        assert len(store.patient_ids()) == BUNDLES
    return store_dir


@pytest.fixture
def settings(tmp_path: Path, base_store: Path, data_dir: Path) -> Settings:
    store_dir = tmp_path / "store"
    shutil.copytree(base_store, store_dir)
    return Settings(store=store_dir, data_dir=data_dir)


@pytest.fixture
def raw(settings: Settings, embedder: MiniLMEmbedder) -> Iterator[SqliteDocumentStore]:
    with SqliteDocumentStore(settings.db_path, embedder) as store:
        yield store


def _as(settings: Settings, raw: SqliteDocumentStore, who: str) -> GovernedStore:
    purpose = {"researcher": "research", "clinician": "treatment"}.get(who, "operations")
    return open_governed(settings, raw, principal=who, purpose=purpose)


def _items(info: SnapshotInfo) -> dict[str, list[dict[str, object]]]:
    return {
        s: [json.loads(line) for line in (info.path / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()]
        for s in SPLITS
    }


def _opt_out(settings: Settings, patient: str) -> None:
    engine = PolicyEngine(settings.db_path)
    steward = engine.access("data_steward", "operations")
    engine.record_consent(patient, "opt_out", by=steward, effective_from="2000-01-01")


def test_same_inputs_and_seed_give_the_same_hash(settings: Settings, raw: SqliteDocumentStore) -> None:
    steward = _as(settings, raw, "data_steward")
    first = create_snapshot(steward, settings, "iu-imp", "DiagnosticReport:iu-xray", task="impression")
    # every IU report with both sections, and nothing else
    expected = {
        s.record.id: s.record
        for s in raw.iter_records(SearchFilters(sources=("iu-xray",)))
        if isinstance(s.record, DiagnosticReport)
        and s.record.report_sections.findings
        and s.record.report_sections.impression
    }
    items = _items(first)
    flat = [i for s in SPLITS for i in items[s]]
    assert sorted(str(i["record_id"]) for i in flat) == sorted(expected)
    assert first.counts["items"] == len(expected) == sum(first.counts[s] for s in SPLITS)
    assert 40 <= len(expected) <= IU_REPORTS
    for item in flat:
        rec = expected[str(item["record_id"])]
        assert isinstance(rec, DiagnosticReport)
        assert item["input"] == rec.report_sections.findings
        assert item["target"] == rec.report_sections.impression
        assert item["source"] == "iu-xray"
        assert item["patient"] is None
        assert item["split"] == split_of(str(item["record_id"]), 13, (80, 10, 10))
    for s in SPLITS:  # each file sorted by record id, canonical JSON
        ids = [str(i["record_id"]) for i in items[s]]
        assert ids == sorted(ids)
        assert all(i["split"] == s for i in items[s])
    assert first.counts["train"] > first.counts["val"] > 0
    manifest = first.manifest()
    assert first.path == settings.store / "datasets" / "iu-imp" / first.hash
    assert manifest["hash"] == first.hash
    assert manifest["sha256"].startswith(first.hash)
    for s in SPLITS:
        assert manifest["files"][f"{s}.jsonl"]["sha256"] == sha256_file(first.path / f"{s}.jsonl")
    assert manifest["created_by"] == "data_steward"
    assert not first.existed

    again = create_snapshot(steward, settings, "iu-imp", "DiagnosticReport:iu-xray", task="impression")
    assert again.hash == first.hash
    assert again.existed
    assert again.created_at == first.created_at  # the stored snapshot was not rewritten
    assert again.manifest() == manifest

    reseeded = create_snapshot(steward, settings, "iu-imp", "DiagnosticReport:iu-xray", task="impression", seed=7)
    assert reseeded.hash != first.hash
    moved = {str(i["record_id"]): i["split"] for s in SPLITS for i in _items(reseeded)[s]}
    assert any(moved[str(i["record_id"])] != i["split"] for i in flat)
    assert [v.hash for v in list_snapshots(settings, name="iu-imp")] == [reseeded.hash, first.hash]
    assert get_snapshot(settings, "iu-imp").hash == reseeded.hash
    assert get_snapshot(settings, f"iu-imp@{first.hash[:6]}").hash == first.hash

    # the datasheet names the licence, the hash, the split rule and the consent filter
    sheet = first.datasheet_path.read_text(encoding="utf-8")
    assert "CC BY-NC-ND 4.0" in sheet
    assert first.hash in sheet
    assert manifest["sha256"] in sheet
    assert str(settings.data_dir / "iu_xray" / "SOURCE.md") in sheet
    for heading in ("## Motivation", "## Composition", "## Collection process", "## Consent filter", "## Splits",
                    "## Uses and limitations"):  # fmt: skip
        assert heading in sheet
    assert f"| train | {first.counts['train']} |" in sheet

    # lineage: one edge per item, from the real record id
    parents = LineageStore(settings.db_path).parents(snapshot_node("iu-imp", first.hash))
    assert sorted(e.parent for e in parents) == sorted(f"record:{rid}" for rid in expected)
    assert {e.relation for e in parents} == {"in_snapshot"}
    events = AuditLog(settings.db_path).events(action="snapshot")
    summaries = [e for e in events if e.detail.get("snapshot") == first.ref]
    assert [e.detail["existed"] for e in summaries] == [False, True]
    assert summaries[0].detail["counts"]["items"] == len(expected)


def test_no_patient_lands_in_two_splits(settings: Settings, raw: SqliteDocumentStore) -> None:
    steward = _as(settings, raw, "data_steward")
    info = create_snapshot(steward, settings, "obs", "Observation", task="text", split="34/33/33", seed=1)
    splits_of: dict[str, set[str]] = defaultdict(set)
    for s, rows in _items(info).items():
        for item in rows:
            assert item["patient"] in raw.patient_ids()
            assert str(item["text"]).strip()
            splits_of[str(item["patient"])].add(s)
    assert len(splits_of) == BUNDLES
    assert all(len(v) == 1 for v in splits_of.values())
    assert len({next(iter(v)) for v in splits_of.values()}) > 1  # patients are spread over several splits
    assert info.counts["patients"] == BUNDLES
    sheet = info.datasheet_path.read_text(encoding="utf-8")
    assert "Apache-2.0" in sheet


def test_researcher_gets_deidentified_data_without_opted_out_patients(
    settings: Settings, raw: SqliteDocumentStore
) -> None:
    patients = sorted(raw.patient_ids())
    opted = patients[0]
    _opt_out(settings, opted)
    researcher = _as(settings, raw, "researcher")
    with pytest.raises(PolicyViolation, match=r"^researchers only receive de-identified data; add --deid$"):
        create_snapshot(researcher, settings, "pts", "Patient", task="text")
    assert not (settings.store / "datasets").exists()
    assert list_snapshots(settings) == []
    denied = AuditLog(settings.db_path).events(action="snapshot")[-1]
    assert denied.principal == "researcher"
    assert denied.detail["outcome"] == "denied"

    info = create_snapshot(researcher, settings, "pts", "Patient", task="text", deid=True)
    items = [i for rows in _items(info).values() for i in rows]
    assert len(items) == BUNDLES - 1
    text = "".join((info.path / f).read_text(encoding="utf-8") for f in ("train.jsonl", "val.jsonl", "test.jsonl"))
    text += (info.path / "manifest.json").read_text(encoding="utf-8")
    text += info.datasheet_path.read_text(encoding="utf-8")
    for patient in patients:  # no real patient id (nor its uuid part) anywhere in the snapshot
        assert patient not in text
        assert patient.rsplit("/", 1)[-1] not in text
    for stored in raw.iter_records(SearchFilters(resource_types=("Patient",))):
        assert stored.record.family_name  # type: ignore[union-attr]
        assert stored.record.family_name not in text  # type: ignore[union-attr]
    assert all(str(i["patient"]).startswith("pseudo-") and i["record_id"] == i["patient"] for i in items)
    assert isinstance(researcher.view, DeidentifiedView)
    assert researcher.view.patient(opted) not in {i["patient"] for i in items}
    manifest = info.manifest()
    assert manifest["consent"] == {"exclude_opted_out": True, "opted_out_patients_excluded": 1}
    assert manifest["deidentification"]["applied"] is True
    assert manifest["deidentification"]["method"] == "presidio-tag"
    # lineage uses the real record ids (erasure must find them), never the opted-out patient's
    parents = {e.parent for e in LineageStore(settings.db_path).parents(snapshot_node("pts", info.hash))}
    assert parents == {f"record:{p}" for p in patients[1:]}

    # a data steward asking for --deid gets the same de-identified content: same hash, nothing rewritten
    steward = _as(settings, raw, "data_steward")
    same = create_snapshot(steward, settings, "pts", "Patient", task="text", deid=True)
    assert same.hash == info.hash
    assert same.existed
    assert same.created_by == "researcher"


def test_query_selector_reads_top_hits_of_the_task_type(settings: Settings, raw: SqliteDocumentStore) -> None:
    steward = _as(settings, raw, "data_steward")
    info = create_snapshot(
        steward, settings, "effusion", "query:pleural effusion", task="findings", limit=15, split=(100, 0, 0)
    )
    items = _items(info)
    assert items["val"] == []
    assert items["test"] == []
    assert 1 <= len(items["train"]) <= 15
    assert all(str(i["record_id"]).startswith(("iu-xray/DiagnosticReport/", "synthea/")) for i in items["train"])
    assert any("effusion" in str(i["target"]).lower() for i in items["train"])
    search = [e for e in AuditLog(settings.db_path).events(action="snapshot") if e.query_sha256]
    assert len(search) == 1
    assert search[0].detail["k"] == 15


@pytest.mark.parametrize(
    ("name", "selector", "kwargs", "message"),
    [
        ("Bad Name", "DiagnosticReport", {}, "invalid dataset name 'Bad Name'"),
        ("ok", "Report", {}, "unknown record type 'Report' in selector"),
        ("ok", "query:  ", {}, "empty query in selector; use query:TEXT"),
        ("ok", "DiagnosticReport", {"split": "80/20"}, "invalid split '80/20': use three integers"),
        ("ok", "DiagnosticReport", {"split": "50/30/30"}, "must be non-negative, sum to 100"),
        ("ok", "DiagnosticReport", {"split": "a/b/c"}, "invalid split 'a/b/c'"),
        ("ok", "Patient", {"task": "impression"}, "task impression needs DiagnosticReport records"),
        ("ok", "DiagnosticReport", {"task": "summary"}, "unknown task 'summary'"),
        ("ok", "DiagnosticReport:nowhere", {}, "no records match selector 'DiagnosticReport:nowhere' for task"),
        ("ok", "QAItem", {"task": "qa"}, "no records match selector 'QAItem' for task qa (after consent filter)"),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(
    settings: Settings, raw: SqliteDocumentStore, name: str, selector: str, kwargs: dict[str, str], message: str
) -> None:
    steward = _as(settings, raw, "data_steward")
    args = {"task": "impression", **kwargs}
    with pytest.raises(ValidationError) as info:
        create_snapshot(steward, settings, name, selector, **args)  # type: ignore[arg-type]
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert not (settings.store / "datasets").exists()
    assert list_snapshots(settings) == []
    every_record = [f"record:{s.record.id}" for s in raw.iter_records()]
    assert LineageStore(settings.db_path).children_of_any(every_record) == []


def test_export_copies_the_files_is_audited_and_refuses_unsafe_exports(
    settings: Settings, raw: SqliteDocumentStore, tmp_path: Path
) -> None:
    steward = _as(settings, raw, "data_steward")
    info = create_snapshot(steward, settings, "obs", "Observation", task="text")
    result = export_snapshot(steward, settings, "obs", tmp_path / "out")
    assert result.path == tmp_path / "out" / f"obs-{info.hash}"
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "manifest.json", "datasheet.md"):
        assert sha256_file(result.path / name) == sha256_file(info.path / name)
    event = AuditLog(settings.db_path).events(action="export")[-1]
    assert event.principal == "data_steward"
    assert event.detail["snapshot"] == info.ref
    assert event.detail["outcome"] == "ok"
    assert len(event.record_ids) == info.counts["items"]  # the real record ids that left the store
    assert export_snapshot(steward, settings, f"obs@{info.hash}", tmp_path / "out").existed

    with pytest.raises(ValidationError, match="parquet export needs pyarrow"):
        export_snapshot(steward, settings, "obs", tmp_path / "pq", fmt="parquet")
    researcher = _as(settings, raw, "researcher")
    with pytest.raises(PolicyViolation, match="is not de-identified; researchers may export de-identified"):
        export_snapshot(researcher, settings, "obs", tmp_path / "r")
    clinician = _as(settings, raw, "clinician")
    with pytest.raises(PolicyViolation, match="may not export"):
        export_snapshot(clinician, settings, "obs", tmp_path / "c")

    # a patient who opts out after the snapshot: the snapshot can no longer leave the store
    _opt_out(settings, sorted(raw.patient_ids())[0])
    with pytest.raises(PolicyViolation, match=r"holds records of 1 patient\(s\) who opted out"):
        export_snapshot(steward, settings, "obs", tmp_path / "late")
    # a tainted snapshot (built from records erased since) is listed as such and refused
    LineageStore(settings.db_path).taint([snapshot_node("obs", info.hash)], "records erased")
    assert [i.tainted for i in list_snapshots(settings)] == [True]
    with pytest.raises(PolicyViolation, match=f"snapshot obs@{info.hash} is tainted"):
        export_snapshot(steward, settings, "obs", tmp_path / "t")
    assert not (tmp_path / "late").exists()
    assert not (tmp_path / "t").exists()
    assert not (tmp_path / "r").exists()
    denied = [e for e in AuditLog(settings.db_path).events(action="export") if e.detail.get("outcome") == "denied"]
    assert len(denied) >= 3


def test_cli_create_list_show_export(settings: Settings, tmp_path: Path) -> None:
    from sage_health.interfaces.cli import app

    runner = CliRunner()
    common = ["--store", str(settings.store), "--as", "data_steward", "--purpose", "operations"]
    created = runner.invoke(
        app, ["dataset", "create", "iu-find", "--from", "DiagnosticReport:iu-xray", "--task", "findings",
              "--seed", "3", *common, "--json"],
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    payload = json.loads(created.stdout)
    digest = payload["hash"]
    assert payload["ref"] == f"iu-find@{digest}"
    assert payload["counts"]["items"] > 0
    again = runner.invoke(app, ["dataset", "create", "iu-find", "--from", "DiagnosticReport:iu-xray", "--task",
                                "findings", "--seed", "3", *common])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert f"iu-find@{digest} exists already" in again.stdout

    listed = json.loads(runner.invoke(app, ["dataset", "list", *common, "--json"]).stdout)
    assert [(r["name"], r["hash"], r["tainted"]) for r in listed] == [("iu-find", digest, False)]
    table = runner.invoke(app, ["dataset", "list", *common])
    assert table.exit_code == 0
    assert "iu-find" in table.stdout
    shown = json.loads(runner.invoke(app, ["dataset", "show", f"iu-find@{digest[:8]}", *common, "--json"]).stdout)
    assert shown["manifest"]["params"]["task"] == "findings"
    assert Path(shown["datasheet"]).is_file()
    exported = runner.invoke(app, ["dataset", "export", "iu-find", "--out", str(tmp_path / "x"), *common])
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "x" / f"iu-find-{digest}" / "train.jsonl").is_file()

    bad = runner.invoke(app, ["dataset", "create", "other", "--from", "DiagnosticReport", "--split", "90/20/0",
                              *common])  # fmt: skip
    assert bad.exit_code == 1
    assert "invalid split '90/20/0'" in bad.output
    assert not (settings.store / "datasets" / "other").exists()
    missing = runner.invoke(app, ["dataset", "show", "nope", *common])
    assert missing.exit_code == 1
    assert "no dataset snapshot named 'nope'" in missing.output
