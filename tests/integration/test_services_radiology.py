"""The radiology, trace and co-evolution use cases called directly (``sage_health.services``) over a real store:
real IU X-ray reports and images, a real Synthea patient, the real embedder, labeler, agents and the extractive
writer. Every use-case family has a refusal, and every refusal is in the audit log; the co-evolution erasure hook
scrubs the training copies the loop writes."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from sage_health.apps.coevolve.erasure import CoevolveErasureHook
from sage_health.apps.coevolve.loop import LoopOptions
from sage_health.apps.coevolve.replay import replay_ledger, replayed_studies
from sage_health.apps.coevolve.scoring import snapshot_as_train_file
from sage_health.apps.coevolve.spec import cycle_dir, train_file_name
from sage_health.core.config import Settings
from sage_health.core.errors import AgentError, PolicyViolation
from sage_health.core.hashing import sha256_file, sha256_text
from sage_health.data.datasets import create_snapshot
from sage_health.data.governance.audit import AuditEvent, AuditLog
from sage_health.data.governance.hooks import ErasureScope
from sage_health.data.governance.identity import IdentityStore
from sage_health.data.governance.policy import PolicyEngine
from sage_health.data.ingest.pipeline import IngestPipeline
from sage_health.data.store.factory import open_store
from sage_health.models.registry import ModelRegistry
from sage_health.services import coevolve, erasure, radiology, traces
from sage_health.services.hooks import erasure_hooks
from sage_health.services.radiology import agent_context
from sage_health.services.session import Credentials, Session, open_session

STEPS = ["plan", "retrieve", "screen", "imaging", "write", "verify", "safety"]
EDITED = "FINDINGS: The lungs are clear. No pleural effusion.\n\nIMPRESSION: No acute cardiopulmonary disease.\n"


@dataclass(frozen=True)
class World:
    settings: Settings
    patient_id: str
    root: Path


@pytest.fixture(scope="module")
def world(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> World:
    """60 real IU reports + the studies with images (and their PNGs), one Synthea bundle."""
    root = tmp_path_factory.mktemp("svc-radiology")
    iu = root / "corpus" / "iu"
    (iu / "images").mkdir(parents=True)
    lines = (data_dir / "iu_xray" / "reports.jsonl").read_text(encoding="utf-8").splitlines()
    keep = lines[:60] + [ln for ln in lines[60:] if json.loads(ln)["uid"] in (3, 7, 1900)]
    (iu / "reports.jsonl").write_text("\n".join(keep) + "\n", encoding="utf-8")
    shutil.copy(data_dir / "iu_xray" / "images.csv", iu / "images.csv")
    for png in (data_dir / "iu_xray" / "images").glob("*.png"):
        shutil.copy(png, iu / "images" / png.name)
    bundle = sorted((data_dir / "synthea_fhir_r4" / "bundles").glob("*.json"))[0]
    shutil.copy(bundle, root / "corpus" / bundle.name)
    patient = next(
        e["resource"]["id"]
        for e in json.loads(bundle.read_text(encoding="utf-8"))["entry"]
        if e["resource"]["resourceType"] == "Patient"
    )
    settings = Settings(store=root / "store", data_dir=data_dir, generator="extractive")
    with open_store(settings, must_exist=False) as store:
        report = IngestPipeline(store).run([root / "corpus"])
    assert not report.problems, [p.line() for p in report.problems]
    return World(settings=settings, patient_id=f"synthea/Patient/{patient}", root=root)


def _session(w: World, principal: str, purpose: str) -> Session:
    return open_session(w.settings, Credentials(principal=principal, purpose=purpose))


def _events(w: World, action: str) -> list[AuditEvent]:
    return AuditLog.for_settings(w.settings).events(action=action)


def _denied(w: World, action: str, principal: str, before: int) -> list[AuditEvent]:
    return [e for e in _events(w, action)[before:] if e.principal == principal and e.detail.get("outcome") == "denied"]


def _runs(w: World) -> int:
    return len(traces.list_runs(_session(w, "clinician", "treatment"), limit=1000).runs)


# --------------------------------------------------------------------------------------------- draft, review, trace


def test_draft_review_and_trace_through_the_services(world: World) -> None:
    clinician = _session(world, "clinician", "treatment")
    outcome = radiology.draft(clinician, study_id="iu-xray/DiagnosticReport/7")
    assert outcome.status == "paused"
    assert outcome.model_ref == "extractive@1"
    assert outcome.draft.sentences
    assert all(s.citations for s in outcome.draft.sentences)
    listed = traces.list_runs(clinician, status="paused", limit=50)
    assert outcome.run_id in {r.run_id for r in listed.runs}
    assert all("result" not in row and "plan" not in row for row in listed.as_list())

    found = traces.trace(clinician, outcome.run_id)
    assert [s.step for s in found.steps] == STEPS
    assert found.run.study_id == "iu-xray/DiagnosticReport/7"
    read = [e for e in _events(world, "read") if e.detail.get("trace") == outcome.run_id]
    assert read
    assert read[-1].record_ids == ("iu-xray/DiagnosticReport/7",)
    assert read[-1].detail["channel"] == "cli"
    assert read[-1].detail["steps"] == len(STEPS)

    signed = radiology.review(clinician, outcome.run_id, approve=True, edited=EDITED)
    assert signed.status == "approved"
    assert signed.feedback_kind == "edited"
    assert signed.signer == "clinician"
    assert signed.record_id == f"sage-radiology/DiagnosticReport/{outcome.run_id}"
    assert "+IMPRESSION: No acute cardiopulmonary disease." in signed.diff
    after = traces.trace(clinician, outcome.run_id)
    assert after.run.status == "approved"
    assert [s.step for s in after.steps] == [*STEPS, "review"]
    assert after.as_dict()["steps"][-1]["output"]["record_id"] == signed.record_id  # type: ignore[index]


def test_a_failed_run_resumes_through_the_service_once_its_cause_is_fixed(world: World) -> None:
    clinician = _session(world, "clinician", "treatment")
    with pytest.raises(AgentError, match="runs resume") as failed:
        radiology.draft(clinician, indication="Cough and fever", model="svc-later@1")
    run_id = next(r.run_id for r in traces.list_runs(clinician, status="failed", limit=50).runs
                  if r.run_id in str(failed.value))  # fmt: skip
    ModelRegistry(world.settings.db_path).register("svc-later", backend="extractive", version="1", actor="test")
    resumed = radiology.resume(clinician, run_id)
    assert resumed.status == "paused"
    assert resumed.run_id == run_id
    steps = traces.trace(clinician, run_id).steps
    assert [(s.step, s.status) for s in steps] == [("plan", "error")] + [(s, "ok") for s in STEPS]
    generate = [e for e in _events(world, "generate") if e.detail.get("run_id") == run_id]
    assert generate[-1].detail["resumed"] is True


# --------------------------------------------------------------------------------------------- refusals (audited)


def test_workflow_refusals_are_audited_and_store_nothing(world: World) -> None:
    clinician = _session(world, "clinician", "treatment")
    paused = radiology.draft(clinician, indication="Shortness of breath")
    runs_before = _runs(world)

    before = len(_events(world, "generate"))
    with pytest.raises(PolicyViolation, match="may not generate"):
        radiology.draft(_session(world, "data_steward", "operations"), indication="Cough")
    assert _denied(world, "generate", "data_steward", before)
    assert _runs(world) == runs_before  # refused before a run exists

    before = len(_events(world, "review"))
    with pytest.raises(PolicyViolation, match="may not review"):
        radiology.review(_session(world, "researcher", "research"), paused.run_id, approve=True)
    assert _denied(world, "review", "researcher", before)
    assert traces.trace(clinician, paused.run_id).run.status == "paused"

    before = len(_events(world, "generate"))
    with pytest.raises(PolicyViolation, match="may not generate"):
        radiology.resume(_session(world, "data_steward", "operations"), paused.run_id)
    assert _denied(world, "generate", "data_steward", before)
    # a researcher may draft, but a resumed run shows its persisted (identified) steps: refused, audited
    before = len(_events(world, "read"))
    with pytest.raises(PolicyViolation, match="traces hold identified data"):
        radiology.resume(_session(world, "researcher", "research"), paused.run_id)
    (refusal,) = _denied(world, "read", "researcher", before)
    assert refusal.detail["what"] == "resume"
    assert refusal.detail["run_id"] == paused.run_id

    with pytest.raises(PolicyViolation, match="signed by the acting principal"):
        radiology.review(clinician, paused.run_id, approve=True, signer="dr-somebody-else")
    assert traces.trace(clinician, paused.run_id).run.status == "paused"


@pytest.mark.parametrize(("principal", "purpose"), [("researcher", "research"), ("admin", "operations")])
def test_traces_are_identified_data_one_rule_audited(world: World, principal: str, purpose: str) -> None:
    clinician = _session(world, "clinician", "treatment")
    run_id = radiology.draft(clinician, indication="Chest pain").run_id
    reader = _session(world, principal, purpose)
    before = len(_events(world, "read"))
    with pytest.raises(PolicyViolation, match="traces hold identified data"):
        traces.trace(reader, run_id)
    with pytest.raises(PolicyViolation, match="traces hold identified data"):
        traces.list_runs(reader)
    denied = _denied(world, "read", principal, before)
    assert [e.detail["what"] for e in denied] == ["trace", "runs"]
    assert all(e.detail["denied"] == traces.IDENTIFIED_ONLY for e in denied)
    assert denied[0].detail["trace"] == run_id
    assert all(e.detail["channel"] == "cli" for e in denied)
    assert all(e.record_ids == () for e in denied)  # a refusal names no record
    steward = _session(world, "data_steward", "operations")  # identified view: may read traces
    assert [s.step for s in traces.trace(steward, run_id).steps] == STEPS


def test_trace_refusal_from_the_cli_and_the_api_is_the_same_rule_audited_per_channel(world: World) -> None:
    from sage_health.interfaces.api import create_app
    from sage_health.interfaces.cli import app

    run_id = radiology.draft(_session(world, "clinician", "treatment"), indication="Fever").run_id
    store = str(world.settings.store)
    before = len(_events(world, "read"))
    result = CliRunner().invoke(
        app, ["trace", run_id, "--store", store, "--as", "researcher", "--purpose", "research"], env={}
    )
    assert result.exit_code == 1
    assert "traces hold identified data" in " ".join(result.output.split())
    assert "retrieve" not in result.output  # nothing of the trace is shown

    # the API, with a real bearer token (a separate store: issuing a token switches authentication on)
    api_root = world.root / "api-store"
    shutil.copytree(world.settings.store, api_root)
    api_settings = world.settings.model_copy(update={"store": api_root})
    policy = PolicyEngine(api_settings.db_path)
    identity = IdentityStore(api_settings.db_path, policy)
    admin = policy.access("admin", "operations")
    identity.create("admin", by=admin)
    token = identity.create("researcher", by=admin)
    client = TestClient(create_app(api_settings))
    response = client.get(
        f"/v1/runs/{run_id}", headers={"Authorization": f"Bearer {token.token}", "X-Sage-Purpose": "research"}
    )
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "PolicyViolation"
    assert "traces hold identified data" in response.json()["error"]["message"]

    cli_denied = _denied(world, "read", "researcher", before)
    assert [e.detail["channel"] for e in cli_denied] == ["cli"]
    api_denied = [e for e in AuditLog.for_settings(api_settings).events(action="read")
                  if e.detail.get("outcome") == "denied" and e.detail.get("channel") == "api"]  # fmt: skip
    assert len(api_denied) == 1
    assert api_denied[0].detail["denied"] == traces.IDENTIFIED_ONLY
    assert api_denied[0].detail["token_id"] == token.info.id
    assert token.token not in json.dumps(api_denied[0].detail)


def test_evaluation_and_coevolution_refusals_are_audited(world: World, tmp_path: Path, data_dir: Path) -> None:
    files = _report_files(data_dir, tmp_path, train=5, test=2)
    clinician = _session(world, "clinician", "treatment")
    before = len(_events(world, "evaluate"))
    with pytest.raises(PolicyViolation, match="may not evaluate"):
        radiology.evaluate(clinician, train=files["train"], test=files["test"], baseline=None)
    assert _denied(world, "evaluate", "clinician", before)
    assert not (world.settings.store / "evals" / "radiology").exists()

    before = len(_events(world, "snapshot"))
    with pytest.raises(PolicyViolation, match="may not snapshot"):
        coevolve.run_cycle(clinician, LoopOptions(eval_file=files["test"], dry_run=True))
    assert _denied(world, "snapshot", "clinician", before)

    before = len(_events(world, "evaluate"))
    with pytest.raises(PolicyViolation, match="may not evaluate"):
        coevolve.history(clinician)
    assert _denied(world, "evaluate", "clinician", before)

    # a researcher may draft but not sign: the replay is refused before the first draft
    runs_before = _runs(world)
    before = len(_events(world, "review"))
    with pytest.raises(PolicyViolation, match="may not review"):
        coevolve.replay(_session(world, "researcher", "research"), train_file=files["train"], limit=2)
    assert _denied(world, "review", "researcher", before)
    assert _runs(world) == runs_before


# --------------------------------------------------------------------------------------------- evaluation, loop


def _report_files(data_dir: Path, tmp_path: Path, *, train: int, test: int) -> dict[str, Path]:
    lines = (data_dir / "iu_xray" / "reports.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(ln) for ln in lines[200:] if json.loads(ln).get("findings") and json.loads(ln).get("impression")]
    paths = {"train": tmp_path / "train.jsonl", "test": tmp_path / "test.jsonl"}
    paths["train"].write_text("\n".join(json.dumps(r) for r in rows[:train]) + "\n", encoding="utf-8")
    paths["test"].write_text("\n".join(json.dumps(r) for r in rows[train : train + test]) + "\n", encoding="utf-8")
    return paths


def test_evaluate_runs_the_workflow_on_the_files_and_audits_their_hashes(
    world: World, tmp_path: Path, data_dir: Path
) -> None:
    files = _report_files(data_dir, tmp_path, train=20, test=2)
    steward = _session(world, "data_steward", "operations")
    ticks: list[tuple[str, int, int]] = []
    result = radiology.evaluate(
        steward,
        train=files["train"],
        test=files["test"],
        model="extractive@1",
        baseline="",
        out_dir=tmp_path / "evals",
        on_progress=lambda system, done, total: ticks.append((system, done, total)),
    )
    (system,) = result.systems
    assert system.ref == "extractive@1"
    assert ticks == [("extractive@1", 1, 2), ("extractive@1", 2, 2)]
    workflow = system.outcome.run.metrics["workflow"]
    assert isinstance(workflow, dict)
    assert workflow["n_studies"] == 2
    assert workflow["memory_reports"] == 20
    payload = result.as_dict()
    assert payload["systems"][0]["model"] == "extractive@1"
    assert "R2Gen" in payload["comparison_markdown"]
    event = _events(world, "evaluate")[-1]
    assert event.principal == "data_steward"
    assert event.detail["task"] == "radiology"
    assert event.detail["train_sha256"] == sha256_file(files["train"])
    assert event.detail["test_sha256"] == sha256_file(files["test"])
    assert str(tmp_path) not in json.dumps(event.detail)  # file hashes, never paths


def test_replay_dry_run_and_history_through_the_services(world: World, tmp_path: Path, data_dir: Path) -> None:
    files = _report_files(data_dir, tmp_path, train=3, test=3)
    seen: list[tuple[int, int]] = []
    replayed = coevolve.replay(
        _session(world, "clinician", "treatment"),
        train_file=files["train"],
        on_progress=lambda n, total: seen.append((n, total)),
    )
    assert replayed.replayed == 3
    assert replayed.edited + replayed.approved == 3
    assert not replayed.problems
    assert seen == [(1, 3), (2, 3), (3, 3)]
    again = coevolve.replay(_session(world, "clinician", "treatment"), train_file=files["train"])
    assert again.already == 3
    assert again.replayed == 0

    admin = _session(world, "admin", "operations")
    dry = coevolve.run_cycle(admin, LoopOptions(eval_file=files["test"], dry_run=True), on_progress=lambda m: None)
    assert dry.status == "dry-run"
    assert dry.inputs["new_feedback_events"] >= 3
    assert dry.reasons == ["dry run: nothing written"]
    with pytest.raises(AttributeError):
        dry.status = "promoted"  # type: ignore[misc]  # a cycle record is a frozen result
    found = coevolve.history(admin)
    assert found.cycles == ()  # a dry run records nothing
    assert found.plot is None
    assert found.as_dict() == {"cycles": [], "plot": None}
    event = _events(world, "evaluate")[-1]
    assert event.principal == "admin"
    assert event.detail["coevolve_history"] == "all"
    assert event.detail["cycles"] == 0


# --------------------------------------------------------------------------------------------- erasure hook


def test_the_coevolve_erasure_hook_scrubs_the_training_copies_and_the_replay_ledger(
    world: World, tmp_path: Path, data_dir: Path
) -> None:
    s = world.settings
    assert any(isinstance(h, CoevolveErasureHook) for h in erasure_hooks(s))  # registered in the one place
    clinician = _session(world, "clinician", "treatment")
    # the patient's study, signed: the signed report belongs to the patient and feeds the loop's snapshot
    mine = radiology.draft(clinician, indication="Cough and shortness of breath", patient_id=world.patient_id)
    signed = radiology.review(clinician, mine.run_id, approve=True, edited=EDITED)
    assert signed.record_id is not None
    files = _report_files(data_dir, tmp_path, train=2, test=1)
    coevolve.replay(clinician, train_file=files["train"])

    admin = _session(world, "admin", "operations")
    snap = create_snapshot(admin.governed(), s, "coevolve-impression", "DiagnosticReport:sage-radiology",
                           task="impression", split="100/0/0", seed=0, deid=True)  # fmt: skip
    first = snapshot_as_train_file(snap, "impression", cycle_dir(s, "impression", 1) / train_file_name("impression"))
    rows = [json.loads(line) for line in first.read_text(encoding="utf-8").splitlines()]
    assert signed.record_id in {r["uid"] for r in rows}
    assert len(rows) >= 3
    only_mine = cycle_dir(s, "impression", 2) / train_file_name("impression")
    only_mine.parent.mkdir(parents=True)
    only_mine.write_text(json.dumps(next(r for r in rows if r["uid"] == signed.record_id)) + "\n", encoding="utf-8")

    steward = _session(world, "data_steward", "operations")
    record_ids = tuple(sorted(steward.governed().record_ids_of(world.patient_id)))
    assert signed.record_id in record_ids
    scope = ErasureScope(patient_id=world.patient_id, record_ids=record_ids, tainted=(),
                         reason_sha256=sha256_text("patient request"))  # fmt: skip
    hook = CoevolveErasureHook(s)
    report = hook.erase(scope)
    assert report.hook == "coevolve"
    assert report.removed == {"training_items": 2, "training_files_scrubbed": 1, "training_files_deleted": 1}
    assert set(report.files_sha256) == {sha256_text(str(first.resolve())), sha256_text(str(only_mine.resolve()))}
    assert str(s.store) not in repr(report)  # counts and hashes, never paths
    left = [json.loads(line) for line in first.read_text(encoding="utf-8").splitlines()]
    assert [r["uid"] for r in left] == [r["uid"] for r in rows if r["uid"] != signed.record_id]
    assert not only_mine.exists()
    assert hook.erase(scope).removed == {}  # idempotent
    assert hook.erase(scope).files_sha256 == ()

    # a replayed study whose signed report is erased leaves the replay ledger too
    ledger = replay_ledger(s.db_path)
    study, run = sorted(ledger.items())[0]
    victim = f"sage-radiology/DiagnosticReport/{run}"
    assert victim in {r["uid"] for r in left}  # replayed reports were in the snapshot too
    ledger_scope = ErasureScope(patient_id="-", record_ids=(victim,), tainted=(), reason_sha256=sha256_text("x"))
    assert hook.erase(ledger_scope).removed == {"training_items": 1, "training_files_scrubbed": 1,
                                                "replay_ledger_rows": 1}  # fmt: skip
    assert study not in replay_ledger(s.db_path)
    assert study not in replayed_studies(agent_context(clinician))  # the next replay drafts it again
    assert hook.erase(ledger_scope).removed == {}


def test_erasing_the_patient_through_the_service_scrubs_the_loops_training_copy(world: World) -> None:
    """Runs last in this module: the patient is gone afterwards."""
    s = world.settings
    clinician = _session(world, "clinician", "treatment")
    mine = radiology.draft(clinician, indication="Fever and productive cough", patient_id=world.patient_id)
    signed = radiology.review(clinician, mine.run_id, approve=True, edited=EDITED)
    admin = _session(world, "admin", "operations")
    snap = create_snapshot(admin.governed(), s, "coevolve-impression", "DiagnosticReport:sage-radiology",
                           task="impression", split="100/0/0", seed=0, deid=True)  # fmt: skip
    copy = snapshot_as_train_file(snap, "impression", cycle_dir(s, "impression", 9) / train_file_name("impression"))
    kept = [json.loads(line)["uid"] for line in copy.read_text(encoding="utf-8").splitlines()]
    assert signed.record_id in kept

    steward = _session(world, "data_steward", "operations")
    patients = steward.governed().record_ids_of(world.patient_id)
    theirs = [uid for uid in kept if uid in patients]
    assert signed.record_id in theirs
    result = erasure.erase(steward, world.patient_id, reason="patient request")
    (report,) = [r for r in result.hooks if r.hook == "coevolve"]
    assert report.removed["training_items"] >= len(theirs)
    assert sha256_text(str(copy.resolve())) in report.files_sha256
    assert sha256_text(str(copy.resolve())) in result.files_sha256
    left = [json.loads(line)["uid"] for line in copy.read_text(encoding="utf-8").splitlines()]
    assert signed.record_id not in left
    assert left == [uid for uid in kept if uid not in patients]
    done = [e for e in _events(world, "erase") if e.detail.get("outcome") == "ok"][-1]
    assert str(s.store) not in json.dumps(done.detail)  # the audit names the files by hash only
