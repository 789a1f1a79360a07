"""The data-model co-evolution loop: feedback becomes data, data becomes a snapshot, the snapshot trains a candidate,
and the candidate replaces production only if it is better beyond noise on a fixed held-out set.

One cycle (:func:`run_cycle`, ``sage-health coevolve``), each step timed and recorded:

1. **collect** — the feedback events (radiologists' approvals, edits and rejections from the radiology workflow)
   newer than the last cycle's, and the task's records now in the store;
2. **snapshot** — the next version of the de-identified, consent-respecting snapshot ``coevolve-<task>`` (all
   items in ``train``: approved/edited reports are training targets); rejected drafts become negative examples,
   used only in evaluation (never written to disk: they are model text about a patient);
3. **memory** — approved reports were written to the store at review time with their chunks and embeddings, so
   they are retrievable as exemplars at once; the step checks that each one is, and counts them;
4. **train** — a LoRA candidate adapter on the snapshot, initialised from the production adapter (the production
   model's lineage) unless production is tainted, then from the base model; checkpoints make a re-run resume;
5. **evaluate** — candidate and production on the fixed evaluation set (fixed at the first cycle, path + sha256;
   refused if it overlaps the training snapshot): ROUGE-L, BLEU-4, CE-F1, distinct ratio, verifier flag rate and
   rejected-draft recurrence (:mod:`.decision`);
6. **decide** — :data:`.decision.RULE`; promotion goes through the registry's own gates (evaluation on production's
   sets, taint). When production itself is tainted the rule becomes non-inferiority (``min_gain`` =
   ``-TAINTED_MARGIN``): an erased patient's data must leave production even at equal quality;
7. **record** — the cycle (inputs, snapshot, candidate, metrics, bootstrap, decision, reasons, timings) in
   ``coevolve_cycles``, and the audit log (``coevolve`` and ``promote`` events).

A crash anywhere leaves nothing half-done that matters: the snapshot is content-addressed, training resumes from
its checkpoints, the candidate is found again by its adapter hash, and a cycle row is written only at the end.

The loop is split along its seams: :mod:`.spec` (tasks, options, work-file layout), :mod:`.records` (its tables,
the cycle record, the history plot), :mod:`.scoring` (evaluation of candidate and production), this module (the
cycle itself) and :mod:`.erasure` (the erasure hook for the cycles' training copies). The public names stay
importable from here.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from sage_health.apps.coevolve.decision import Decision, decide, paired_bootstrap, safety_checks
from sage_health.apps.coevolve.records import (
    CycleRecord,
    LoopState,
    fix_state,
    history,
    loop_state,
    now,
    plot_history,
    record_cycle,
)
from sage_health.apps.coevolve.scoring import Evaluator, flag_rate, negatives_of, overlap, snapshot_as_train_file
from sage_health.apps.coevolve.spec import (
    TAINTED_MARGIN,
    TASK_SPECS,
    LoopOptions,
    Progress,
    TaskSpec,
    cycle_dir,
    quiet,
    train_file_name,
)
from sage_health.core.config import Settings
from sage_health.core.errors import CoevolutionError, RegistryError
from sage_health.data.datasets import create_snapshot
from sage_health.data.feedback import FeedbackStore
from sage_health.data.governance.access import GovernedStore
from sage_health.data.governance.policy import Action
from sage_health.models.adaptation.lora import (
    LoraConfig,
    base_registry_fields,
    has_checkpoint,
    lora_run_dir,
    register_lora_candidate,
    snapshot_train_items,
    train_lora,
)
from sage_health.models.catalog import BUILTIN_MODELS, resolve_model
from sage_health.models.registry import ModelRegistry, ModelVersion
from sage_health.models.training_rules import snapshot_for_training

# ------------------------------------------------------------------------------------------------ models


def _registry_fields(base: str) -> dict[str, Any]:
    if base != "smollm2" and not (Path(base) / "config.json").is_file():
        raise CoevolutionError(f"--base {base}: neither 'smollm2' nor a folder saved with save_pretrained")
    return base_registry_fields(base)


def _production(registry: ModelRegistry, state: LoopState, actor: str, *, write: bool) -> ModelVersion:
    """Production of the loop's model; at the first cycle the base model is registered and made production."""
    prod = registry.production(state.model)
    if prod is not None:
        return prod
    fields = _registry_fields(state.base)
    builtin = BUILTIN_MODELS.get(state.model)
    if builtin is not None and state.base == "smollm2":
        base = resolve_model(registry, f"{state.model}@{builtin.version}")  # the base, not a newer candidate
    else:
        base = registry.ensure(
            state.model,
            backend=fields["backend"],
            version="base",
            base_model=fields["base_model"],
            config={"backend_options": fields["backend_options"]} if fields["backend_options"] else None,
            description=f"base model of the {state.task} co-evolution loop",
            actor="coevolve",
        )
    if not write:
        return base
    return registry.promote(
        base.name, base.version, actor=actor, reason="coevolve: the base model is the first production version"
    )


def _find_candidate(registry: ModelRegistry, name: str, adapter_sha: str, snapshot_ref: str) -> ModelVersion | None:
    for mv in registry.list_versions(name):
        if mv.adapter_sha256 == adapter_sha and mv.dataset_snapshot_id == snapshot_ref:
            return mv
    return None


# ------------------------------------------------------------------------------------------------ the cycle


def _timed(timings: dict[str, float], name: str, started: float) -> None:
    timings[name] = round(time.perf_counter() - started, 2)


def run_cycle(
    settings: Settings, governed: GovernedStore, opts: LoopOptions, *, progress: Progress = quiet
) -> CycleRecord:
    """One co-evolution cycle (module docstring). ``opts.dry_run`` reports what would happen and writes nothing."""
    spec = TASK_SPECS.get(opts.task)
    if spec is None:
        raise CoevolutionError(f"unknown task {opts.task!r}; the loop runs for: {', '.join(TASK_SPECS)}")
    for action in (Action.SNAPSHOT, Action.TRAIN, Action.EVALUATE, Action.PROMOTE):
        governed.decide(action)
    actor = governed.access.principal.name
    write = not opts.dry_run
    state = fix_state(settings, opts, spec, actor, write=write)
    registry = ModelRegistry(settings.db_path)
    past = [c for c in history(settings, spec.task) if c.status != "skipped"]
    last = past[-1] if past else None
    rec = CycleRecord(
        task=spec.task, cycle=len(history(settings, spec.task)) + 1, status="dry-run", started_at=now(), actor=actor,
        model=state.model,
    )  # fmt: skip
    timings = rec.timings
    work = cycle_dir(settings, spec.task, rec.cycle)

    # 1. collect
    t = time.perf_counter()
    watermark = last.feedback_to_id if last else 0
    all_events = FeedbackStore(settings.db_path).events(task=spec.feedback_task) if spec.feedback_task else []
    new = [e for e in all_events if e.id > watermark]
    kinds = Counter(e.kind for e in new)
    production = _production(registry, state, actor, write=write)
    taint = registry.taint(production)
    inputs = rec.inputs
    inputs.update(
        {
            "new_feedback_events": len(new),
            "approved": kinds["approved"],
            "edited": kinds["edited"],
            "rejected": kinds["rejected"],
            "feedback_events_total": len(all_events),
            "production_tainted": taint,
            "eval_file": state.eval_file,
            "eval_sha256": state.eval_sha256,
        }
    )
    rec = replace(
        rec, feedback_to_id=max((e.id for e in all_events), default=watermark), production_before=production.ref
    )
    _timed(timings, "collect", t)
    progress(
        f"cycle {rec.cycle}: {len(new)} new feedback events ({kinds['approved']} approved, {kinds['edited']} edited, "
        f"{kinds['rejected']} rejected); production {production.ref}" + (f" (tainted: {taint})" if taint else "")
    )
    if opts.dry_run:
        return replace(rec, finished_at=now(), reasons=["dry run: nothing written"])

    # 2. snapshot
    t = time.perf_counter()
    snap = create_snapshot(
        governed, settings, f"coevolve-{spec.task}", state.selector, task=spec.task, split="100/0/0", seed=0, deid=True
    )
    rec = replace(rec, snapshot_ref=snap.ref)
    previous_items = int(last.inputs.get("snapshot_train_items", 0)) if last else 0
    inputs.update(snapshot_train_items=int(snap.counts["train"]), new_items=int(snap.counts["train"]) - previous_items)
    negatives = negatives_of(settings, spec.task, all_events, opts.negatives_limit)
    inputs["negatives"] = len(negatives)
    _timed(timings, "snapshot", t)
    progress(f"snapshot {snap.ref}: {snap.counts['train']} training items ({inputs['new_items']:+d})")
    if last is not None and snap.ref == last.snapshot_ref and taint is None and not new and not opts.force:
        rec = replace(
            rec,
            status="skipped",
            reasons=[f"nothing new since cycle {last.cycle} (same snapshot {snap.ref}, no feedback)"],
            production_after=production.ref,
            finished_at=now(),
        )
        record_cycle(settings, rec)
        governed.log("coevolve", detail={"task": spec.task, "cycle": rec.cycle, "status": rec.status})
        return rec

    # 3. retrieval memory: approved reports are indexed at review time; check they are retrievable
    t = time.perf_counter()
    signed = [e.record_id for e in new if e.kind in ("approved", "edited") and e.record_id]
    retrievable = governed.indexed(signed) if signed else 0  # decided and audited once, not per record
    inputs["memory_new_reports"] = len(signed)
    inputs["memory_retrievable"] = retrievable
    _timed(timings, "memory", t)

    # 4. train (the same training rules as `train lora`: the snapshot is checked again right before training)
    t = time.perf_counter()
    snapshot_for_training(governed, settings, snap.ref)
    init_adapter = Path(production.adapter_path) if production.adapter_path and taint is None else None
    config = LoraConfig(
        task=spec.task, steps=opts.steps, batch_size=opts.batch_size, max_length=opts.max_length,
        learning_rate=opts.learning_rate, seed=opts.seed,
    )  # fmt: skip
    run_dir = lora_run_dir(
        settings, name=state.model, snapshot_ref=snap.ref, config=config, base=state.base, init_adapter=init_adapter
    )
    resume = has_checkpoint(run_dir)
    train_items = snapshot_train_items(snap)
    progress(
        f"training a LoRA candidate on {len(train_items)} items, {opts.steps} steps"
        + (f", from {production.ref}'s adapter" if init_adapter else ", from the base model")
        + (" (resuming)" if resume else "")
    )
    result = train_lora(
        train_items, base=state.base, settings=settings, run_dir=run_dir, config=config, init_adapter=init_adapter,
        resume=resume,
        progress=lambda step, total, loss: progress(f"  step {step}/{total} loss {loss:.3f}") if step % 10 == 0 or step == total else None,  # noqa: E501
    )  # fmt: skip
    candidate = _find_candidate(registry, state.model, result.adapter_sha256, snap.ref)
    if candidate is None:
        candidate = register_lora_candidate(
            registry, result, name=state.model, snapshot_ref=snap.ref, base=state.base,
            registry_fields=_registry_fields(state.base), parent=production.ref if init_adapter else None,
            actor=actor, description=f"coevolve {spec.task} cycle {rec.cycle}",
        )  # fmt: skip
    rec = replace(
        rec,
        candidate_ref=candidate.ref,
        training={
            **result.metrics(),
            "run_dir": str(result.run_dir),
            "loss_plot": str(result.loss_plot),
            "parent": production.ref if init_adapter else None,
            "adapter_sha256": result.adapter_sha256,
        },
    )
    _timed(timings, "train", t)
    governed.log(Action.TRAIN.value, detail={"model": candidate.ref, "snapshot": snap.ref, "cycle": rec.cycle})

    # 5. evaluate
    t = time.perf_counter()
    train_file = snapshot_as_train_file(snap, spec.task, work / train_file_name(spec.task))
    evaluator = Evaluator(settings, registry, state, work / "eval")
    rec = replace(rec, eval_set=evaluator.eval_set)
    blockers: list[str] = []
    leaked = overlap(train_file, Path(state.eval_file), spec.task)
    if leaked:
        blockers.append(
            f"the evaluation set overlaps the training snapshot {snap.ref} ({leaked} items): the candidate's scores "
            "would be inflated; evaluation studies must never be reviewed into the training data"
        )
    cand_taint = registry.taint(candidate)
    if cand_taint:
        blockers.append(f"candidate {candidate.ref} is tainted ({cand_taint})")
    decision: Decision
    if blockers:
        decision = decide(spec.primary, None, blockers=blockers)
    else:
        cand_scores = evaluator.score(candidate, train_file, progress)
        prod_scores = evaluator.score(production, train_file, progress)
        for scores, mv in ((cand_scores, candidate), (prod_scores, production)):
            scores.metrics["rejected_recurrence"] = evaluator.recurrence(mv, negatives) if negatives else None
        rec = replace(rec, candidate_metrics=cand_scores.metrics, production_metrics=prod_scores.metrics)
        common = sorted(set(cand_scores.per_item) & set(prod_scores.per_item))
        boot = paired_bootstrap(
            [prod_scores.per_item[i] for i in common],
            [cand_scores.per_item[i] for i in common],
            resamples=opts.resamples,
            seed=opts.seed,
        )
        min_gain = -TAINTED_MARGIN if taint else opts.min_gain
        checks = safety_checks(
            {k: v for k, v in prod_scores.metrics.items() if v is not None},
            {k: v for k, v in cand_scores.metrics.items() if v is not None},
        )
        decision = decide(spec.primary, boot, checks, min_gain=min_gain)
    _timed(timings, "evaluate", t)

    # 6. decide (the registry's gates apply on top of the rule)
    t = time.perf_counter()
    reasons = list(decision.reasons)
    status = "refused" if blockers else "kept"
    after = production
    if decision.promote:
        try:
            after = registry.promote(candidate.name, candidate.version, actor=actor, reason=decision.summary)
            status = "promoted"
            governed.log(
                Action.PROMOTE.value, detail={"model": after.ref, "replaced": production.ref, "cycle": rec.cycle}
            )
        except RegistryError as exc:
            reasons.append(f"registry refused the promotion: {exc}")
    _timed(timings, "decide", t)

    # 7. record
    rec = replace(
        rec, status=status, production_after=after.ref, decision=decision.as_dict(), reasons=reasons, finished_at=now()
    )
    record_cycle(settings, rec)
    governed.log(
        "coevolve",
        detail={"task": spec.task, "cycle": rec.cycle, "status": status, "snapshot": snap.ref,
                "candidate": candidate.ref, "production": after.ref, "reasons": reasons},
    )  # fmt: skip
    progress(f"cycle {rec.cycle}: {status}; production is {after.ref}")
    return rec


__all__ = [
    "TASK_SPECS",
    "CycleRecord",
    "LoopOptions",
    "LoopState",
    "TaskSpec",
    "flag_rate",
    "history",
    "loop_state",
    "overlap",
    "plot_history",
    "run_cycle",
]
