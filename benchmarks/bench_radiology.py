"""The chest X-ray report workflow on IU X-ray, end to end (``sage-health eval radiology``).

Train = the R2Gen train ids (the workflow's retrieval memory: a fresh store of those reports only); test = the R2Gen
val ids (the R2Gen test split is held out of the shared data). Val studies identical to a train study (same
indication, findings and impression after normalisation) are dropped and counted. Per test study the whole workflow
runs — planner, retriever, safety screen, imaging (abstains: no val study has images in the shared data), writer,
verifier, safety — once with the default generator (SmolLM2-135M-Instruct, 3 retrieved reports as in-context
exemplars) and once with the ``extractive`` nearest-neighbour baseline, in the same run.

Reported beside the numbers published for R2Gen on the IU X-ray *test* split with *image* input, which are not
comparable inputs (ours: indication text only) nor the same split.

``--limit N`` evaluates a seeded sample of N val studies (results are still written, marked with the limit).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import _common as c
from sage_health.apps.radiology.evaluation import PUBLISHED, run_radiology_eval
from sage_health.core.config import Settings
from sage_health.data.governance.access import open_governed
from sage_health.data.store.factory import open_store
from sage_health.models.evaluation.harness import write_r2gen_splits
from sage_health.models.evaluation.labeler import CheXpertLabeler
from sage_health.models.evaluation.reporting import metric_value
from sage_health.models.registry import ModelRegistry

KEYS = (
    "text.bleu_4",
    "text.rouge_l",
    "ce.micro_f1",
    "ce.macro_f1",
    "ce.common_micro_f1",
    "text.distinct_output_ratio",
    "raw_writer_text.rouge_l",
    "report_text.rouge_l",
    "workflow.verifier_flag_rate",
    "workflow.removed_sentence_rate",
    "workflow.blocked_rate",
    "workflow.seconds_per_study_mean",
    "workflow.fallback_drafts",
    "workflow.n_studies",
    "workflow.leaked_test_items_dropped",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--models", nargs="+", default=["smollm2", "extractive@1"])
    args = parser.parse_args()
    c.setup_env()
    data = c.data_dir()
    work = c.WORK_DIR / "radiology"
    splits = write_r2gen_splits(
        data / "iu_xray" / "reports.jsonl", data / "iu_xray" / "r2gen_annotation.json", work / "iu_xray_r2gen"
    )
    settings = Settings(store=work / "store", model_cache_dir=c.WORK_DIR / "models", data_dir=data)
    registry = ModelRegistry(settings.db_path)
    started = time.perf_counter()

    def progress(system: str, done: int, total: int) -> None:
        if done % 10 == 0 or done == total:
            print(f"{system}: {done}/{total} ({time.perf_counter() - started:.0f} s)", flush=True)

    # the benchmark acts as the built-in data steward (operations): evaluation is allowed, the view is identified
    governed = open_governed(
        settings, open_store(settings, must_exist=False), principal="data_steward", purpose="operations"
    )
    results = run_radiology_eval(
        settings=settings,
        governed=governed,
        registry=registry,
        train_file=splits["train"],
        test_file=splits["val"],
        out_dir=work / "evals",
        models=args.models,
        labeler=CheXpertLabeler.from_data_dir(data),
        limit=args.limit,
        drop_leaks=True,
        dataset_name="iu_xray_r2gen_val",
        progress=progress,
    )
    rows: list[dict[str, Any]] = []
    for r in results:
        row: dict[str, Any] = {"system": f"{r.ref} (this run)", "run_id": r.outcome.run.run_id}
        for key in KEYS:
            value = metric_value(r.outcome.run.metrics, key)
            row[key] = round(float(value), 4) if value is not None else None
        rows.append(row)
    published = [
        {"system": name, "text.bleu_4": bleu, "text.rouge_l": rouge, "setting": note}
        for name, bleu, rouge, note in PUBLISHED
    ]
    payload = {
        "benchmark": "radiology",
        "machine": c.machine_info(),
        "train_file": {"ids": "R2Gen train", "studies": sum(1 for _ in splits["train"].open())},
        "test_file": {"ids": "R2Gen val", "studies": sum(1 for _ in splits["val"].open())},
        "limit": args.limit,
        "systems": rows,
        "published_reference_points": published,
        "seconds": round(time.perf_counter() - started, 1),
    }
    md = [
        "# Radiology report workflow — IU X-ray R2Gen val, end to end",
        "",
        "Input: indication (+ comparison) text only — no val study has images in the shared data, so the imaging",
        "agent abstains. Retrieval memory: the R2Gen train reports only. Scored text: the verified draft",
        "(FINDINGS for BLEU/ROUGE, as R2Gen; FINDINGS + IMPRESSION for CE labels). `raw_writer_text` scores the",
        "writer's findings before the verifier removed unsupported sentences."
        + (f" Seeded sample of {args.limit} val studies." if args.limit else ""),
        "",
        c.md_table(rows, ["system", *KEYS]),
        "",
        "Published reference points (IU X-ray **test** split, **image** input: not comparable inputs or split):",
        "",
        c.md_table(published, ["system", "text.bleu_4", "text.rouge_l", "setting"]),
        "",
        c.machine_md(payload["machine"]),
    ]
    c.write_results("radiology", payload, "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
