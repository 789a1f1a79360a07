"""The model-layer use cases (services.models / generation / training / evaluations) called directly on a real
SQLite store, and the registry's erasure and lineage hooks: registry governance, tainted versions (demoted, never
served, never rolled back to, inherited by adapters continued from them), the planner's fallback, training refused
on a snapshot holding patients who opted out since, and one audited denial per use-case family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sage_health.agents.base import AgentContext
from sage_health.agents.planner import Planner, PlannerInput
from sage_health.core.config import Settings
from sage_health.core.errors import AgentError, PolicyViolation, RegistryError
from sage_health.core.provenance import Provenance
from sage_health.data.datasets import create_snapshot
from sage_health.data.embed import MiniLMEmbedder
from sage_health.data.governance.audit import AuditEvent, AuditLog
from sage_health.data.governance.hooks import ErasureScope
from sage_health.data.governance.lineage import LineageStore, model_node
from sage_health.data.governance.policy import Action, PolicyEngine
from sage_health.data.schema import DiagnosticReport, ReportSections
from sage_health.data.store.sqlite import SqliteDocumentStore
from sage_health.interfaces.cli import app
from sage_health.models.generation.base import ChatMessage, GenerationParams
from sage_health.models.registry import ModelRegistry
from sage_health.models.registry_hooks import RegistryErasureHook, RegistryLineageHook
from sage_health.models.training_rules import snapshot_for_training
from sage_health.services import evaluations, generation, models, training
from sage_health.services.hooks import erasure_hooks, lineage_hooks
from sage_health.services.session import Credentials, Session, open_session

pytestmark = pytest.mark.integration

ROLES = {"admin": "operations", "researcher": "research", "clinician": "treatment", "data_steward": "operations"}
SNAP = "iu-imp@0123456789abcdef"
TAINT_REASON = "built from records of an erased patient (test)"


@pytest.fixture
def settings(tmp_path: Path, data_dir: Path) -> Settings:
    return Settings(store=tmp_path / "store", data_dir=data_dir, generator="extractive")


def _session(settings: Settings, who: str) -> Session:
    return open_session(settings, Credentials(principal=who, purpose=ROLES[who]))


def _last(settings: Settings, action: str) -> AuditEvent:
    return AuditLog.for_settings(settings).events(action=action)[-1]


def _taint(settings: Settings, node: str) -> None:
    LineageStore(settings.db_path).taint([node], TAINT_REASON)


def _scope(*tainted: str) -> ErasureScope:
    return ErasureScope(patient_id="p", record_ids=(), tainted=tainted, reason_sha256="ab" * 32)


# ---------------------------------------------------------------------------------------------- registry


def test_registry_use_cases_decide_audit_and_refuse_impostors(settings: Settings) -> None:
    admin = _session(settings, "admin")
    first = models.register_model(admin, "cxr", backend="extractive")
    assert (first.ref, first.taint) == ("cxr@1", None)
    event = _last(settings, "train")
    assert (event.principal, event.detail["model"], event.detail["registered"]) == ("admin", "cxr@1", True)
    with pytest.raises(PolicyViolation, match="--by 'bob' differs from the acting principal 'admin'"):
        models.register_model(admin, "cxr", backend="extractive", by="bob")
    assert models.promote_model(admin, "cxr@1", reason="baseline").version.stage == "production"
    assert _last(settings, "promote").detail == {
        "outcome": "ok", "model": "cxr@1", "stage": "production", "channel": "cli"
    }  # fmt: skip

    researcher = _session(settings, "researcher")
    with pytest.raises(PolicyViolation, match="promote"):
        models.promote_model(researcher, "cxr@1")
    denied = _last(settings, "promote")
    assert (denied.principal, denied.detail["outcome"]) == ("researcher", "denied")
    clinician = _session(settings, "clinician")
    with pytest.raises(PolicyViolation, match="train"):
        models.register_model(clinician, "cxr", backend="extractive")
    assert _last(settings, "train").detail["outcome"] == "denied"

    listed = {e.ref for e in models.list_models(clinician)}
    assert {"cxr@1", "extractive@1", "smollm2@q4_1-gguf"} <= listed
    shown = models.show_model(clinician, "cxr")
    assert shown.entry.ref == "cxr@1"
    assert [e.action for e in shown.events] == ["register", "promote"]
    # a purpose the role may not act for reads nothing, not even model metadata (and the denial is audited)
    # (refused when the session opens: no use case runs for a purpose the role may not act for)
    with pytest.raises(PolicyViolation, match="may not act for purpose 'research'"):
        open_session(settings, Credentials(principal="clinician", purpose="research"))
    refused = _last(settings, "purpose")
    assert (refused.principal, refused.purpose, refused.detail["outcome"]) == ("clinician", "research", "denied")

    models.register_model(admin, "cxr", backend="extractive")
    archived = models.archive_model(admin, "cxr@2", reason="superseded")
    assert archived.version.stage == "archived"
    with pytest.raises(RegistryError, match="already archived"):
        models.archive_model(admin, "cxr@2")
    assert _last(settings, "promote").detail["outcome"] == "refused"


def test_rollback_refuses_a_tainted_version_with_a_clear_error(settings: Settings) -> None:
    admin = _session(settings, "admin")
    reg = ModelRegistry(settings.db_path)
    reg.register("m", backend="extractive", dataset_snapshot_id=SNAP, actor="admin")
    reg.register("m", backend="extractive", actor="admin")
    models.promote_model(admin, "m@1")
    models.promote_model(admin, "m@2")
    _taint(settings, f"snapshot:{SNAP}")
    with pytest.raises(RegistryError, match=rf"refusing to roll m back to m@1: it is tainted \(snapshot {SNAP}: "):
        models.rollback_model(admin, "m")
    refused = _last(settings, "promote")
    assert refused.detail["outcome"] == "refused"
    assert refused.detail["op"] == "rollback"
    assert reg.production("m") is not None
    assert reg.production("m").ref == "m@2"  # type: ignore[union-attr]

    env = {"SAGE_PRINCIPAL": "admin", "SAGE_PURPOSE": "operations"}
    result = CliRunner().invoke(app, ["models", "rollback", "m", "--store", str(settings.store)], env=env)
    assert result.exit_code == 1
    assert "refusing to roll m back to m@1: it is tainted" in " ".join(result.output.split())
    listed = CliRunner().invoke(app, ["models", "list", "m", "--json", "--store", str(settings.store)], env=env)
    assert listed.exit_code == 0, listed.output
    taints = {m["ref"]: m["tainted"] for m in json.loads(listed.stdout)}
    assert taints["m@2"] is None
    assert taints["m@1"] is not None
    assert TAINT_REASON in taints["m@1"]


# ---------------------------------------------------------------------------------------------- taint


def test_taint_propagates_to_adapters_continued_from_a_tainted_parent(settings: Settings) -> None:
    reg = ModelRegistry(settings.db_path)
    reg.register("lora", backend="extractive", dataset_snapshot_id=SNAP, actor="t")
    reg.register("lora", backend="extractive", config={"parent": "lora@1"}, dataset_snapshot_id="iu-b@1111", actor="t")
    reg.register("lora", backend="extractive", config={"parent": "lora@2"}, dataset_snapshot_id="iu-c@2222", actor="t")
    reg.register("other", backend="extractive", dataset_snapshot_id="iu-c@2222", actor="t")
    assert all(reg.taint(v) is None for v in reg.list_versions())
    _taint(settings, f"snapshot:{SNAP}")
    child, grandchild = reg.get("lora", "2"), reg.get("lora", "3")
    assert reg.taint(child) == f"continued from lora@1, which is tainted: snapshot {SNAP}: {TAINT_REASON}"
    assert (reg.taint(grandchild) or "").startswith("continued from lora@2, which is tainted: continued from lora@1")
    assert reg.taint(reg.get("other", "1")) is None

    # the erasure hook makes the inherited taint explicit (so lineage and `models list` show it), transitively
    hook = RegistryErasureHook(settings.db_path)
    report = hook.erase(_scope(f"snapshot:{SNAP}"))
    assert report.removed == {"model_versions_tainted": 3, "production_demoted": 0}
    lineage = LineageStore(settings.db_path)
    for version in ("1", "2", "3"):
        mark = lineage.taint_of(model_node("lora", version))
        assert mark is not None
        assert "erased patient (erasure reason sha256 abababababab)" in mark.reason
    assert lineage.taint_of(model_node("other", "1")) is None
    again = hook.erase(_scope(f"snapshot:{SNAP}"))  # idempotent
    assert again.removed == {"model_versions_tainted": 0, "production_demoted": 0}


def test_erasure_hook_demotes_tainted_production_which_stops_serving(settings: Settings) -> None:
    admin = _session(settings, "admin")
    reg = ModelRegistry(settings.db_path)
    reg.register("cxr", backend="extractive", actor="admin")
    reg.register("cxr", backend="extractive", dataset_snapshot_id=SNAP, actor="admin")
    reg.register("solo", backend="extractive", dataset_snapshot_id=SNAP, actor="admin")
    for ref in ("cxr@1", "cxr@2", "solo@1"):
        models.promote_model(admin, ref)
    _taint(settings, f"snapshot:{SNAP}")
    pool = admin.pool()
    with pytest.raises(RegistryError, match=r"cxr@2 is tainted \(snapshot .*\) and no longer serves"):
        pool.get("cxr")  # production is tainted: a bare name does not fall back silently
    messages = [ChatMessage(role="user", content="Findings: clear lungs. Impression?")]
    with pytest.raises(RegistryError, match="no longer serves"):
        generation.complete(admin, messages, model="cxr@2", params=GenerationParams(max_new_tokens=8))
    failed = _last(settings, "generate")
    assert (failed.detail["outcome"], failed.detail["error"]) == ("failed", "RegistryError")

    report = RegistryErasureHook(settings.db_path).erase(_scope(f"snapshot:{SNAP}"))
    assert report.removed["production_demoted"] == 2
    assert set(report.notes) == {"demoted cxr@2; cxr@1 is production again", "demoted solo@1; no production left"}
    assert reg.production("cxr") is not None
    assert reg.production("cxr").ref == "cxr@1"  # type: ignore[union-attr]
    assert reg.get("cxr", "2").stage == "archived"
    assert reg.production("solo") is None
    assert [(e.version, e.action) for e in reg.events("cxr")][-2:] == [("2", "demote"), ("1", "restore")]
    served = generation.complete(admin, messages, model="cxr", params=GenerationParams(max_new_tokens=8))
    assert served.model_ref == "cxr@1"
    with pytest.raises(RegistryError, match="refusing to promote cxr@2: it is tainted"):
        models.promote_model(admin, "cxr@2")
    assert RegistryErasureHook(settings.db_path).erase(_scope(f"snapshot:{SNAP}")).removed["production_demoted"] == 0
    assert any(isinstance(h, RegistryErasureHook) for h in erasure_hooks(settings))
    assert any(isinstance(h, RegistryLineageHook) for h in lineage_hooks(settings))


def test_planner_skips_a_tainted_production_version_and_says_why(settings: Settings) -> None:
    admin = _session(settings, "admin")
    reg = ModelRegistry(settings.db_path)
    reg.register("extractive", backend="extractive", version="2", dataset_snapshot_id=SNAP, actor="admin")
    models.promote_model(admin, "extractive@2")
    ctx = AgentContext.create(settings, admin.governed(must_exist=False))
    before = Planner().run(PlannerInput(task="radiology_report"), ctx)
    assert before.model_ref == "extractive@2"
    _taint(settings, f"snapshot:{SNAP}")
    after = Planner().run(PlannerInput(task="radiology_report"), ctx)
    assert after.model_ref == "extractive@1"
    assert after.notes[0] == (
        f"writer model extractive@1: production version extractive@2 of 'extractive' is tainted (snapshot {SNAP}: "
        f"{TAINT_REASON}), not used; using candidate extractive@1"
    )
    with pytest.raises(AgentError, match="the requested model extractive@2 is tainted"):
        Planner().run(PlannerInput(task="radiology_report", model="extractive@2"), ctx)
    # a tainted image model does not serve either: the newest untainted candidate does, else none
    reg.register("cxr-densenet121", backend="monai-densenet121", version="a", actor="t")
    reg.register("cxr-densenet121", backend="monai-densenet121", version="b", actor="t")
    models.promote_model(admin, "cxr-densenet121@b")
    _taint(settings, "model:cxr-densenet121@b")  # e.g. an erased patient's image trained it (record -> model edge)
    imaging = Planner().run(PlannerInput(task="radiology_report", has_images=True), ctx)
    assert imaging.image_model_ref == "cxr-densenet121@a"
    assert "production version cxr-densenet121@b is tainted" in imaging.notes[-1]


def test_registry_lineage_hook_edges(settings: Settings) -> None:
    reg = ModelRegistry(settings.db_path)
    reg.register("lora", backend="extractive", dataset_snapshot_id=SNAP, actor="t")
    reg.register("lora", backend="extractive", config={"parent": "lora@1"}, dataset_snapshot_id=SNAP, actor="t")
    reg.register("img", backend="monai-densenet121", dataset_snapshot_id="image-records:abcd", actor="t")
    hook = RegistryLineageHook(settings.db_path)
    assert hook.neighbours("model:lora@1", up=True) == [(f"snapshot:{SNAP}", "trained on", "")]
    assert hook.neighbours("model:lora@2", up=True) == [
        (f"snapshot:{SNAP}", "trained on", ""),
        ("model:lora@1", "continued from", ""),
    ]
    assert hook.neighbours("model:lora@1", up=False) == [("model:lora@2", "continued as", "candidate")]
    assert hook.neighbours(f"snapshot:{SNAP}", up=False) == [
        ("model:lora@1", "trained", "candidate"),
        ("model:lora@2", "trained", "candidate"),
    ]
    assert hook.neighbours("model:img@1", up=True) == []  # its records are explicit lineage edges
    assert hook.neighbours("record:x", up=True) == []
    assert hook.neighbours("model:nope@1", up=False) == []


# ---------------------------------------------------------------------------------------------- training


def _report(i: int, patient: str | None) -> DiagnosticReport:
    return DiagnosticReport(
        id=f"test/DiagnosticReport/r{i}",
        source="test",
        patient_id=patient,
        report_sections=ReportSections(
            findings=f"The heart size is normal. Study number {i} shows clear lungs.",
            impression="No acute cardiopulmonary abnormality.",
        ),
        provenance=Provenance(source_file="reports.jsonl"),
    )


def test_lora_training_refuses_a_snapshot_holding_patients_who_opted_out_since(
    settings: Settings, embedder: MiniLMEmbedder
) -> None:
    patients = [f"test/Patient/p{i}" for i in range(4)]
    with SqliteDocumentStore(settings.db_path, embedder) as raw:
        raw.write([_report(i, patients[i % 4]) for i in range(12)])
    steward = _session(settings, "data_steward")
    snap = create_snapshot(steward.governed(), settings, "opt", "DiagnosticReport:test", task="impression", deid=True)
    admin = _session(settings, "admin")
    request = training.LoraRequest(snapshot=snap.ref, base="/nonexistent-base", steps=1)
    ok = snapshot_for_training(admin.governed().acting(Action.TRAIN), settings, snap.ref)
    assert ok.ref == snap.ref  # nothing stands in the way before the opt-out

    engine = PolicyEngine(settings.db_path)
    engine.record_consent(patients[1], "opt_out", by=engine.access("data_steward", "operations"))
    with pytest.raises(PolicyViolation, match=rf"snapshot {snap.ref} holds records of 1 patient\(s\) who opted out"):
        training.train_lora_adapter(admin, request)
    denied = _last(settings, "train")
    assert (denied.principal, denied.detail["outcome"], denied.detail["snapshot"]) == ("admin", "denied", snap.ref)
    assert not (settings.models_dir / "lora-runs").exists()
    assert ModelRegistry(settings.db_path).list_versions("lora-impression") == []
    # a fresh snapshot leaves the opted-out patient out, and passes the check
    fresh = create_snapshot(steward.governed(), settings, "opt2", "DiagnosticReport:test", task="impression", deid=True)
    assert fresh.counts["patients"] == 3
    assert snapshot_for_training(admin.governed().acting(Action.TRAIN), settings, fresh.ref).ref == fresh.ref

    clinician = _session(settings, "clinician")
    with pytest.raises(PolicyViolation, match="train"):
        training.train_lora_adapter(clinician, request)
    assert _last(settings, "train").principal == "clinician"


# ---------------------------------------------------------------------------------------------- evaluations


def test_evaluations_decide_audit_hashes_not_paths(settings: Settings, data_dir: Path) -> None:
    clinician = _session(settings, "clinician")
    with pytest.raises(PolicyViolation, match="evaluate"):
        evaluations.evaluate_labeler(clinician)
    assert _last(settings, "evaluate").detail["outcome"] == "denied"

    admin = _session(settings, "admin")
    file = data_dir / "pubmedqa" / "ori_pqal_dev.json"
    if not file.is_file():
        file = next((data_dir / "pubmedqa").glob("ori_pqal*.json"))
    outcome = evaluations.evaluate_qa(
        admin, file=file, fmt="pubmedqa", model="extractive", retrieval=True, limit=4, out_dir=settings.store / "ev"
    )
    assert outcome.run.metrics["qa"]["n_items"] == 4
    event = _last(settings, "evaluate")
    assert (event.detail["model"], event.detail["eval_set"]) == ("extractive@1", outcome.eval_set)
    assert len(event.detail["test_sha256"]) == 64
    assert file.name not in json.dumps(event.detail)
    assert ModelRegistry(settings.db_path).get("extractive", "1").metrics_for(outcome.eval_set) is not None


def test_generation_is_decided_and_audited_by_hash(settings: Settings) -> None:
    steward = _session(settings, "data_steward")
    messages = [ChatMessage(role="user", content="Findings: clear lungs. Impression?")]
    with pytest.raises(PolicyViolation, match="generate"):
        generation.complete(steward, messages, model="extractive")
    assert _last(settings, "generate").detail["outcome"] == "denied"
    clinician = _session(settings, "clinician")
    done = generation.complete(clinician, messages, model="extractive", params=GenerationParams(max_new_tokens=16))
    assert done.model_ref == "extractive@1"
    assert done.generation.text
    event = _last(settings, "generate")
    assert (event.principal, event.detail["model"], event.detail["outcome"]) == ("clinician", "extractive@1", "ok")
    assert event.query_sha256 is not None
    streamed = generation.stream(clinician, messages, model="extractive", params=GenerationParams(max_new_tokens=16))
    assert "".join(streamed.pieces).strip() == done.generation.text.strip()
