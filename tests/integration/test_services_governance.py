"""The governance services called directly on a real store of Synthea patients (real MiniLM embedder): lineage in
the caller's view (pseudonyms and hashed file names for researchers, a real patient id refused, opt-outs withheld,
no path in the audit log), the de-identified audit log for admins, erasure through every layer's hooks (snapshot
files, agent runs, feedback, the ingest ledger) and its completion after a failed hook, principals, tokens,
consent and dataset snapshots — each family with a denial that is audited."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sage_health.agents.trace import TraceStore, now_iso
from sage_health.core.config import Settings
from sage_health.core.errors import PolicyViolation, RecordNotFoundError, RunNotFoundError, StoreError, ValidationError
from sage_health.core.hashing import sha256_text
from sage_health.data.datasets import SPLITS, SnapshotErasureHook
from sage_health.data.embed import MiniLMEmbedder
from sage_health.data.feedback import FeedbackStore
from sage_health.data.governance.audit import AuditEvent, AuditLog
from sage_health.data.governance.hooks import ErasureScope, HookReport
from sage_health.data.governance.views import DeidentifiedView
from sage_health.data.ingest.pipeline import IngestPipeline
from sage_health.data.store.protocol import SearchFilters
from sage_health.data.store.sqlite import SqliteDocumentStore
from sage_health.services import audit as audit_service
from sage_health.services import datasets as dataset_service
from sage_health.services import erasure as erasure_service
from sage_health.services import governance
from sage_health.services import lineage as lineage_service
from sage_health.services.hooks import erasure_hooks
from sage_health.services.session import Credentials, Runtime, Session, open_session

pytestmark = pytest.mark.integration

BUNDLES = 3
ROLES = {"clinician": "treatment", "researcher": "research", "data_steward": "operations", "admin": "operations"}


@dataclass(frozen=True)
class Base:
    store: Path
    bundles: tuple[Path, ...]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, embedder: MiniLMEmbedder) -> Base:
    """One ingest per module: the smallest Synthea bundles (their file names are patients' names)."""
    root = tmp_path_factory.mktemp("services-governance")
    src = root / "bundles"
    src.mkdir()
    for bundle in sorted((data_dir / "synthea_fhir_r4" / "bundles").glob("*.json"), key=lambda p: p.stat().st_size)[
        :BUNDLES
    ]:
        shutil.copy(bundle, src / bundle.name)
    store = root / "store"
    with SqliteDocumentStore(store / "sage.db", embedder) as raw:
        report = IngestPipeline(raw).run([src])
        assert report.problems == []
        assert len(raw.patient_ids()) == BUNDLES
    return Base(store=store, bundles=tuple(sorted(p.resolve() for p in src.glob("*.json"))))


@dataclass
class Env:
    settings: Settings
    runtime: Runtime
    bundles: tuple[Path, ...]

    def session(self, who: str, purpose: str | None = None) -> Session:
        return open_session(self.settings, Credentials(principal=who, purpose=purpose or ROLES[who]),
                            runtime=self.runtime)  # fmt: skip

    def raw(self) -> SqliteDocumentStore:
        return self.runtime.store(self.settings)

    def patients(self) -> list[str]:
        return sorted(self.raw().patient_ids())

    def bundle_of(self, patient: str) -> Path:
        records = self.raw().iter_records(SearchFilters(record_ids=(patient,)))
        return Path(str(next(records).record.provenance.source_file))

    def events(self, action: str | None = None) -> list[AuditEvent]:
        return AuditLog.for_settings(self.settings).events(action=action)


@pytest.fixture
def env(tmp_path: Path, base: Base, data_dir: Path) -> Iterator[Env]:
    shutil.copytree(base.store, tmp_path / "store")
    runtime = Runtime()
    try:
        yield Env(Settings(store=tmp_path / "store", data_dir=data_dir), runtime, base.bundles)
    finally:
        runtime.close()


def _names(bundles: tuple[Path, ...]) -> list[str]:
    """The canaries of the file names: stems, names and the name parts before the uuid."""
    out: list[str] = []
    for b in bundles:
        out += [b.name, b.stem, *b.stem.split("_")[:-1]]
    return [n for n in out if len(n) >= 3]


def _leaks(text: str, values: list[str]) -> list[str]:
    return [v for v in values if v in text]


# --------------------------------------------------------------------------- lineage


def test_lineage_in_the_researchers_view_has_pseudonyms_and_no_file_paths(env: Env) -> None:
    patients = env.patients()
    real = patients[0]
    bundle = env.bundle_of(real)
    researcher = env.session("researcher")
    with pytest.raises(RecordNotFoundError, match="patients are named by pseudonym"):
        lineage_service.lineage(researcher, real, up=True)
    refused = env.events("lineage")[-1]
    assert (refused.principal, refused.detail["outcome"]) == ("researcher", "not_found")

    view = researcher.view()
    assert isinstance(view, DeidentifiedView)
    pseudo = view.patient(real)
    assert pseudo is not None
    up = lineage_service.lineage(researcher, pseudo, up=True)
    assert up.tree.node == f"record:{pseudo}"
    assert up.view == "deidentified"
    file_hash = sha256_text(str(bundle))[:12]
    assert [(c.node, c.relation) for c in up.tree.children] == [(f"file:{file_hash}", "from file")]

    down = lineage_service.lineage(researcher, f"file:{file_hash}", up=False, depth=1)
    kids = {c.node for c in down.tree.children}
    assert len(kids) == 50
    assert "in all, first 50 shown" in down.tree.detail
    assert not any("/Patient/" in k for k in kids)
    own = lineage_service.lineage(researcher, pseudo, up=False, depth=1)
    assert own.tree.children[0].node == f"chunks:{pseudo}"
    observation = next(n for n in sorted(kids) if "/Observation/" in n)
    obs_down = lineage_service.lineage(researcher, observation.removeprefix("record:"), up=False, depth=1)
    assert obs_down.tree.children[0].node == f"chunks:{observation.removeprefix('record:')}"
    assert "chunks" in obs_down.tree.children[0].relation
    shown = json.dumps([t.tree.as_dict() for t in (up, down, own, obs_down)])
    assert _leaks(shown, _names(env.bundles)) == []
    assert [p for p in patients if p in shown] == []
    assert str(bundle.parent) not in shown
    # a path is not a handle in the de-identified view (it would link the file name to the pseudonyms)
    with pytest.raises(RecordNotFoundError, match="named by the hash of its path"):
        lineage_service.lineage(researcher, f"file:{bundle}", up=False)

    # the data steward (identified view) sees the real ids and the path
    steward = env.session("data_steward")
    identified = lineage_service.lineage(steward, real, up=True)
    assert [c.node for c in identified.tree.children] == [f"file:{bundle}"]

    # a patient who opted out of research: not found by pseudonym, and their records are withheld
    opted = patients[1]
    governance.set_consent(steward, opted, "opt_out", effective_from="2000-01-01")
    with pytest.raises(RecordNotFoundError, match="research opt-out"):
        lineage_service.lineage(env.session("researcher"), view.patient(opted) or "", up=True)
    withheld = lineage_service.lineage(env.session("researcher"), f"file:{sha256_text(str(env.bundle_of(opted)))}",
                                       up=False, depth=1)  # fmt: skip
    assert withheld.withheld > 10
    for child in withheld.tree.children:  # what is left of the file holds no patient (organisations, practitioners)
        stored = env.raw().get(child.node.removeprefix("record:"))
        assert stored is not None
        assert stored.record.patient_id is None
    assert "withheld (research opt-out)" in withheld.tree.detail

    # the audit log names files by the hash of their path: never a path or a file name
    events = env.events("lineage")
    logged = json.dumps([e.model_dump() for e in events])
    assert _leaks(logged, _names(env.bundles)) == []
    assert str(bundle.parent) not in logged
    assert sha256_text(str(bundle)) in logged
    assert {e.principal for e in events} == {"researcher", "data_steward"}


def test_lineage_denied_for_a_clinician_and_audited(env: Env) -> None:
    with pytest.raises(PolicyViolation, match="may not lineage"):
        lineage_service.lineage(env.session("clinician"), env.patients()[0], up=True)
    denied = env.events("lineage")[-1]
    assert (denied.principal, denied.detail["outcome"]) == ("clinician", "denied")


# --------------------------------------------------------------------------- audit


def test_admin_reads_a_deidentified_audit_log(env: Env) -> None:
    patients = env.patients()
    real = patients[0]
    clinician = env.session("clinician")
    assert clinician.governed().get(real) is not None  # an event naming the real patient id
    governance.set_consent(env.session("data_steward"), real, "opt_out", effective_from="2000-01-01")

    admin = env.session("admin")
    view = admin.view()
    assert isinstance(view, DeidentifiedView)
    pseudo = view.patient(real)
    assert pseudo is not None
    everything = audit_service.show(admin)
    assert everything.view == "deidentified"
    dumped = json.dumps(audit_service.events_json(everything))
    assert [p for p in patients if p in dumped] == []
    assert [p.rsplit("/", 1)[-1] for p in patients if p.rsplit("/", 1)[-1] in dumped] == []
    assert pseudo in dumped
    mine = audit_service.show(admin, patient=pseudo)
    assert {e.action for e in mine.events} >= {"read", "consent"}
    assert all(pseudo in e.record_ids or e.record_ids for e in mine.events)
    assert audit_service.show(admin, record=pseudo).events
    for bad in ({"patient": real}, {"record": real}):
        with pytest.raises(ValidationError, match="takes a patient's pseudonym"):
            audit_service.show(admin, **bad)
    assert audit_service.show(admin, patient="pseudo-0000000000").events == ()

    # the data steward (identified view) reads the ids as written
    steward = audit_service.show(env.session("data_steward"), patient=real)
    assert steward.view == "identified"
    assert any(real in e.record_ids for e in steward.events)
    verified = audit_service.verify(env.session("admin"))
    assert verified.ok
    last = env.events("audit")[-1]
    assert (last.principal, last.detail["op"], last.detail["ok"]) == ("admin", "verify", True)

    with pytest.raises(PolicyViolation, match="may not audit"):
        audit_service.show(env.session("researcher"))
    denied = env.events("audit")[-1]
    assert (denied.principal, denied.detail["outcome"]) == ("researcher", "denied")


# --------------------------------------------------------------------------- erasure


def _agent_runs(env: Env, victim: str, other: str) -> dict[str, str]:
    """Real trace rows: a run about the victim (with a review), a QA run citing one of the victim's records, and a
    run about another patient."""
    raw = env.raw()
    victim_obs = next(s.record.id for s in raw.iter_records(SearchFilters(patient_id=victim, resource_types=(
        "Observation",))))  # fmt: skip
    other_obs = next(s.record.id for s in raw.iter_records(SearchFilters(patient_id=other, resource_types=(
        "Observation",))))  # fmt: skip
    traces = TraceStore(env.settings.db_path)
    runs = {"about": "run-about-victim", "cites": "run-cites-victim", "other": "run-other"}
    for run_id, patient, evidence in ((runs["about"], victim, victim_obs), (runs["cites"], None, victim_obs),
                                      (runs["other"], other, other_obs)):  # fmt: skip
        traces.create_run(run_id, "qa", {"question": "q"}, patient_id=patient)
        traces.add_step(run_id=run_id, step="retrieve", agent="retriever", status="ok", input={"q": "q"},
                        output={"evidence": evidence}, evidence_ids=[evidence], model_ref=None, latency_ms=1.0,
                        error=None, started_at=now_iso())  # fmt: skip
    FeedbackStore(env.settings.db_path).events()  # creates the table
    with sqlite3.connect(env.settings.db_path) as conn:
        FeedbackStore.add(conn, run_id=runs["about"], task="qa", kind="approved", signer="clinician", draft={},
                          final={}, diff="", record_id=victim_obs)  # fmt: skip
        FeedbackStore.add(conn, run_id=runs["other"], task="qa", kind="approved", signer="clinician", draft={},
                          final={}, diff="", record_id=other_obs)  # fmt: skip
    return runs


def test_erasure_reaches_snapshot_files_runs_feedback_and_file_names(env: Env) -> None:
    patients = env.patients()
    victim, other = patients[-1], patients[0]
    bundle = env.bundle_of(victim)
    steward = env.session("data_steward")
    snap = dataset_service.create(steward, "cohort", "Observation", task="text")
    items = "".join((snap.path / f"{s}.jsonl").read_text(encoding="utf-8") for s in SPLITS)
    assert victim in items
    runs = _agent_runs(env, victim, other)
    ids = env.raw().patient_record_ids(victim)

    with pytest.raises(PolicyViolation, match="may not erase"):
        erasure_service.erase(env.session("admin"), victim, reason="request 7")
    assert env.events("erase")[-1].detail["outcome"] == "denied"
    assert env.raw().patient_record_ids(victim) == ids

    result = erasure_service.erase(env.session("data_steward"), victim, reason="right to erasure, request 7")
    assert result.consistent, result.problems
    assert result.records == len(ids)
    assert f"snapshot:{snap.ref}" in result.tainted
    assert result.runs == 2
    assert result.removed["agent_steps"] == 2
    assert result.removed["feedback_events"] == 1
    assert result.removed["snapshot_files"] == len(SPLITS)
    assert result.removed["ingest_files"] == 1
    jsonl = [snap.path / f"{s}.jsonl" for s in SPLITS]
    assert {sha256_text(str(p)) for p in jsonl} | {sha256_text(str(bundle))} <= set(result.files_sha256)
    assert [r.hook for r in result.hooks][-3:] == ["dataset_snapshots", "feedback_events", "agent_traces"]

    # on disk: the snapshot's items are gone; what is left holds no record of the patient
    assert not any(p.exists() for p in jsonl)
    left = "".join(p.read_text(encoding="utf-8") for p in snap.path.iterdir())
    assert victim not in left
    note = json.loads((snap.path / "ERASURE.json").read_text(encoding="utf-8"))
    assert note[0]["files_removed"] == [p.name for p in jsonl]
    assert dataset_service.show(steward, snap.ref).info.items_erased
    # the runs about or citing the patient and their review are gone; the other patient's stay
    traces = TraceStore(env.settings.db_path)
    for gone in (runs["about"], runs["cites"]):
        with pytest.raises(RunNotFoundError):
            traces.get_run(gone)
    assert traces.get_run(runs["other"]).patient_id == other
    assert [e.run_id for e in FeedbackStore(env.settings.db_path).events()] == [runs["other"]]
    # the file name (the patient's name) is gone from the ledger and from the provenance of what is left
    conn = env.raw().connection
    assert conn.execute("SELECT count(*) FROM files WHERE path = ?", (str(bundle),)).fetchone()[0] == 0
    assert (
        conn.execute("SELECT count(*) FROM records WHERE provenance LIKE ?", (f"%{bundle.name}%",)).fetchone()[0] == 0
    )
    assert (
        conn.execute("SELECT count(*) FROM records WHERE patient_id = ? OR id = ?", (victim, victim)).fetchone()[0] == 0
    )
    assert env.raw().check()["ok"]

    # the audit events: started + ok, counts and path hashes, no path, no file name, the reason as a hash
    events = [e for e in env.events("erase") if victim in e.record_ids]
    assert [e.detail["outcome"] for e in events] == ["denied", "started", "ok"][-len(events) :]
    done = events[-1].detail
    assert done["removed"]["snapshot_files"] == len(SPLITS)
    assert sha256_text(str(bundle)) in done["files_sha256"]
    logged = json.dumps([e.model_dump() for e in events])
    assert _leaks(logged, _names(env.bundles)) == []
    assert str(snap.path) not in logged
    assert "request 7" not in logged
    with pytest.raises(ValidationError, match="no records of patient"):
        erasure_service.erase(env.session("data_steward"), victim, reason="again")


class _FailingHook:
    """A layer whose share of the erasure fails (a full disk, a crash): the erasure must stop before deleting the
    records and complete when it is run again."""

    name = "failing-layer"

    def erase(self, scope: ErasureScope) -> HookReport:
        raise OSError(f"no space left while erasing {len(scope.record_ids)} records")


def test_a_failed_erasure_is_completed_by_running_it_again(env: Env) -> None:
    patients = env.patients()
    victim, other = patients[0], patients[1]
    steward = env.session("data_steward")
    snap = dataset_service.create(steward, "partial", "Observation", task="text")
    runs = _agent_runs(env, victim, other)
    ids = env.raw().patient_record_ids(victim)
    hooks = erasure_hooks(env.settings)
    at = next(i for i, h in enumerate(hooks) if isinstance(h, SnapshotErasureHook)) + 1
    hooks.insert(at, _FailingHook())

    with pytest.raises(StoreError, match=r"stopped in the failing-layer step .* run the same erase again"):
        erasure_service.erase(steward, victim, reason="request 8", hooks=hooks)
    # half-way: the hooks before the failing one ran, the rest and the records did not
    assert not (snap.path / "train.jsonl").exists()
    assert TraceStore(env.settings.db_path).get_run(runs["about"]).patient_id == victim
    assert env.raw().patient_record_ids(victim) == ids
    first = [e for e in env.events("erase") if victim in e.record_ids]
    assert [e.detail["outcome"] for e in first] == ["started", "failed"]
    assert first[-1].detail["step"] == "hook:failing-layer"

    again = erasure_service.erase(env.session("data_steward"), victim, reason="request 8")
    assert again.resumed
    assert again.consistent, again.problems
    assert again.erasure_id == first[0].detail["erasure_id"]
    assert again.records == len(ids)
    assert again.runs == 2
    assert env.raw().patient_record_ids(victim) == []
    assert env.raw().check()["ok"]
    with pytest.raises(RunNotFoundError):
        TraceStore(env.settings.db_path).get_run(runs["about"])
    assert f"snapshot:{snap.ref}" in again.tainted
    outcomes = [e.detail["outcome"] for e in env.events("erase") if victim in e.record_ids]
    assert outcomes == ["started", "failed", "started", "ok"]
    with pytest.raises(ValidationError, match="no records of patient"):
        erasure_service.erase(env.session("data_steward"), victim, reason="request 8")


# --------------------------------------------------------------------------- principals, tokens, consent


def test_principals_tokens_and_consent_decide_and_audit(env: Env, tmp_path: Path) -> None:
    steward = env.session("data_steward")
    patient = env.patients()[0]
    rec = governance.set_consent(steward, patient, "opt_out", effective_from="2000-01-01", reason="form 12")
    assert (rec.patient_id, rec.decision) == (patient, "opt_out")
    assert governance.list_consents(steward, patient).opted_out == (patient,)
    with pytest.raises(ValidationError, match="unknown patient"):
        governance.set_consent(steward, "synthea/Patient/nobody", "opt_in")
    consent_file = tmp_path / "Jane_Doe_consents.csv"
    consent_file.write_text(f"patient_id,decision,effective_from\n{patient},opt_in,2001-01-01\n", encoding="utf-8")
    imported = governance.import_consents(steward, consent_file)
    assert [c.decision for c in imported] == ["opt_in"]
    last = env.events("consent")[-1]
    assert last.detail["file_sha256"] == sha256_text(str(consent_file.resolve()))
    assert "Jane_Doe" not in json.dumps(last.model_dump())
    with pytest.raises(PolicyViolation, match="may not consent"):
        governance.set_consent(env.session("researcher"), patient, "opt_out")
    assert env.events("consent")[-1].detail["outcome"] == "denied"

    admin = env.session("admin")
    added = governance.add_principal(admin, "dr.c", "clinician")
    assert (added.name, added.role) == ("dr.c", "clinician")
    assert "dr.c" in {p.name for p in governance.list_principals(admin)}
    with pytest.raises(PolicyViolation, match="may not principals"):
        governance.add_principal(env.session("clinician"), "x.y", "admin")
    assert env.events("principals")[-1].detail["outcome"] == "denied"
    with pytest.raises(ValidationError, match="first token of a store must belong to an administrator"):
        governance.create_token(admin, "dr.c")
    issued = governance.create_token(admin, "admin")
    assert issued.enabled_auth
    dr_token = governance.create_token(admin, "dr.c", expires_days=7, label="ward 3")
    assert [t.id for t in governance.list_tokens(admin, "dr.c")] == [dr_token.info.id]
    with pytest.raises(ValidationError, match="unknown principal 'nobody'"):
        governance.list_tokens(admin, "nobody")
    assert governance.revoke_token(admin, dr_token.info.id).state == "revoked"
    status = governance.auth_status(admin)
    assert (status.required, status.tokens, status.active_tokens) == (True, 2, 1)
    events = env.events("principals")
    ops = [(e.detail.get("op"), e.detail.get("issued_token_id") or e.detail.get("revoked_token_id")) for e in events]
    assert ("token.create", dr_token.info.id) in ops
    assert ("token.revoke", dr_token.info.id) in ops
    assert dr_token.token not in json.dumps([e.model_dump() for e in events])
    # authentication is on now: a session needs the token, and acts as its principal
    with pytest.raises(PolicyViolation, match="this store requires credentials"):
        env.session("admin")
    by_token = open_session(env.settings, Credentials(token=issued.token, purpose="operations"), runtime=env.runtime)
    assert (by_token.principal, by_token.mode, by_token.token_id) == ("admin", "token", issued.info.id)
    assert governance.list_principals(by_token)
    assert env.events("principals")[-1].detail["token_id"] == issued.info.id


# --------------------------------------------------------------------------- dataset snapshots


def test_dataset_services_decide_and_audit(env: Env, tmp_path: Path) -> None:
    researcher = env.session("researcher")
    with pytest.raises(PolicyViolation, match="add --deid"):
        dataset_service.create(researcher, "pts", "Patient")
    info = dataset_service.create(env.session("researcher"), "pts", "Patient", deid=True)
    assert info.task == "text"
    assert info.counts["items"] == BUNDLES
    assert [i.ref for i in dataset_service.list_all(researcher)] == [info.ref]
    shown = dataset_service.show(researcher, "pts")
    assert shown.manifest["deidentification"]["applied"] is True
    exported = dataset_service.export(researcher, info.ref, tmp_path / "out")
    text = "".join((exported.path / f"{s}.jsonl").read_text(encoding="utf-8") for s in SPLITS)
    assert [p for p in env.patients() if p in text] == []
    assert _leaks(text, _names(env.bundles)) == []
    with pytest.raises(PolicyViolation, match="may not snapshot"):
        dataset_service.list_all(env.session("clinician"))
    denied = env.events("snapshot")[-1]
    assert (denied.principal, denied.detail["outcome"]) == ("clinician", "denied")
