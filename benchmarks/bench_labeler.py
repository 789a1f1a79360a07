"""Validation of the CheXpert-style labeler (the instrument behind every CE metric).

(a) against the CheXpert labeler's own outputs (``chexpert_labeler/labeled_reports.csv``);
(b) against the IU X-ray expert MeSH major terms (``iu_xray/reports.jsonl``, mapping in
``sage_health.models.evaluation.labeler_validation``; uncertain counts as positive, U-Ones; the U-Zeros F1 is
shown beside it). Target: F1 >= 0.85 on every observation with >= 50 MeSH-positive reports.

Writes results/<date>_labeler.{json,md} and results/latest_labeler.{json,md}. Also timed: labelling all IU
reports with a warm labeler.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import _common as c
from sage_health.models.evaluation.labeler import CheXpertLabeler
from sage_health.models.evaluation.labeler_validation import (
    validate_against_iu_mesh,
    validate_against_labeled_reports,
)

TARGET_F1 = 0.85


def main() -> int:
    c.setup_env()
    data = c.data_dir()
    labeler = CheXpertLabeler.from_dir(data / "chexpert_labeler")
    t0 = time.perf_counter()
    chexpert = validate_against_labeled_reports(labeler, data / "chexpert_labeler")
    u_ones = validate_against_iu_mesh(labeler, data, uncertain_as_positive=True)
    seconds_warm = time.perf_counter() - t0
    u_zeros = validate_against_iu_mesh(labeler, data, uncertain_as_positive=False)
    zeros = {m.observation: m for m in u_zeros.per_observation}
    rows: list[dict[str, Any]] = []
    for m in u_ones.per_observation:
        rows.append(
            {
                "observation": m.observation,
                "mesh_positive": m.support,
                "evaluated": m.support >= u_ones.min_support,
                "precision": round(m.precision, 3),
                "recall": round(m.recall, 3),
                "f1": round(m.f1, 3),
                "tp": m.tp,
                "fp": m.fp,
                "fn": m.fn,
                "tn": m.tn,
                "f1_u_zeros": round(zeros[m.observation].f1, 3),
                "meets_target": (m.f1 >= TARGET_F1) if m.support >= u_ones.min_support else None,
            }
        )
    evaluated = [r for r in rows if r["evaluated"]]
    payload = {
        "benchmark": "labeler",
        "machine": c.machine_info(),
        "target": f"F1 >= {TARGET_F1} on observations with >= {u_ones.min_support} MeSH-positive reports",
        "all_evaluated_meet_target": all(r["meets_target"] for r in evaluated),
        "iu_mesh": {"n_reports": u_ones.n_reports, "excluded_reports": u_ones.excluded_reports, "rows": rows},
        "chexpert_labeled_reports": {
            "n_reports": chexpert.n_reports,
            "accuracy_4class": chexpert.accuracy,
            "positive_micro_f1": chexpert.positive_micro_f1,
        },
        "seconds_both_validations": round(seconds_warm, 1),
    }
    md = [
        "# CheXpert-style labeler validation",
        "",
        f"**IU X-ray MeSH** ({u_ones.n_reports} reports, {u_ones.excluded_reports} excluded: no text or only"
        " 'No Indexing'); uncertain = positive (U-Ones); target "
        f"{payload['target']}: **{'met' if payload['all_evaluated_meet_target'] else 'NOT met'}**.",
        "",
        c.md_table(rows),
        "",
        f"**CheXpert labeler outputs** (`labeled_reports.csv`, {chexpert.n_reports} reports x 14): 4-class accuracy "
        f"{chexpert.accuracy:.3f}, positive-class micro F1 {chexpert.positive_micro_f1:.3f}.",
        "",
        "Caveat: the rules were developed on the same shared IU reports they are scored on (no held-out split of"
        " MeSH-indexed reports ships with the data); read these as development-set figures.",
        "",
        c.machine_md(payload["machine"]),
    ]
    c.write_results("labeler", payload, "\n".join(md))
    print("\n".join(md[:6]))
    return 0 if payload["all_evaluated_meet_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
