"""The co-evolution loop end to end on a real store, real replayed IU X-ray feedback and the tiny local causal LM:
replay → snapshot → LoRA candidate → evaluation on a fixed set → paired-bootstrap decision → registry + audit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sage_health.agents.base import AgentContext
from sage_health.agents.planner import Planner, PlannerInput
from sage_health.apps.coevolve.loop import LoopOptions, history, loop_state, run_cycle
from sage_health.apps.coevolve.replay import replay_studies
from sage_health.core.config import Settings
from sage_health.core.errors import CoevolutionError
from sage_health.data.governance.access import open_governed
from sage_health.data.governance.audit import AuditLog
from sage_health.data.governance.lineage import LineageStore
from sage_health.data.store.factory import open_store
from sage_health.interfaces.cli import app
from sage_health.models.evaluation.harness import ReportStudy, load_report_file, write_r2gen_splits
from sage_health.models.registry import ModelRegistry

MODEL = "tiny-writer"


@pytest.fixture(scope="module")
def splits(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("r2gen")
    paths = write_r2gen_splits(
        data_dir / "iu_xray" / "reports.jsonl", data_dir / "iu_xray" / "r2gen_annotation.json", out
    )
    val = [line for line in paths["val"].read_text(encoding="utf-8").splitlines() if line.strip()]
    usable = [line for line in val if json.loads(line).get("findings") and json.loads(line).get("impression")]
    (out / "eval.jsonl").write_text("\n".join(usable[:6]) + "\n", encoding="utf-8")
    return {**paths, "eval": out / "eval.jsonl"}


def _settings(tmp_path: Path, data_dir: Path, principal: str, purpose: str) -> Settings:
    return Settings(store=tmp_path / "store", data_dir=data_dir, principal=principal, purpose=purpose)


def _replay(tmp_path: Path, data_dir: Path, studies: list[ReportStudy], **kwargs: object) -> None:
    s = _settings(tmp_path, data_dir, "clinician", "treatment")
    with open_store(s, must_exist=False) as raw:
        ctx = AgentContext.create(s, open_governed(s, raw))
        result = replay_studies(ctx, ctx, studies, **kwargs)  # type: ignore[arg-type]
    assert not result.problems


def _cycle(tmp_path: Path, data_dir: Path, **kwargs: object):  # type: ignore[no-untyped-def]
    s = _settings(tmp_path, data_dir, "admin", "operations")
    opts = LoopOptions(**{"model": MODEL, "steps": 4, "batch_size": 2, "max_length": 768, **kwargs})  # type: ignore[arg-type]
    with open_store(s) as raw:
        return run_cycle(s, open_governed(s, raw), opts)


def test_loop_cycle_registers_evaluates_decides_and_audits(
    tmp_path: Path, data_dir: Path, tiny_lm_dir: Path, splits: dict[str, Path]
) -> None:
    train = [s for s in load_report_file(splits["train"]) if s.findings and s.impression]
    _replay(tmp_path, data_dir, train[:8], reject_ids={train[7].id})
    base = str(tiny_lm_dir)

    with pytest.raises(CoevolutionError, match="--eval-file"):
        _cycle(tmp_path, data_dir, base=base)

    dry = _cycle(tmp_path, data_dir, base=base, eval_file=splits["eval"], dry_run=True)
    assert dry.status == "dry-run"
    assert dry.inputs["new_feedback_events"] == 8
    assert loop_state(_settings(tmp_path, data_dir, "admin", "operations"), "impression") is None  # nothing written

    rec = _cycle(tmp_path, data_dir, base=base, eval_file=splits["eval"])
    assert rec.inputs["approved"] + rec.inputs["edited"] == 7
    assert rec.inputs["rejected"] == 1
    assert rec.inputs["snapshot_train_items"] == 7
    assert rec.inputs["memory_retrievable"] == 7
    assert rec.production_before == f"{MODEL}@base"
    assert rec.status in ("promoted", "kept")
    assert rec.decision["bootstrap"]["n_items"] == 6
    assert (rec.status == "promoted") == rec.decision["promote"]
    assert rec.candidate_metrics["rejected_recurrence"] is not None  # the rejected draft was used as a negative
    for key in ("rouge_l", "bleu_4", "ce_f1", "distinct_ratio", "verifier_flag_rate"):
        assert rec.candidate_metrics[key] is not None
        assert rec.production_metrics[key] is not None
    assert set(rec.timings) >= {"collect", "snapshot", "memory", "train", "evaluate", "decide"}

    s = _settings(tmp_path, data_dir, "admin", "operations")
    registry = ModelRegistry(s.db_path)
    cand = registry.resolve(str(rec.candidate_ref))
    assert cand.dataset_snapshot_id == rec.snapshot_ref
    assert cand.adapter_sha256
    assert cand.config.get("parent") is None  # production was the base model: trained from the base
    expected_prod = rec.candidate_ref if rec.status == "promoted" else f"{MODEL}@base"
    prod = registry.production(MODEL)
    assert prod is not None
    assert prod.ref == expected_prod
    audit = AuditLog.for_settings(s)
    actions = [e.action for e in audit.events()]
    assert "coevolve" in actions
    assert "train" in actions

    # nothing new: the next cycle is skipped, and says why
    again = _cycle(tmp_path, data_dir, base=base)
    assert again.status == "skipped"
    assert "nothing new" in again.reasons[0]

    # the evaluation set is fixed
    with pytest.raises(CoevolutionError, match="fixed"):
        _cycle(tmp_path, data_dir, base=base, eval_file=splits["train"])

    # new feedback that overlaps the evaluation set: the cycle trains but refuses to promote
    leaked = load_report_file(splits["eval"])[:1]
    _replay(tmp_path, data_dir, leaked)
    refused = _cycle(tmp_path, data_dir, base=base)
    assert refused.status == "refused"
    assert any("overlaps the training snapshot" in r for r in refused.reasons)
    still = registry.production(MODEL)
    assert still is not None
    assert still.ref == expected_prod

    recs = history(s, "impression")
    assert [r.status for r in recs][-2:] == ["skipped", "refused"]


def test_tainted_production_forces_a_retrain_from_the_base(
    tmp_path: Path, data_dir: Path, tiny_lm_dir: Path, splits: dict[str, Path]
) -> None:
    train = [s for s in load_report_file(splits["train"]) if s.findings and s.impression]
    _replay(tmp_path, data_dir, train[:6])
    base = str(tiny_lm_dir)
    first = _cycle(tmp_path, data_dir, base=base, eval_file=splits["eval"])
    s = _settings(tmp_path, data_dir, "admin", "operations")
    registry = ModelRegistry(s.db_path)
    cand = registry.resolve(str(first.candidate_ref))
    if first.status != "promoted":  # make the candidate production so its lineage matters
        registry.promote(cand.name, cand.version, actor="admin", reason="test: production with a snapshot")
    # an erasure taints every snapshot the erased records went into (tests/integration/test_governance.py)
    LineageStore(s.db_path).taint([f"snapshot:{first.snapshot_ref}"], "erasure of a patient (test)")
    assert registry.taint(registry.resolve(cand.ref)) is not None
    _replay(tmp_path, data_dir, train[6:8])
    second = _cycle(tmp_path, data_dir, base=base)
    assert second.inputs["production_tainted"]
    assert second.training["parent"] is None  # not initialised from the tainted adapter
    assert second.decision["min_gain"] == pytest.approx(-0.02)  # non-inferiority suffices to replace it
    new = registry.resolve(str(second.candidate_ref))
    assert registry.taint(new) is None


def test_cli_history_and_dry_run(tmp_path: Path, data_dir: Path, tiny_lm_dir: Path, splits: dict[str, Path]) -> None:
    train = [s for s in load_report_file(splits["train"]) if s.findings and s.impression]
    store = tmp_path / "store"
    env = {"SAGE_DATA_DIR": str(data_dir), "SAGE_PRINCIPAL": "clinician", "SAGE_PURPOSE": "treatment"}
    runner = CliRunner()
    subset = tmp_path / "train-subset.jsonl"
    lines = [json.dumps({"uid": s.id, "id": s.id, "indication": s.indication, "findings": s.findings,
                         "impression": s.impression}) for s in train[:4]]  # fmt: skip
    subset.write_text("\n".join(lines) + "\n", encoding="utf-8")
    res = runner.invoke(app, ["coevolve", "replay", "--train-file", str(subset), "--store", str(store)], env=env)
    assert res.exit_code == 0, res.output
    assert "replayed 4 studies" in res.output
    admin = {**env, "SAGE_PRINCIPAL": "admin", "SAGE_PURPOSE": "operations"}
    common = ["--store", str(store), "--model", MODEL, "--base", str(tiny_lm_dir), "--steps", "2", "--batch-size", "2",
              "--max-length", "768", "--eval-file", str(splits["eval"])]  # fmt: skip
    res = runner.invoke(app, ["coevolve", "--dry-run", "--json", *common], env=admin)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["status"] == "dry-run"
    res = runner.invoke(app, ["coevolve", *common], env=admin)
    assert res.exit_code == 0, res.output
    assert "co-evolution cycle 1" in res.output
    plot = tmp_path / "h.png"
    res = runner.invoke(app, ["coevolve", "history", "--store", str(store), "--plot", str(plot)], env=admin)
    assert res.exit_code == 0, res.output
    assert "cycle 1 (impression" in res.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a clinician may not run the loop (no train/promote for treatment)
    res = runner.invoke(app, ["coevolve", *common], env=env)
    assert res.exit_code == 1
    assert "may not" in res.output


def test_better_candidate_is_promoted_and_used_by_the_planner_then_a_no_gain_one_is_kept(
    tmp_path: Path, data_dir: Path, tiny_lm_dir: Path, splits: dict[str, Path]
) -> None:
    """Real differences, not constructed ones: the base tiny LM writes noise (ROUGE-L 0) on normal studies; an
    adapter trained on replayed normal reports learns the template and must be promoted; a second candidate trained
    a couple of tiny steps from that adapter is not better beyond noise and must be kept out."""
    normal = "no acute cardiopulmonary"
    train = [s for s in load_report_file(splits["train"]) if s.findings and s.impression.lower().startswith(normal)]
    val = [s for s in load_report_file(splits["val"]) if s.findings and s.impression.lower().startswith(normal)]
    eval_file = tmp_path / "eval-normal.jsonl"
    eval_file.write_text(
        "\n".join(json.dumps({"uid": s.id, "id": s.id, "findings": s.findings, "impression": s.impression})
                  for s in val[:8]) + "\n", encoding="utf-8",
    )  # fmt: skip
    _replay(tmp_path, data_dir, train[:16])
    base = str(tiny_lm_dir)
    first = _cycle(tmp_path, data_dir, base=base, eval_file=eval_file, steps=60, batch_size=4, learning_rate=2e-2)
    assert first.status == "promoted", first.reasons
    assert first.decision["bootstrap"]["ci_low"] > 0
    assert first.candidate_metrics["rouge_l"] > first.production_metrics["rouge_l"]
    assert first.training["mean_loss_last_10"] < first.training["first_loss"]

    s = _settings(tmp_path, data_dir, "clinician", "treatment").model_copy(update={"generator": MODEL})
    with open_store(s) as raw:
        ctx = AgentContext.create(s, open_governed(s, raw))
        plan = Planner().run(PlannerInput(task="radiology_report"), ctx)
    assert plan.model_ref == first.candidate_ref  # the Planner drafts with the loop's production model

    _replay(tmp_path, data_dir, train[16:18])
    second = _cycle(tmp_path, data_dir, base=base, steps=1, batch_size=1, learning_rate=1e-7)
    assert second.training["parent"] == first.candidate_ref  # trained from production's lineage
    assert second.status == "kept", second.reasons
    assert "not better beyond noise" in " ".join(second.reasons)
    registry = ModelRegistry(s.db_path)
    prod = registry.production(MODEL)
    assert prod is not None
    assert prod.ref == first.candidate_ref
    events = list(AuditLog.for_settings(s).events(action="promote"))
    assert any(first.candidate_ref in json.dumps(e.detail) for e in events)


def test_the_same_loop_runs_for_qa_with_pubmedqa_labels_as_feedback(
    tmp_path: Path, data_dir: Path, tiny_lm_dir: Path
) -> None:
    dev = json.loads((data_dir / "pubmedqa" / "ori_pqal_dev.json").read_text(encoding="utf-8"))
    keys = sorted(dev)
    feedback, heldout = tmp_path / "labelled.json", tmp_path / "heldout.json"
    feedback.write_text(json.dumps({k: dev[k] for k in keys[:10]}), encoding="utf-8")
    heldout.write_text(json.dumps({k: dev[k] for k in keys[10:16]}), encoding="utf-8")
    store = tmp_path / "store"
    steward = ["--store", str(store), "--as", "data_steward", "--purpose", "operations"]
    res = CliRunner().invoke(app, ["ingest", str(feedback), *steward], env={"SAGE_DATA_DIR": str(data_dir)})
    assert res.exit_code == 0, res.output
    rec = _cycle(tmp_path, data_dir, task="qa", model="tiny-qa", base=str(tiny_lm_dir), eval_file=heldout)
    assert rec.inputs["snapshot_train_items"] == 10
    assert rec.status in ("promoted", "kept")
    assert rec.decision["primary_metric"] == "correct"
    assert rec.decision["bootstrap"]["n_items"] == 6
    assert rec.candidate_metrics["accuracy"] is not None
    assert rec.production_metrics["qa_invalid_rate"] is not None
    # the held-out questions become "feedback" too: the next cycle must refuse to promote on them
    res = CliRunner().invoke(app, ["ingest", str(heldout), *steward], env={"SAGE_DATA_DIR": str(data_dir)})
    assert res.exit_code == 0, res.output
    refused = _cycle(tmp_path, data_dir, task="qa", model="tiny-qa", base=str(tiny_lm_dir))
    assert refused.status == "refused"
    assert any("overlaps the training snapshot" in r and "(6 items)" in r for r in refused.reasons), refused.reasons
