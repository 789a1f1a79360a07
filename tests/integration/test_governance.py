"""Governance through the real store: the policy matrix (role x purpose x consent x action), consent pushed into
queries, erasure without orphans and with tainted lineage, principals and consent errors, everything audited."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sage_health.core.config import Settings
from sage_health.core.errors import PolicyViolation, ValidationError
from sage_health.core.hashing import sha256_text
from sage_health.data.datasets import create_snapshot, export_snapshot
from sage_health.data.embed import MiniLMEmbedder
from sage_health.data.governance.access import GovernedStore, open_governed
from sage_health.data.governance.audit import AuditLog
from sage_health.data.governance.lineage import Edge, LineageStore, record_node, snapshot_node
from sage_health.data.governance.policy import RULES, Action, PolicyEngine, read_consent_file
from sage_health.data.ingest.pipeline import IngestPipeline
from sage_health.data.store.protocol import SearchFilters, SearchQuery
from sage_health.data.store.sqlite import SqliteDocumentStore
from sage_health.interfaces.cli import app
from sage_health.models.registry import ModelRegistry
from sage_health.services.hooks import erasure_hooks

pytestmark = pytest.mark.integration

BUNDLES = 3
ACCESS = {
    "clinician": "treatment",
    "researcher": "research",
    "data_steward": "operations",
    "admin": "operations",
}


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, data_dir: Path, embedder: MiniLMEmbedder
) -> Iterator[tuple[Settings, SqliteDocumentStore]]:
    root = tmp_path_factory.mktemp("governance")
    src = root / "bundles"
    src.mkdir()
    for bundle in sorted((data_dir / "synthea_fhir_r4" / "bundles").glob("*.json"))[:BUNDLES]:
        (src / bundle.name).write_bytes(bundle.read_bytes())
    settings = Settings(store=root / "store", data_dir=data_dir)
    with SqliteDocumentStore(settings.db_path, embedder) as store:
        report = IngestPipeline(store, batch_records=512).run([src], command="governance-test")
        assert not report.problems
        yield settings, store


def _patients(store: SqliteDocumentStore) -> list[str]:
    return sorted(store.patient_ids())


def _as(settings: Settings, store: SqliteDocumentStore, role: str, purpose: str | None = None) -> GovernedStore:
    return open_governed(settings, store, principal=role, purpose=purpose or ACCESS[role])


def test_policy_matrix_role_purpose_action(env: tuple[Settings, SqliteDocumentStore]) -> None:
    settings, _store = env
    engine = PolicyEngine(settings.db_path)
    for role in ACCESS:
        for purpose in ("treatment", "research", "operations"):
            access = engine.access(role, purpose)
            rule = next((r for r in RULES if r.role == role and r.purpose == purpose), None)
            for action in Action:
                decision = engine.decide(access, action)
                expected = rule is not None and action in rule.actions
                assert decision.allowed == expected, (role, purpose, action)
                if not expected:
                    assert role in decision.reason
                else:
                    assert rule is not None
                    assert decision.view == rule.view
                    secondary = purpose == "research" or action in (Action.EXPORT, Action.SNAPSHOT, Action.TRAIN,
                                                                     Action.EVALUATE)  # fmt: skip
                    assert decision.exclude_opted_out == secondary
    # the key promises, spelled out
    assert not engine.decide(engine.access("researcher", "research"), Action.ERASE).allowed
    assert not engine.decide(engine.access("admin", "operations"), Action.ERASE).allowed
    assert engine.decide(engine.access("data_steward", "operations"), Action.ERASE).allowed
    assert engine.decide(engine.access("clinician", "treatment"), Action.READ).view == "identified"
    assert engine.decide(engine.access("researcher", "research"), Action.READ).view == "deidentified"


def test_denials_are_policy_violations_and_audited(env: tuple[Settings, SqliteDocumentStore]) -> None:
    settings, store = env
    researcher = _as(settings, store, "researcher")
    before = len(AuditLog.for_settings(settings).events(action="erase"))
    with pytest.raises(PolicyViolation, match=r"researcher \(researcher, research\) may not erase"):
        researcher.decide(Action.ERASE)
    denied = AuditLog.for_settings(settings).events(action="erase")
    assert len(denied) == before + 1
    assert denied[-1].detail["outcome"] == "denied"
    with pytest.raises(PolicyViolation, match="may not act for purpose 'research'"):
        _as(settings, store, "clinician", "research").decide(Action.READ)
    with pytest.raises(PolicyViolation, match="unknown principal 'mallory'"):
        open_governed(settings, store, principal="mallory", purpose="research")
    with pytest.raises(PolicyViolation, match="a purpose of use is required"):
        open_governed(settings, store, principal="clinician", purpose=None)
    with pytest.raises(PolicyViolation, match="no principal given"):
        open_governed(settings, store)


def test_consent_opt_out_is_pushed_into_research_queries_not_treatment(
    env: tuple[Settings, SqliteDocumentStore],
) -> None:
    settings, store = env
    patients = _patients(store)
    opted = patients[0]
    steward = _as(settings, store, "data_steward")
    engine = steward.policy
    engine.record_consent(opted, "opt_out", by=steward.access, effective_from="2000-01-01", reason="form 17")
    assert opted in engine.opted_out()
    clinician = _as(settings, store, "clinician")
    researcher = _as(settings, store, "researcher")
    query = SearchQuery(text="encounter condition observation", k=200, mode="bm25")
    treated = {h.patient_id for h in clinician.search(query)}
    assert opted in treated  # treatment access is unaffected by a research opt-out
    hits = researcher.search(query)
    assert hits
    pseudonyms = {h.patient_id for h in hits}
    assert all(p is None or p.startswith("pseudo-") for p in pseudonyms)
    view = researcher.view
    assert view is not None
    opted_pseudonym = view.resolve_patient  # resolve back through the view, as the governed store does
    real = {opted_pseudonym(p, store) for p in pseudonyms if p}
    assert opted not in real
    assert real
    # every record read of the opted-out patient is withheld for research, and the withholding is audited
    assert researcher.get(opted) is None
    assert researcher.get(opted) is None
    records = list(researcher.iter_records(SearchFilters(resource_types=("Patient",))))
    assert len(records) == len(patients) - 1
    assert all(r.record.patient_id and r.record.patient_id.startswith("pseudo-") for r in records)
    # a real patient id is not a handle a researcher can use
    assert researcher.get(patients[1]) is None
    # a later opt-in restores research use
    engine.record_consent(opted, "opt_in", by=steward.access, effective_from="2001-01-01")
    assert opted not in engine.opted_out()
    engine.record_consent(opted, "opt_out", by=steward.access, effective_from="2002-01-01")


def test_search_and_read_events_carry_ids_and_query_hashes_only(env: tuple[Settings, SqliteDocumentStore]) -> None:
    settings, store = env
    clinician = _as(settings, store, "clinician")
    query_text = "hypertension follow-up for a named person"
    hits = clinician.search(SearchQuery(text=query_text, k=3))
    event = AuditLog.for_settings(settings).events(action="search")[-1]
    assert event.principal == "clinician"
    assert event.purpose == "treatment"
    assert list(event.record_ids) == [h.record_id for h in hits]
    assert event.query_sha256 is not None
    assert query_text not in json.dumps(event.model_dump())
    assert AuditLog.for_settings(settings).verify().ok


def test_principals_and_consent_bad_input(env: tuple[Settings, SqliteDocumentStore], tmp_path: Path) -> None:
    settings, store = env
    admin = _as(settings, store, "admin")
    engine = admin.policy
    added = engine.add_principal("dr.jones", "clinician", by=admin.access)
    assert (added.role, added.builtin) == ("clinician", False)
    with pytest.raises(ValidationError, match="already exists"):
        engine.add_principal("dr.jones", "clinician", by=admin.access)
    with pytest.raises(ValidationError, match="unknown role 'surgeon'"):
        engine.add_principal("dr.who", "surgeon", by=admin.access)
    with pytest.raises(PolicyViolation, match="may not principals"):
        engine.add_principal("x.y", "admin", by=_as(settings, store, "clinician").access)
    with pytest.raises(PolicyViolation, match="may not consent"):
        engine.record_consent("p", "opt_out", by=admin.access)
    steward = _as(settings, store, "data_steward").access
    before = len(engine.consents())
    bad = tmp_path / "consent.csv"
    bad.write_text("patient_id,decision\nsynthea/Patient/a,opt_out\nsynthea/Patient/b,maybe\n", encoding="utf-8")
    with pytest.raises(ValidationError, match=r"consent.csv: row 2: decision must be opt_out or opt_in"):
        engine.import_consents(read_consent_file(bad), by=steward, where=f"{bad.name}: ")
    assert len(engine.consents()) == before  # all or nothing
    broken = tmp_path / "consent.json"
    broken.write_text('[{"patient_id": "a", "decision": "opt_out"', encoding="utf-8")
    with pytest.raises(ValidationError, match=r"consent\.json: not valid JSON"):
        read_consent_file(broken)
    dated = tmp_path / "dated.jsonl"
    dated.write_text('{"patient_id": "a", "decision": "opt_out", "effective_from": "March"}\n', encoding="utf-8")
    with pytest.raises(ValidationError, match="effective_from: 'March' is not a date"):
        engine.import_consents(read_consent_file(dated), by=steward)


def test_cli_needs_principal_and_purpose(env: tuple[Settings, SqliteDocumentStore]) -> None:
    settings, _ = env
    runner = CliRunner(env={"SAGE_PRINCIPAL": "", "SAGE_PURPOSE": ""})
    store = str(settings.store)
    missing = runner.invoke(app, ["search", "asthma", "--store", store])
    assert missing.exit_code == 1
    assert "no principal given" in missing.output
    no_purpose = runner.invoke(app, ["search", "asthma", "--store", store, "--as", "clinician"])
    assert no_purpose.exit_code == 1
    assert "a purpose of use is required" in no_purpose.output
    wrong = runner.invoke(app, ["erase", "--patient", "x", "--reason", "r", "--store", store, "--as", "researcher",
                                "--purpose", "research"])  # fmt: skip
    assert wrong.exit_code == 1
    assert "may not erase" in wrong.output
    evaluation = runner.invoke(app, ["eval", "deid", "--store", store, "--as", "clinician", "--purpose", "treatment"])
    assert evaluation.exit_code == 1
    assert "may not evaluate" in evaluation.output
    verified = runner.invoke(app, ["audit", "verify", "--store", store, "--as", "data_steward", "--purpose",
                                   "operations", "--json"])  # fmt: skip
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.stdout)["ok"] is True


def test_erasure_removes_everything_taints_lineage_and_keeps_the_store_consistent(
    env: tuple[Settings, SqliteDocumentStore],
) -> None:
    settings, store = env
    victim = _patients(store)[-1]
    steward = _as(settings, store, "data_steward")
    ids = [s.record.id for s in store.iter_records(SearchFilters(patient_id=victim))]
    assert len(ids) > 10
    # a real dataset snapshot that holds the patient's records, exported once before the erasure
    snap_info = create_snapshot(steward, settings, "cohort-text", "Observation", task="text")
    rows = [json.loads(line) for f in ("train", "val", "test") for line in
            (snap_info.path / f"{f}.jsonl").read_text(encoding="utf-8").splitlines()]  # fmt: skip
    assert victim in {r["patient"] for r in rows}
    export_snapshot(steward, settings, f"cohort-text@{snap_info.hash}", settings.store.parent / "export-before")
    # a snapshot holding one of the patient's records, and a model trained on it
    lineage = LineageStore(settings.db_path)
    snap = snapshot_node("cohort", "abc123")
    lineage.add([Edge(record_node(ids[0]), snap, "in_snapshot")])
    registry = ModelRegistry(settings.db_path)
    model = registry.register("summary-lm", backend="extractive", dataset_snapshot_id="cohort@abc123")
    with pytest.raises(PolicyViolation, match="may not erase"):
        _as(settings, store, "admin").erase_patient(victim, reason="request 42", hooks=erasure_hooks(settings))
    result = steward.erase_patient(victim, reason="right to erasure, request 42", hooks=erasure_hooks(settings))
    assert result.records == len(set(ids))
    assert result.consistent, result.problems
    assert snap in result.tainted
    assert f"model:summary-lm@{model.version}" in result.tainted
    assert snapshot_node("cohort-text", snap_info.hash) in result.tainted
    with pytest.raises(PolicyViolation, match="is tainted"):
        export_snapshot(steward, settings, f"cohort-text@{snap_info.hash}", settings.store.parent / "export-after")
    # nothing of the patient is left: records, versions, chunks, vectors, FTS rows
    conn = store.connection
    assert (
        conn.execute("SELECT count(*) FROM records WHERE patient_id = ? OR id = ?", (victim, victim)).fetchone()[0] == 0
    )
    assert conn.execute("SELECT count(*) FROM chunks WHERE patient_id = ?", (victim,)).fetchone()[0] == 0
    assert store.check()["ok"]
    clinician = _as(settings, store, "clinician")
    assert clinician.get(victim) is None
    everything = clinician.search(SearchQuery(text="encounter condition observation patient", k=500, mode="bm25"))
    assert victim not in {h.patient_id for h in everything}
    assert not list(clinician.iter_records(SearchFilters(patient_id=victim)))
    # tainted model cannot be promoted; the erasure is in the audit log (started + done), reason as a hash only
    with pytest.raises(Exception, match="tainted"):
        registry.promote("summary-lm", model.version, actor="admin")
    events = [e for e in AuditLog.for_settings(settings).events(action="erase") if victim in e.record_ids]
    assert [e.detail["outcome"] for e in events] == ["started", "ok"]
    assert "request 42" not in json.dumps([e.model_dump() for e in events])
    # the snapshot's item files are gone with the erasure (the manifest and datasheet stay, with ERASURE.json)
    assert not any((snap_info.path / f"{s}.jsonl").exists() for s in ("train", "val", "test"))
    assert (snap_info.path / "ERASURE.json").is_file()
    assert result.removed["snapshot_files"] == 3
    assert result.removed["records"] == len(set(ids))
    with pytest.raises(ValidationError, match="no records of patient"):
        steward.erase_patient(victim, reason="again")
    assert AuditLog.for_settings(settings).verify().ok


_MATRIX_ACTIONS = (Action.READ, Action.SEARCH, Action.INGEST, Action.ERASE, Action.CONSENT, Action.PRINCIPALS)


def _run_operation(governed: GovernedStore, action: Action, record_id: str, query: SearchQuery) -> None:
    """Run the real operation behind ``action`` (raises PolicyViolation when the policy refuses it)."""
    if action is Action.READ:
        assert governed.get(record_id) is not None
    elif action is Action.SEARCH:
        assert governed.search(query)
    elif action is Action.INGEST:
        governed.write([], run_id="matrix")
    elif action is Action.ERASE:
        with pytest.raises(ValidationError, match="no records of patient"):  # allowed, then refused for its input
            governed.erase_patient("synthea/Patient/none", reason="matrix")
    elif action is Action.CONSENT:
        assert governed.policy.import_consents([], by=governed.access) == []
    elif action is Action.PRINCIPALS:
        name = f"m.{governed.access.principal.name}.{governed.access.purpose}".replace("_", "-")
        assert governed.policy.add_principal(name, "researcher", by=governed.access).name == name


def test_policy_matrix_through_the_governed_store(env: tuple[Settings, SqliteDocumentStore]) -> None:
    """role x purpose x consent x action through the real store: the operation either runs (with the consent filter
    the table says) or raises PolicyViolation."""
    settings, store = env
    patients = _patients(store)
    opted, other = patients[0], patients[1]
    steward = _as(settings, store, "data_steward")
    steward.policy.record_consent(opted, "opt_out", by=steward.access, effective_from="2000-01-01")
    opted_obs = next(s.record.id for s in store.iter_records(SearchFilters(patient_id=opted)) if s.record.id != opted)
    other_obs = next(s.record.id for s in store.iter_records(SearchFilters(patient_id=other)) if s.record.id != other)
    query = SearchQuery(text="encounter observation condition", k=300, mode="bm25")
    checked = 0
    for role in ACCESS:
        for purpose in ("treatment", "research", "operations"):
            governed = _as(settings, store, role, purpose)
            rule = next((r for r in RULES if r.role == role and r.purpose == purpose), None)
            allowed = rule.actions if rule is not None else frozenset()
            for action in _MATRIX_ACTIONS:
                if action in allowed:
                    _run_operation(governed, action, other_obs, query)
                else:
                    with pytest.raises(PolicyViolation):
                        _run_operation(governed, action, other_obs, query)
                checked += 1
            if Action.READ in allowed:
                excluded = purpose == "research"
                assert (governed.get(opted_obs) is None) == excluded, (role, purpose)
                seen = {h.record_id for h in governed.search(query)}
                assert (opted_obs in seen) is False or not excluded
            if Action.SNAPSHOT in allowed:  # secondary use: opt-outs excluded whatever the purpose
                reader = governed.acting(Action.SNAPSHOT)
                assert reader.get(opted_obs) is None
                assert reader.get(other_obs) is not None
    assert checked == 4 * 3 * len(_MATRIX_ACTIONS)


def test_cli_lineage_and_audit_show_name_patients_by_pseudonym_for_deidentified_readers(
    env: tuple[Settings, SqliteDocumentStore],
) -> None:
    """The holes of issue 13: ``lineage ID --up --as researcher`` printed the source file path (a Synthea file is
    named after its patient) for a real patient id; the admin's ``audit show`` printed real patient ids; the
    lineage audit event held the path."""
    settings, store = env
    runner = CliRunner()
    opted = set(PolicyEngine(settings.db_path).opted_out())
    patient = next(p for p in _patients(store) if p not in opted)
    stored = store.get(patient)
    assert stored is not None
    bundle = Path(str(stored.record.provenance.source_file))
    names = [bundle.name, bundle.stem, *bundle.stem.split("_")[:-1]]
    researcher = ["--store", str(settings.store), "--as", "researcher", "--purpose", "research"]
    refused = runner.invoke(app, ["lineage", patient, "--up", *researcher])
    assert refused.exit_code == 1
    assert "patients are named by pseudonym" in " ".join(refused.output.split())
    assert [n for n in names if n in refused.output] == []
    view = _as(settings, store, "researcher").view
    assert view is not None
    pseudo = view.patient(patient)
    assert pseudo is not None
    up = runner.invoke(app, ["lineage", pseudo, "--up", "--json", *researcher])
    assert up.exit_code == 0, up.output
    tree = json.loads(up.stdout)
    assert tree["node"] == f"record:{pseudo}"
    assert [c["node"] for c in tree["children"]] == [f"file:{sha256_text(str(bundle))[:12]}"]
    table = runner.invoke(app, ["lineage", pseudo, "--up", *researcher])
    assert table.exit_code == 0, table.output
    for text in (up.output, table.output):
        assert [n for n in names if n in text] == []
        assert patient not in text

    admin = ["--store", str(settings.store), "--as", "admin", "--purpose", "operations"]
    shown = runner.invoke(app, ["audit", "show", "--json", *admin])
    assert shown.exit_code == 0, shown.output
    assert [p for p in _patients(store) if p in shown.stdout] == []
    assert pseudo in shown.stdout
    mine = runner.invoke(app, ["audit", "show", "--patient", pseudo, "--json", *admin])
    assert mine.exit_code == 0, mine.output
    assert {e["action"] for e in json.loads(mine.stdout)} >= {"lineage"}
    real = runner.invoke(app, ["audit", "show", "--patient", patient, *admin])
    assert real.exit_code == 1
    assert "takes a patient's pseudonym" in " ".join(real.output.split())
    logged = json.dumps([e.model_dump() for e in AuditLog.for_settings(settings).events(action="lineage")])
    assert [n for n in names if n in logged] == []
