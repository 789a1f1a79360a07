"""Fusion-weight study for hybrid search on queries DISJOINT from the retrieval benchmark's evaluation queries.

The retrieval benchmark scores 2,000 MedQuAD questions sampled with seed 13; this script samples tuning
questions with another seed, drops every question (and every relevant record) of the evaluation sample, and
reports MRR@100 of weighted reciprocal-rank fusion ``w_bm25 / (k + rank_bm25) + w_dense / (k + rank_dense)`` for a
grid of dense weights, beside BM25 and dense alone. It reuses the store the retrieval benchmark leaves in
``benchmarks/.work/retrieval`` (run ``benchmarks/run_all.py --only retrieval`` first). Nothing here changes the
product's default fusion; the result informs it.

Writes results/<date>_fusion_tuning.{json,md} and results/latest_fusion_tuning.{json,md}.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import _common as c

N_TUNE = 1000
TUNE_SEED = 101
DEPTH = 100
DENSE_WEIGHTS = (0.5, 1.0, 1.5, 2.0, 3.0, 5.0)
RRF_K = 60


def _fuse(bm25: Sequence[str], dense: Sequence[str], w_dense: float) -> list[str]:
    score: dict[str, float] = {}
    for rank, rid in enumerate(bm25, 1):
        score[rid] = score.get(rid, 0.0) + 1.0 / (RRF_K + rank)
    for rank, rid in enumerate(dense, 1):
        score[rid] = score.get(rid, 0.0) + w_dense / (RRF_K + rank)
    return sorted(score, key=lambda r: -score[r])


def _mrr(rankings: Sequence[Sequence[str]], relevant: Sequence[str]) -> float:
    total = 0.0
    for ranked, rel in zip(rankings, relevant, strict=True):
        if rel in ranked:
            total += 1.0 / (ranked.index(rel) + 1)
    return total / len(relevant)


def main() -> int:
    c.setup_env()
    from sage_health.data.embed import CachedEmbedder, MiniLMEmbedder
    from sage_health.data.retrieval_eval import TASK_MEDQUAD, load_eval_corpus
    from sage_health.data.store.protocol import SearchFilters, SearchQuery
    from sage_health.data.store.sqlite import SqliteDocumentStore

    data = c.data_dir()
    pubmedqa, medquad = data / "pubmedqa" / "ori_pqal_dev.json", data / "medquad" / "medquad.jsonl.gz"
    db = c.WORK_DIR / "retrieval" / "retrieval-eval.db"
    if not db.is_file():
        raise SystemExit(f"{db} is missing: run `benchmarks/run_all.py --only retrieval` first")
    evaluation = load_eval_corpus(pubmedqa, medquad, medquad_sample=2000, seed=13).tasks[TASK_MEDQUAD]
    held = {q.text for q in evaluation} | {q.relevant_id for q in evaluation}
    pool = load_eval_corpus(pubmedqa, medquad, medquad_sample=10**9, seed=TUNE_SEED).tasks[TASK_MEDQUAD]
    tune = [q for q in pool if q.text not in held and q.relevant_id not in held][:N_TUNE]
    filters = SearchFilters(resource_types=("KnowledgeDocument",))
    bm25_runs: list[list[str]] = []
    dense_runs: list[list[str]] = []
    embedder = CachedEmbedder(MiniLMEmbedder(), c.EMBED_CACHE)
    with SqliteDocumentStore(db, embedder) as store:
        for q in tune:
            for mode, runs in (("bm25", bm25_runs), ("dense", dense_runs)):
                hits = store.search(
                    SearchQuery(text=q.text, k=DEPTH, mode=mode, filters=filters, one_per_record=True, candidates=DEPTH)
                )
                runs.append([h.record_id for h in hits])
    relevant = [q.relevant_id for q in tune]
    rows: list[dict[str, Any]] = [
        {"fusion": "bm25 only", "mrr": round(_mrr(bm25_runs, relevant), 4)},
        {"fusion": "dense only", "mrr": round(_mrr(dense_runs, relevant), 4)},
    ]
    for w in DENSE_WEIGHTS:
        fused = [_fuse(b, d, w) for b, d in zip(bm25_runs, dense_runs, strict=True)]
        rows.append({"fusion": f"RRF k={RRF_K}, w_dense={w}", "mrr": round(_mrr(fused, relevant), 4)})
    payload = {
        "benchmark": "fusion_tuning",
        "machine": c.machine_info(),
        "tuning_queries": len(tune),
        "tune_seed": TUNE_SEED,
        "excluded": "every question and relevant record of the evaluation sample (seed 13, 2,000)",
        "depth": DEPTH,
        "rows": rows,
    }
    md = [
        "# Fusion-weight study (MedQuAD tuning questions disjoint from the evaluation sample)",
        "",
        f"{len(tune)} tuning questions (seed {TUNE_SEED}), MRR@{DEPTH} of the question's own answer record.",
        "",
        c.md_table(rows),
        "",
        c.machine_md(payload["machine"]),
    ]
    c.write_results("fusion_tuning", payload, "\n".join(md))
    print("\n".join(md[:6]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
