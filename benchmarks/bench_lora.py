"""One LoRA adaptation of SmolLM2-135M on the IU X-ray findings -> impression train split, end to end through the CLI,
each step timed (issue 6 target: one useful adaptation within ~30 minutes on this 2-core box).

Steps (each a ``sage-health`` command in a subprocess, as an operator would run them):

1. ``ingest`` the R2Gen train split of IU X-ray reports into a fresh store (data steward);
2. ``dataset create iu-train-impression --from DiagnosticReport:iu-xray --task impression --split 100/0/0 --deid``;
3. ``train lora --snapshot iu-train-impression --steps N`` as the admin (operations);
4. ``eval report`` of the adapter and of SmolLM2 zero-shot on the same fixed val sample as the co-evolution case study
   (val minus studies identical to a train study, seeded sample of ``--eval-limit``), exemplar memory = train split.

Writes results/<date>_lora.{json,md} and results/latest_lora.{json,md}; the loss plot is copied to
results/lora_loss.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as c
from bench_coevolve import fixed_eval_file
from sage_health.models.evaluation.harness import write_r2gen_splits

SNAPSHOT = "iu-train-impression"


def sage(args: list[str], env: dict[str, str]) -> tuple[dict[str, Any], float]:
    exe = Path(sys.executable).with_name("sage-health")
    t = time.perf_counter()
    proc = subprocess.run(  # noqa: S603 - our own CLI
        [str(exe), *args, "--json"], env=env, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"sage-health {' '.join(args[:2])} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout), seconds


def _metrics(result: dict[str, Any]) -> dict[str, Any]:
    m = result.get("metrics", result)
    return {
        "ROUGE-L": m["text"]["rouge_l"],
        "BLEU-4": m["text"]["bleu_4"],
        "CE-F1 (micro)": m["ce"]["micro_f1"],
        "distinct": m["text"]["distinct_output_ratio"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=110)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=320)
    parser.add_argument("--eval-limit", type=int, default=100)
    args = parser.parse_args()
    c.setup_env()
    data = c.data_dir()
    work = c.WORK_DIR / "lora"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    splits = write_r2gen_splits(
        data / "iu_xray" / "reports.jsonl", data / "iu_xray" / "r2gen_annotation.json", work / "splits"
    )
    eval_file, dropped = fixed_eval_file(splits["train"], splits["val"], work / "splits" / "val-fixed.jsonl")
    store = work / "store"
    env = {**os.environ, "SAGE_DATA_DIR": str(data), "SAGE_MODEL_CACHE_DIR": str(c.WORK_DIR / "models")}
    steward = ["--store", str(store), "--as", "data_steward", "--purpose", "operations"]
    admin = ["--store", str(store), "--as", "admin", "--purpose", "operations"]
    steps: dict[str, float] = {}

    ingest, steps["ingest"] = sage(["ingest", str(splits["train"]), *steward], env)
    snap, steps["snapshot"] = sage(
        ["dataset", "create", SNAPSHOT, "--from", "DiagnosticReport:iu-xray", "--task", "impression",
         "--split", "100/0/0", "--deid", *steward],
        env,
    )  # fmt: skip
    trained, steps["train"] = sage(
        ["train", "lora", "--snapshot", SNAPSHOT, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
         "--max-length", str(args.max_length), *admin],
        env,
    )  # fmt: skip
    ref = str(trained["model"])
    evals: dict[str, dict[str, Any]] = {}
    for model in ("smollm2@q4_1-gguf", ref):
        result, seconds = sage(
            ["eval", "report", "--train", str(splits["train"]), "--test", str(eval_file), "--task", "impression",
             "--model", model, "--limit", str(args.eval_limit), "--seed", "13", *admin],
            env,
        )  # fmt: skip
        evals[model] = {**_metrics(result), "seconds": round(seconds, 1)}
        steps[f"eval {model}"] = seconds
    loss_png = Path(str(trained.get("loss_plot", "")))
    if loss_png.is_file():
        shutil.copy(loss_png, c.RESULTS_DIR / "lora_loss.png")
    rows = [{"model": m, **v} for m, v in evals.items()]
    timing_rows = [{"step": k, "seconds": round(v, 1)} for k, v in steps.items()]
    payload = {
        "benchmark": "lora",
        "machine": c.machine_info(),
        "params": vars(args),
        "eval": {"file": "R2Gen val minus studies identical to train", "dropped": dropped, "limit": args.eval_limit},
        "ingest": ingest,
        "snapshot": snap,
        "training": trained,
        "evaluations": rows,
        "step_seconds": steps,
    }
    md = "\n\n".join(
        [
            "# LoRA adaptation of SmolLM2-135M on the IU X-ray train split (findings -> impression)",
            f"{args.steps} steps, batch {args.batch_size}, max length {args.max_length} tokens, LoRA r=8 on "
            "q/k/v/o projections, AdamW lr 2e-4, seed 0, float32 on the CPU. Training data: the de-identified "
            f"snapshot `{SNAPSHOT}` of the R2Gen train split; evaluation: {args.eval_limit} val studies (seed 13), "
            "the same items as the co-evolution case study.",
            "## Evaluation (same items)",
            c.md_table(rows),
            "## Seconds per step",
            c.md_table(timing_rows),
            "![loss](lora_loss.png)" if (c.RESULTS_DIR / "lora_loss.png").is_file() else "",
            c.machine_md(payload["machine"]),
        ]
    )
    c.write_results("lora", payload, md)
    print(json.dumps({"evaluations": rows, "steps": steps}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
