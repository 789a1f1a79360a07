"""Search-latency benchmark: hybrid / bm25 / dense search at ~10k and ~100k chunks, with and without filters.

Stores are built from real records: those of the ingest benchmark's store (benchmarks/.work/ingest), or,
when it is absent, MedQuAD + PubMedQA + IU X-ray ingested here. The ~10k store holds a seeded random
subset of those records; the ~100k store holds all of them plus copies re-written under new ids
(``<id>:padN``) until 100k chunks: identical chunk text reuses the stored vector, so padding costs no
embedding. Vectors come from the persistent embedding cache.

Queries: 300 real questions (PubMedQA + MedQuAD, seeded), after 20 warm-up queries.

* ``retrieval only``: the query vector is precomputed, so the time is BM25 (FTS5) + exact dense
  (NumPy brute force) + RRF fusion + hydrating the hits from SQLite: everything but the embedding.
* ``query embedding``: MiniLMEmbedder on one query, measured separately.
* ``end to end``: hybrid search with the live embedder (embedding included).

Dense search is exact brute-force cosine, so vector recall vs exact search is 1.0 by construction.

Run: ``.venv/bin/python benchmarks/bench_latency.py``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import _common as c

SEED = 13
SIZES = {"10k": 10_000, "100k": 100_000}
N_QUERIES = 300
N_WARMUP = 20
K = 10
MODES = ("hybrid", "bm25", "dense")


class PrecomputedEmbedder:
    """Returns vectors computed before the timed loop (so search timings exclude the embedding)."""

    def __init__(self, inner: Any, vectors: dict[str, np.ndarray]) -> None:
        self.inner = inner
        self.vectors = vectors

    @property
    def dim(self) -> int:
        return int(self.inner.dim)

    @property
    def model_id(self) -> str:
        return str(self.inner.model_id)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if all(t in self.vectors for t in texts):
            return np.stack([self.vectors[t] for t in texts]).astype(np.float32)
        out: np.ndarray = self.inner.embed(texts)
        return out


def _source_store(data: Path, cached: Any) -> Path:
    """The ingest benchmark's store, or one built here from MedQuAD + PubMedQA + IU X-ray."""
    if c.INGEST_STORE.is_file():
        return c.INGEST_STORE
    from sage_health.data.ingest.pipeline import IngestPipeline
    from sage_health.data.store.sqlite import SqliteDocumentStore

    path = c.WORK_DIR / "latency" / "source" / "sage.db"
    if path.is_file():
        return path
    print("[latency] no ingest-benchmark store; building a source store from MedQuAD, PubMedQA, IU X-ray...")
    with SqliteDocumentStore(path, cached) as store:
        IngestPipeline(store).run([data / "medquad", data / "pubmedqa", data / "iu_xray"], command="bench_latency")
    return path


def _fingerprint(db: Path) -> dict[str, Any]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        records = conn.execute("SELECT count(*), max(pk) FROM records WHERE is_current=1").fetchone()
        chunks = conn.execute("SELECT count(*), max(id) FROM chunks").fetchone()
    finally:
        conn.close()
    return {"source": str(db), "records": list(records), "chunks": list(chunks)}


def _build_store(name: str, target: int, source: Path, cached: Any) -> tuple[Path, dict[str, Any]]:
    from sage_health.data.store.sqlite import SqliteDocumentStore

    path = c.WORK_DIR / "latency" / f"store-{name}" / "sage.db"
    marker = path.parent / "built.json"
    wanted = {"target_chunks": target, "seed": SEED, **_fingerprint(source)}
    if marker.is_file() and path.is_file():
        built: dict[str, Any] = json.loads(marker.read_text(encoding="utf-8"))
        if built.get("wanted") == wanted:
            print(f"[latency] reusing {path} ({built['chunks']} chunks)", flush=True)
            return path, built
    shutil.rmtree(path.parent, ignore_errors=True)
    with SqliteDocumentStore(source, cached) as src:
        records = [s.record for s in src.iter_records()]
        counts = dict(src.connection.execute("SELECT record_id, count(*) FROM chunks GROUP BY 1").fetchall())
    records = [r for r in records if counts.get(r.id)]
    random.Random(SEED).shuffle(records)
    started = time.perf_counter()
    chunks = 0
    n_records = 0
    padded = 0
    with SqliteDocumentStore(path, cached) as store:
        copy = 0  # 0: the real records; n >= 1: copies under the ids "<id>:pad<n>"
        while chunks < target:
            batch: list[Any] = []
            pending = 0
            for record in records:
                if chunks + pending >= target:
                    break
                batch.append(record if copy == 0 else record.model_copy(update={"id": f"{record.id}:pad{copy}"}))
                pending += counts[record.id]
                if len(batch) >= 512 or chunks + pending >= target:
                    chunks += store.write(batch, run_id=f"latency-{name}").chunks
                    n_records += len(batch)
                    padded += len(batch) if copy else 0
                    batch, pending = [], 0
            if batch:
                chunks += store.write(batch, run_id=f"latency-{name}").chunks
                n_records += len(batch)
                padded += len(batch) if copy else 0
            copy += 1
        by_type = dict(store.connection.execute("SELECT resource_type, count(*) FROM chunks GROUP BY 1").fetchall())
        by_source = dict(store.connection.execute("SELECT source, count(*) FROM chunks GROUP BY 1").fetchall())
    built = {
        "wanted": wanted,
        "chunks": chunks,
        "records": n_records,
        "padded_records": padded,
        "build_seconds": round(time.perf_counter() - started, 1),
        "chunks_by_type": by_type,
        "chunks_by_source": by_source,
    }
    marker.write_text(json.dumps(built, indent=2), encoding="utf-8")
    print(f"[latency] built {path}: {chunks} chunks ({padded} padded records) in {built['build_seconds']}s", flush=True)
    return path, built


def _queries(data: Path) -> list[str]:
    from sage_health.data.retrieval_eval import load_eval_corpus

    corpus = load_eval_corpus(
        data / "pubmedqa" / "ori_pqal_dev.json", data / "medquad" / "medquad.jsonl.gz", medquad_sample=500, seed=SEED
    )
    texts = sorted({q.text for qs in corpus.tasks.values() for q in qs})
    random.Random(SEED).shuffle(texts)
    return texts[: N_QUERIES + N_WARMUP]


def _time_searches(store: Any, queries: Sequence[str], mode: str, filters: Any) -> tuple[list[float], float]:
    from sage_health.data.store.protocol import SearchQuery

    for q in queries[:N_WARMUP]:
        store.search(SearchQuery(text=q, k=K, mode=mode, filters=filters))
    times: list[float] = []
    hits = 0
    for q in queries[N_WARMUP:]:
        query = SearchQuery(text=q, k=K, mode=mode, filters=filters)
        t0 = time.perf_counter()
        result = store.search(query)
        times.append((time.perf_counter() - t0) * 1000.0)
        hits += len(result)
    return times, hits / max(1, len(queries) - N_WARMUP)


def main() -> None:
    c.setup_env()
    from sage_health.data.embed import CachedEmbedder, MiniLMEmbedder
    from sage_health.data.store.protocol import SearchFilters
    from sage_health.data.store.sqlite import SqliteDocumentStore

    started = time.perf_counter()
    info = c.machine_info()
    data = c.data_dir()
    inner = MiniLMEmbedder()
    cached = CachedEmbedder(inner, c.EMBED_CACHE)
    source = _source_store(data, cached)
    seeded = c.seed_cache_from_store(source, c.EMBED_CACHE)
    print(f"[latency] source store {source} ({seeded} vectors in the cache)", flush=True)
    queries = _queries(data)

    # query embedding, measured alone (one query per call, as search does)
    inner.embed(["warm-up"])
    embed_ms: list[float] = []
    vectors: dict[str, np.ndarray] = {}
    for q in queries:
        t0 = time.perf_counter()
        vec = inner.embed([q])[0]
        embed_ms.append((time.perf_counter() - t0) * 1000.0)
        vectors[q] = vec
    embed_stats = c.percentiles(embed_ms[N_WARMUP:])
    print(f"[latency] query embedding: {embed_stats}", flush=True)

    filters = {
        "none": SearchFilters(),
        "resource_types=KnowledgeDocument": SearchFilters(resource_types=("KnowledgeDocument",)),
        "sources=iu-xray": SearchFilters(sources=("iu-xray",)),
    }
    rows: list[dict[str, Any]] = []
    stores: dict[str, Any] = {}
    for size, target in SIZES.items():
        path, built = _build_store(size, target, source, cached)
        stores[size] = {k: v for k, v in built.items() if k != "wanted"} | {"path": str(path)}
        fast = PrecomputedEmbedder(inner, vectors)
        with SqliteDocumentStore(path, fast) as store:
            stores[size]["first_search_ms_incl_matrix_load"] = round(_first_search(store, queries[0]), 1)
            for fname, flt in filters.items():
                for mode in MODES:
                    times, avg_hits = _time_searches(store, queries, mode, flt)
                    row = {
                        "chunks": built["chunks"],
                        "size": size,
                        "filter": fname,
                        "mode": mode,
                        "embedding": "excluded",
                        **c.percentiles(times),
                        "avg_hits": round(avg_hits, 2),
                        "load_avg_1min": round(os.getloadavg()[0], 2),
                    }
                    rows.append(row)
                    print(f"[latency] {size} {fname} {mode}: p50 {row['p50_ms']} p99 {row['p99_ms']}", flush=True)
        with SqliteDocumentStore(path, inner) as store:
            _first_search(store, queries[0])
            for fname, flt in filters.items():
                times, avg_hits = _time_searches(store, queries, "hybrid", flt)
                row = {
                    "chunks": built["chunks"],
                    "size": size,
                    "filter": fname,
                    "mode": "hybrid",
                    "embedding": "included",
                    **c.percentiles(times),
                    "avg_hits": round(avg_hits, 2),
                    "load_avg_1min": round(os.getloadavg()[0], 2),
                }
                rows.append(row)
                print(
                    f"[latency] {size} {fname} hybrid end-to-end: p50 {row['p50_ms']} p99 {row['p99_ms']}", flush=True
                )
    cached.close()

    big = [r for r in rows if r["size"] == "100k" and r["mode"] == "hybrid" and r["embedding"] == "excluded"]
    targets = {
        "hybrid_100k_p50_le_10ms_embedding_excluded": all(r["p50_ms"] <= 10 for r in big),
        "hybrid_100k_p99_le_30ms_embedding_excluded": all(r["p99_ms"] <= 30 for r in big),
        "worst_hybrid_100k_p50_ms": max(r["p50_ms"] for r in big),
        "worst_hybrid_100k_p99_ms": max(r["p99_ms"] for r in big),
    }
    payload = {
        "benchmark": "latency",
        "machine": info,
        "config": {
            "seed": SEED,
            "queries": N_QUERIES,
            "warmup_queries": N_WARMUP,
            "k": K,
            "candidates_per_retriever": "store default max(50, 4k) = 50",
            "query_source": "PubMedQA dev questions + MedQuAD questions (seeded sample)",
            "filters": {k: v.model_dump(mode="json", exclude_defaults=True) for k, v in filters.items()},
            "dense": "exact brute-force cosine (NumPy), vector recall vs exact = 1.0 by construction; no ANN index",
        },
        "stores": stores,
        "query_embedding": embed_stats,
        "rows": rows,
        "targets": targets,
        "benchmark_seconds": round(time.perf_counter() - started, 1),
    }
    cols = [
        "chunks",
        "filter",
        "mode",
        "embedding",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "mean_ms",
        "avg_hits",
        "load_avg_1min",
    ]
    md = [
        "# Search-latency benchmark\n",
        c.machine_md(info),
        f"\n{N_QUERIES} real questions (after {N_WARMUP} warm-up), k={K}, one query at a time, single thread. "
        "`embedding excluded`: the query vector is precomputed, so the time is FTS5 BM25 + exact dense + RRF + "
        "hydrating hits from SQLite. `embedding included`: hybrid search with the live MiniLM embedder. Dense "
        "search is exact brute force: vector recall vs exact = 1.0 (no ANN index).\n",
        f"\nQuery embedding alone (MiniLMEmbedder, {info['embedder_precision']}, one query): "
        f"p50 {embed_stats['p50_ms']} ms, p95 {embed_stats['p95_ms']} ms, p99 {embed_stats['p99_ms']} ms.\n",
        "\n",
        c.md_table(rows, cols),
        "\nStores: "
        + "; ".join(
            f"{k}: {v['chunks']} chunks, {v['records']} records ({v['padded_records']} padded copies)"
            for k, v in stores.items()
        )
        + ".\n",
        f"\nTargets at 100k (hybrid, embedding excluded): p50 <= 10 ms: "
        f"{'met' if targets['hybrid_100k_p50_le_10ms_embedding_excluded'] else 'MISSED'} (worst filter "
        f"{targets['worst_hybrid_100k_p50_ms']} ms); p99 <= 30 ms: "
        f"{'met' if targets['hybrid_100k_p99_le_30ms_embedding_excluded'] else 'MISSED'} (worst "
        f"{targets['worst_hybrid_100k_p99_ms']} ms).\n",
    ]
    c.write_results("latency", payload, "\n".join(md))
    print(json.dumps(targets), flush=True)


def _first_search(store: Any, text: str) -> float:
    """The untimed first search (loads the dense matrix into memory); returns its milliseconds."""
    from sage_health.data.store.protocol import SearchQuery

    t0 = time.perf_counter()
    store.search(SearchQuery(text=text, k=K, mode="hybrid"))
    return (time.perf_counter() - t0) * 1000.0


if __name__ == "__main__":
    sys.exit(main())
