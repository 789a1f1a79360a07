"""The records, ingest, system and retrieval-evaluation services called directly, on a real store built from the
shared data: filters applied inside the governed store, the researcher's pseudonymous view, consent pushed into
the query, denials audited, one audit event per ingest run with no file path in it, a bad file reported once with
nothing half-written, stats for any principal, doctor without opening a store from the interface."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sage_health.core.config import Settings
from sage_health.core.errors import DataError, PolicyViolation, RecordNotFoundError, RetrievalError
from sage_health.core.hashing import sha256_file, sha256_text
from sage_health.data.governance.audit import AuditEvent, AuditLog
from sage_health.data.store.protocol import SearchFilters
from sage_health.services import ingest as ingest_service
from sage_health.services import records, retrieval_eval, system
from sage_health.services.session import Credentials, Runtime, Session, open_session

pytestmark = pytest.mark.integration

ROLES = {"clinician": "treatment", "researcher": "research", "data_steward": "operations", "admin": "operations"}
N_REPORTS = 30
N_BUNDLES = 2


def _session(settings: Settings, principal: str, runtime: Runtime, purpose: str | None = None) -> Session:
    creds = Credentials(principal=principal, purpose=purpose or ROLES[principal])
    return open_session(settings, creds, runtime=runtime)


def _events(settings: Settings, action: str) -> list[AuditEvent]:
    return AuditLog.for_settings(settings).events(action=action)


def _iu_lines(data_dir: Path, n: int) -> list[str]:
    with (data_dir / "iu_xray" / "reports.jsonl").open(encoding="utf-8") as handle:
        return [next(handle) for _ in range(n)]


@dataclass
class Env:
    settings: Settings
    runtime: Runtime
    src: Path
    bundle_stems: list[str]
    report: ingest_service.IngestResult

    def session(self, principal: str, purpose: str | None = None) -> Session:
        return _session(self.settings, principal, self.runtime, purpose)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Env]:
    """30 real IU reports and 2 Synthea patients, ingested through the service as the data steward."""
    root = tmp_path_factory.mktemp("services-records")
    src = root / "in"
    src.mkdir()
    (src / "reports.jsonl").write_text("".join(_iu_lines(data_dir, N_REPORTS)), encoding="utf-8")
    bundles = sorted((data_dir / "synthea_fhir_r4" / "bundles").glob("*.json"))[:N_BUNDLES]
    for bundle in bundles:
        shutil.copy(bundle, src / bundle.name)
    settings = Settings(store=root / "store", data_dir=data_dir)
    runtime = Runtime()
    progress: list[ingest_service.IngestProgress] = []
    with _session(settings, "data_steward", runtime) as steward:
        report = ingest_service.ingest(steward, [src], on_progress=progress.append)
    assert report.clean, [p.line() for p in report.problems]
    assert [p.files_done for p in progress] == list(range(1, N_BUNDLES + 2))
    assert progress[-1].bytes_done == progress[-1].bytes_total == sum(f.stat().st_size for f in src.iterdir())
    yield Env(settings, runtime, src, [b.stem for b in bundles], report)
    runtime.close()


def _patient_ids(env: Env) -> list[str]:
    with env.session("clinician") as clinician:
        hits = records.search(clinician, "patient", k=10, filters=SearchFilters(resource_types=("Patient",))).hits
    return sorted({h.patient_id for h in hits if h.patient_id})


# --------------------------------------------------------------------------- ingest


def test_ingest_is_one_audit_event_with_counts_and_hashes_never_paths(env: Env) -> None:
    total = env.report.total
    assert total.inserted == total.records > N_REPORTS  # the reports and every resource of the two bundles
    assert env.report.by_connector["iu-xray-jsonl"].records == N_REPORTS
    events = [e for e in _events(env.settings, "ingest") if e.detail.get("run_id") == env.report.run_id]
    assert len(events) == 1
    event = events[0]
    assert (event.principal, event.purpose, event.detail["outcome"]) == ("data_steward", "operations", "ok")
    assert event.detail["records"] == total.records
    assert event.detail["inserted"] == total.inserted
    assert (event.detail["problems"], event.detail["failed_files"]) == (0, 0)
    assert event.detail["inputs_sha256"] == [sha256_text(str(env.src.resolve()))]
    assert event.detail["channel"] == "cli"
    payload = json.dumps([e.model_dump() for e in _events(env.settings, "ingest")])
    assert str(env.src) not in payload
    for stem in env.bundle_stems:  # a Synthea file name is the patient's name
        assert stem not in payload
        assert stem.split("_")[0] not in payload


def test_ingest_of_a_bad_file_reports_one_line_and_stores_nothing_of_it(data_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    good = _iu_lines(data_dir, 2)
    (src / "reports.jsonl").write_text("".join(good), encoding="utf-8")
    (src / "bundle.json").write_text('{"resourceType": "Bundle", "type": "transaction", "entry": [', encoding="utf-8")
    settings = Settings(store=tmp_path / "store", data_dir=data_dir)
    runtime = Runtime()
    seen: list[ingest_service.IngestProblem] = []
    try:
        with _session(settings, "data_steward", runtime) as steward:
            result = ingest_service.ingest(steward, [src], on_problem=seen.append)
            stats = records.stats(steward)
    finally:
        runtime.close()
    assert len(seen) == 1
    assert seen[0].line().startswith(f"{src / 'bundle.json'}: malformed JSON")
    assert result.problems == tuple(seen)
    assert not result.clean
    assert result.failed_files == 1
    assert stats.records == 2
    assert stats.by_type == {"DiagnosticReport": 2}
    assert stats.by_source == {"iu-xray": 2}
    (event,) = [e for e in _events(settings, "ingest") if e.detail["outcome"] == "ok"]
    assert (event.detail["problems"], event.detail["failed_files"], event.detail["records"]) == (1, 1, 2)
    assert "bundle.json" not in json.dumps(event.model_dump())


def test_ingest_denied_is_audited_and_stores_nothing(data_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "reports.jsonl"
    src.write_text("".join(_iu_lines(data_dir, 2)), encoding="utf-8")
    settings = Settings(store=tmp_path / "store", data_dir=data_dir)
    runtime = Runtime()
    try:
        with (
            _session(settings, "clinician", runtime) as clinician,
            pytest.raises(PolicyViolation, match="ingest"),
        ):
            ingest_service.ingest(clinician, [src])
    finally:
        runtime.close()
    (denied,) = _events(settings, "ingest")
    assert (denied.principal, denied.detail["outcome"]) == ("clinician", "denied")
    conn = sqlite3.connect(settings.db_path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "records" not in tables or conn.execute("SELECT count(*) FROM records").fetchone()[0] == 0
    finally:
        conn.close()


# --------------------------------------------------------------------------- search, timeline, show


def test_search_filters_are_applied_inside_the_governed_store(env: Env) -> None:
    patients = _patient_ids(env)
    assert len(patients) == N_BUNDLES
    pid = patients[0]
    since, until = records.parse_day("2012-01-01"), records.parse_day("2020-12-31", end=True)
    with env.session("clinician") as clinician:
        scoped = records.search(
            clinician,
            "blood pressure",
            k=20,
            filters=SearchFilters(patient_id=pid, resource_types=("Observation",), since=since, until=until),
        )
        assert scoped.hits
        for hit in scoped.hits:
            assert (hit.patient_id, hit.resource_type) == (pid, "Observation")
            assert hit.effective is not None
            assert since is not None
            assert until is not None
            assert since <= hit.effective <= until
        iu = records.search(clinician, "pleural effusion", k=5, filters=SearchFilters(sources=("iu-xray",)))
        assert iu.hits
        assert {h.source for h in iu.hits} == {"iu-xray"}
        impressions = records.search(
            clinician, "no acute disease", k=5, mode="bm25", filters=SearchFilters(sections=("impression",))
        )
        assert impressions.hits
        assert {h.section for h in impressions.hits} == {"impression"}
        assert all(h.bm25_rank is not None for h in impressions.hits)
        with pytest.raises(RetrievalError, match="invalid search"):
            records.search(clinician, "   ")
    (event, *_) = [e for e in reversed(_events(env.settings, "search")) if e.principal == "clinician"]
    assert event.query_sha256 == sha256_text("no acute disease")
    assert set(event.record_ids) == {h.record_id for h in impressions.hits}


def test_timeline_is_chronological_and_scoped_to_the_patient(env: Env) -> None:
    pid = _patient_ids(env)[0]
    with env.session("clinician") as clinician:
        ctx = records.timeline(clinician, pid, "blood pressure", k=5, since=datetime(2010, 1, 1, tzinfo=UTC))
        assert ctx.timeline
        assert ctx.hits
        dates = [e.effective for e in ctx.timeline if e.effective is not None]
        assert dates == sorted(dates)
        assert all(d >= datetime(2010, 1, 1, tzinfo=UTC) for d in dates)
        assert {h.patient_id for h in ctx.hits} == {pid}
        with pytest.raises(RetrievalError, match="no records for patient"):
            records.timeline(clinician, "synthea/Patient/no-such-patient", "blood pressure")


def test_researcher_sees_pseudonyms_no_file_paths_and_not_real_ids(env: Env) -> None:
    real = _patient_ids(env)
    with env.session("researcher") as researcher:
        hits = records.search(researcher, "patient", k=10, filters=SearchFilters(resource_types=("Patient",))).hits
        assert len(hits) == N_BUNDLES
        pseudonyms = {h.patient_id for h in hits}
        assert all(p is not None and p.startswith("pseudo-") for p in pseudonyms)
        assert not pseudonyms & set(real)
        dumped = json.dumps([h.model_dump(mode="json") for h in hits])
        for stem in env.bundle_stems:
            assert stem not in dumped  # the source file path is scrubbed
        for pid in real:
            assert pid not in dumped
            # a real patient id is not a handle for a researcher: no hits, no record
            assert not records.search(researcher, "blood pressure", filters=SearchFilters(patient_id=pid)).hits
            with pytest.raises(RecordNotFoundError):
                records.show(researcher, pid)
        pseudonym = sorted(p for p in pseudonyms if p)[0]
        detail = records.show(researcher, pseudonym)
        assert detail.stored.record.patient_id == pseudonym
        shown = json.dumps(detail.to_json())
        assert not [stem for stem in env.bundle_stems if stem in shown]
        ctx = records.timeline(researcher, pseudonym, "blood pressure", k=3)
        assert ctx.hits
        assert {h.patient_id for h in ctx.hits} == {pseudonym}
    reads = [e for e in _events(env.settings, "read") if e.principal == "researcher"]
    assert any(e.detail.get("found") is False for e in reads)  # the refused real id is audited, not hidden


def test_show_returns_the_record_its_chunks_and_every_version(data_dir: Path, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in _iu_lines(data_dir, 3)]
    path = tmp_path / "reports.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    settings = Settings(store=tmp_path / "store", data_dir=data_dir)
    runtime = Runtime()
    try:
        with _session(settings, "data_steward", runtime) as steward:
            first = ingest_service.ingest(steward, [path])
            rows[1] = {**rows[1], "impression": "Interval development of a small right pleural effusion."}
            path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
            second = ingest_service.ingest(steward, [path])
        assert (second.total.inserted, second.total.updated, second.total.unchanged) == (0, 1, 2)
        rid = f"iu-xray/DiagnosticReport/{rows[1]['uid']}"
        with _session(settings, "clinician", runtime) as clinician:
            current = records.show(clinician, rid)
            old = records.show(clinician, rid, version=1)
            with pytest.raises(RecordNotFoundError, match="not found"):
                records.show(clinician, "iu-xray/DiagnosticReport/999999")
    finally:
        runtime.close()
    assert (current.stored.version, current.stored.is_current) == (2, True)
    assert [h.version for h in current.history] == [1, 2]
    assert [h.record.provenance.run_id for h in current.history] == [first.run_id, second.run_id]
    assert current.chunks
    assert any("small right pleural effusion" in c.text for c in current.chunks)
    assert (old.stored.version, old.stored.is_current, old.chunks) == (1, False, ())
    payload = current.to_json()
    assert payload["record"]["id"] == rid
    assert [h["version"] for h in payload["history"]] == [1, 2]


# --------------------------------------------------------------------------- stats, consent


def test_stats_for_any_principal_are_the_same_counts_and_audited(env: Env) -> None:
    seen = {}
    for principal in ROLES:
        with env.session(principal) as session:
            seen[principal] = records.stats(session)
    counts = {(s.records, s.patients, s.chunks, s.vectors) for s in seen.values()}
    assert len(counts) == 1
    stats = seen["clinician"]
    assert stats.patients == N_BUNDLES
    assert stats.by_source["iu-xray"] == N_REPORTS
    assert stats.chunks == stats.vectors
    assert {e.principal for e in _events(env.settings, "stats")} >= set(ROLES)


def test_a_purpose_the_role_may_not_act_for_is_refused_before_any_read_and_audited(env: Env) -> None:
    before = len(AuditLog.for_settings(env.settings).events())
    with pytest.raises(PolicyViolation, match="may not act for purpose 'research'"):
        env.session("clinician", "research")
    events = AuditLog.for_settings(env.settings).events()[before:]
    assert [(e.principal, e.purpose, e.action, e.detail["outcome"]) for e in events] == [
        ("clinician", "research", "purpose", "denied")
    ]
    assert events[0].record_ids == ()  # a refusal hands out nothing, not even ids


def test_research_opt_out_is_excluded_inside_the_query(env: Env) -> None:
    opted = _patient_ids(env)[0]
    with env.session("data_steward") as steward:
        steward.policy.record_consent(opted, "opt_out", by=steward.access)
    try:
        with env.session("researcher") as researcher:
            hits = records.search(researcher, "patient", k=10, filters=SearchFilters(resource_types=("Patient",))).hits
        assert len(hits) == N_BUNDLES - 1
        with env.session("clinician") as clinician:  # treatment is not secondary use
            assert opted in _patient_ids(env)
            assert records.search(clinician, "blood pressure", filters=SearchFilters(patient_id=opted)).hits
        event = [e for e in _events(env.settings, "search") if e.principal == "researcher"][-1]
        assert event.detail["consent_excluded"] == 1
    finally:
        with env.session("data_steward") as steward:
            steward.policy.record_consent(opted, "opt_in", by=steward.access)


# --------------------------------------------------------------------------- doctor, retrieval evaluation


def test_doctor_checks_the_store_and_creates_none(env: Env, tmp_path: Path) -> None:
    report = system.doctor(env.settings)
    checks = {c.check: c for c in report.checks}
    assert checks["store"].ok
    assert f"{env.report.total.records:,} records" in checks["store"].detail
    assert checks[system.EMBEDDER_CHECK].ok
    missing = Settings(store=tmp_path / "nope", data_dir=env.settings.data_dir)
    fresh = {c.check: c for c in system.doctor(missing).checks}
    assert fresh["store"].ok
    assert "not created yet" in fresh["store"].detail
    assert not (tmp_path / "nope").exists()


def test_retrieval_evaluation_is_decided_and_audited(data_dir: Path, tmp_path: Path) -> None:
    items = json.loads((data_dir / "pubmedqa" / "ori_pqal_dev.json").read_text(encoding="utf-8"))
    pub = tmp_path / "ori_pqal_small.json"
    pub.write_text(json.dumps(dict(list(items.items())[:20])), encoding="utf-8")
    settings = Settings(store=tmp_path / "store", data_dir=data_dir)
    runtime = Runtime()
    lines: list[str] = []
    try:
        with _session(settings, "clinician", runtime) as clinician, pytest.raises(PolicyViolation):
            retrieval_eval.evaluate(clinician, pub)
        with _session(settings, "researcher", runtime) as researcher:
            with pytest.raises(DataError, match="no such file"):
                retrieval_eval.evaluate(researcher, tmp_path / "absent.json")
            result = retrieval_eval.evaluate(researcher, pub, seed=7, on_progress=lines.append)
    finally:
        runtime.close()
    task = result.tasks["pubmedqa"]
    assert task.n_queries == 20
    assert set(task.modes) == {"bm25", "dense", "hybrid"}
    assert task.modes["hybrid"].recall[10] >= 0.9  # each question finds its own abstract among 20
    assert lines[0].startswith("indexed 20 documents")
    assert len(lines) == 1 + 3
    events = _events(settings, "evaluate")
    assert [(e.principal, e.detail["outcome"]) for e in events] == [("clinician", "denied"), ("researcher", "ok")]
    assert events[1].detail["files_sha256"] == [sha256_file(pub)]
    assert events[1].detail["seed"] == 7
    assert str(tmp_path) not in json.dumps([e.model_dump() for e in events])
