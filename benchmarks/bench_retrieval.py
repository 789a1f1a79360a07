"""Retrieval-quality benchmark: ``evaluate_retrieval`` (bm25, dense, hybrid) on PubMedQA + MedQuAD, plus a
``bm25s`` baseline computed in the same run over the same chunk texts.

* Store: all 500 PubMedQA PQA-L (dev half) abstracts + all 16,407 MedQuAD answers, fresh, built by
  ``evaluate_retrieval`` in benchmarks/.work/retrieval (vectors from the persistent embedding cache).
* Tasks: each PubMedQA question -> its own abstract; 2,000 MedQuAD questions (seed 13) -> their own answer.
* bm25s baseline: BM25 (Lucene variant, k1=1.5, b=0.75) over exactly the chunk texts of that store (title
  prefix included), tokenised with bm25s' English stop words and the original Porter stemmer (what SQLite
  FTS5's ``porter`` tokenizer uses); a record's score is its best chunk's (one hit per record, as ours).

Run: ``.venv/bin/python benchmarks/bench_retrieval.py``.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import _common as c

SEED = 13
MEDQUAD_SAMPLE = 2000
K_VALUES = (1, 5, 10)
BM25S_CHUNK_DEPTH = 200  # chunks retrieved per query before collapsing to one hit per record


def bm25s_baseline(store_db: Path, tasks: dict[str, Sequence[Any]], k_values: Sequence[int]) -> dict[str, Any]:
    import bm25s

    from sage_health.data.retrieval_eval import ranking_metrics

    conn = sqlite3.connect(f"file:{store_db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT id, record_id, text FROM chunks WHERE resource_type='KnowledgeDocument' ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    record_of = [r[1] for r in rows]
    stem = c.cached_porter_stemmer()

    started = time.perf_counter()
    corpus_tokens = bm25s.tokenize([r[2] for r in rows], stopwords="en", stemmer=stem, show_progress=False)
    retriever = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    retriever.index(corpus_tokens, show_progress=False)
    index_seconds = time.perf_counter() - started
    depth = max(k_values)
    out: dict[str, Any] = {}
    for task, queries in tasks.items():
        t0 = time.perf_counter()
        q_tokens = bm25s.tokenize([q.text for q in queries], stopwords="en", stemmer=stem, show_progress=False)
        n = min(BM25S_CHUNK_DEPTH, len(rows))
        docs, scores = retriever.retrieve(q_tokens, k=n, show_progress=False, n_threads=1)
        ranked: list[list[str]] = []
        for doc_row, score_row in zip(docs, scores, strict=True):
            seen: list[str] = []
            for idx, score in zip(doc_row, score_row, strict=True):
                if score <= 0:
                    break
                rid = record_of[int(idx)]
                if rid not in seen:
                    seen.append(rid)
                if len(seen) >= depth:
                    break
            ranked.append(seen)
        spent = time.perf_counter() - t0
        metrics = ranking_metrics(ranked, [q.relevant_id for q in queries], k_values)
        out[task] = metrics.model_copy(
            update={"seconds": spent, "ms_per_query": 1000.0 * spent / max(1, len(queries))}
        ).model_dump(mode="json")
    return {
        "n_chunks": len(rows),
        "index_seconds": round(index_seconds, 2),
        "tokenizer": "bm25s.tokenize(stopwords='en', stemmer=nltk PorterStemmer ORIGINAL_ALGORITHM)",
        "params": {"k1": 1.5, "b": 0.75, "method": "lucene", "chunk_depth": BM25S_CHUNK_DEPTH},
        "unit": "chunks (same texts as our store, title prefix included); record score = best chunk",
        "tasks": out,
        "bm25s_version": bm25s.__version__,
        "numpy": np.__version__,
    }


def main() -> None:
    c.setup_env()
    from sage_health.data.embed import MiniLMEmbedder
    from sage_health.data.retrieval_eval import evaluate_retrieval, load_eval_corpus

    started = time.perf_counter()
    info = c.machine_info()
    data = c.data_dir()
    pubmedqa = data / "pubmedqa" / "ori_pqal_dev.json"
    medquad = data / "medquad" / "medquad.jsonl.gz"
    work = c.WORK_DIR / "retrieval"
    print("[retrieval] evaluate_retrieval (bm25, dense, hybrid)...", flush=True)
    result = evaluate_retrieval(
        pubmedqa,
        medquad,
        medquad_sample=MEDQUAD_SAMPLE,
        seed=SEED,
        modes=("bm25", "dense", "hybrid"),
        k_values=K_VALUES,
        work_dir=work,
        embedder=MiniLMEmbedder(),
        embedding_cache=c.EMBED_CACHE,
        progress=True,
    )
    print(f"[retrieval] bm25s baseline over the same {result.n_chunks} chunks...", flush=True)
    corpus = load_eval_corpus(pubmedqa, medquad, medquad_sample=MEDQUAD_SAMPLE, seed=SEED)
    baseline = bm25s_baseline(work / "retrieval-eval.db", corpus.tasks, K_VALUES)

    rows: list[dict[str, Any]] = []
    verdict: dict[str, Any] = {}
    for task_name, task in result.tasks.items():
        for mode, m in task.modes.items():
            rows.append(_row(task_name, mode, m.model_dump(mode="json")))
        rows.append(_row(task_name, "bm25s (baseline)", baseline["tasks"][task_name]))
        hy, bm, de = (task.modes[m] for m in ("hybrid", "bm25", "dense"))
        verdict[task_name] = {
            metric: {
                "hybrid": round(getattr(hy, attr) if attr != "recall" else hy.recall[10], 4),
                "bm25": round(getattr(bm, attr) if attr != "recall" else bm.recall[10], 4),
                "dense": round(getattr(de, attr) if attr != "recall" else de.recall[10], 4),
                "hybrid_beats_both": (getattr(hy, attr) if attr != "recall" else hy.recall[10])
                > max(
                    getattr(bm, attr) if attr != "recall" else bm.recall[10],
                    getattr(de, attr) if attr != "recall" else de.recall[10],
                ),
            }
            for metric, attr in (("mrr", "mrr"), ("ndcg@10", "ndcg_at_10"), ("recall@10", "recall"))
        }
    payload = {
        "benchmark": "retrieval",
        "machine": info,
        "config": result.config.model_dump(mode="json"),
        "result": result.model_dump(mode="json"),
        "bm25s_baseline": baseline,
        "hybrid_vs_single": verdict,
        "benchmark_seconds": round(time.perf_counter() - started, 1),
    }
    cfg = result.config
    md = [
        "# Retrieval-quality benchmark\n",
        c.machine_md(info),
        f"\nStore: {result.n_docs} KnowledgeDocuments ({len(corpus.tasks['pubmedqa'])} PubMedQA abstracts + "
        f"{result.n_docs - len(corpus.tasks['pubmedqa'])} MedQuAD answers), {result.n_chunks} chunks; embedder "
        f"`{cfg.embedder_model_id}` ({cfg.embedder_precision}); RRF k={cfg.rrf_k}, dense weight {cfg.dense_weight} "
        "(BM25 1; chosen on tuning questions disjoint from these, see tune_fusion.py); "
        f"{cfg.candidates}; "
        f"filters {cfg.filters}. Files: `{cfg.pubmedqa_file.path}` (sha256 {cfg.pubmedqa_file.sha256[:12]}), "
        f"`{cfg.medquad_file.path if cfg.medquad_file else '-'}` "
        f"(sha256 {cfg.medquad_file.sha256[:12] if cfg.medquad_file else '-'}); MedQuAD sample {cfg.medquad_sampled} "
        f"questions, seed {cfg.seed} ({result.medquad_shared_answers} of them have an answer text shared with "
        "another record, so at best a tie). Relevance: one record per query (its own abstract / answer).\n",
        "\n",
        c.md_table(rows),
        f"\nbm25s baseline: {baseline['tokenizer']}, BM25 {baseline['params']} over {baseline['unit']}. "
        "ms/query of dense and hybrid include the query embedding unless it came from the embedding cache "
        "(re-runs); see the latency benchmark for search latency.\n",
        "\nHybrid beats both bm25 and dense (MRR / nDCG@10 / recall@10): "
        + "; ".join(
            f"{t}: " + ", ".join(f"{m} {'yes' if v['hybrid_beats_both'] else 'NO'}" for m, v in d.items())
            for t, d in verdict.items()
        )
        + ".\n",
    ]
    c.write_results("retrieval", payload, "\n".join(md))
    print(f"[retrieval] done in {payload['benchmark_seconds']}s", flush=True)


def _row(task: str, mode: str, m: dict[str, Any]) -> dict[str, Any]:
    rec = {int(k): v for k, v in m["recall"].items()}
    return {
        "task": task,
        "mode": mode,
        "queries": m["n_queries"],
        "recall@1": rec[1],
        "recall@5": rec[5],
        "recall@10": rec[10],
        "MRR": m["mrr"],
        "nDCG@10": m["ndcg_at_10"],
        "ms/query": m["ms_per_query"],
    }


if __name__ == "__main__":
    sys.exit(main())
