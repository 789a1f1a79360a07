"""Probe: MiniLM on ONNX Runtime vs torch -- throughput, peak RSS and vector agreement.

Every run is a clean child process (``--child``) that builds one embedder variant, embeds the same ~3,000
real chunk texts (IU X-ray report sections and MedQuAD answers, chunked with our Chunker) in calls of
512 texts, and reports texts/s (model load and one warm-up call excluded) and its peak RSS: the kernel
high-water mark of its own address space (``VmHWM``) and ``ru_maxrss``. The parent imports neither torch nor
onnxruntime, so it does not inflate the children's numbers. Variants run interleaved, ``--reps`` times.

Agreement is measured against the torch fp32 vectors: max abs difference, min / mean cosine. Retrieval
impact: the MedQuAD questions of the sampled answers are embedded by each variant and searched (cosine
top-10) over the chunk vectors; we report hit@10 (a chunk of the question's own answer in the top 10) and
the mean overlap of each variant's top-10 with torch fp32's.

    .venv/bin/python benchmarks/probe_onnx_embedder.py [--n 3000] [--reps 2] [--variants a,b] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SAGE_DATA_DIR", ROOT.parent / "shared" / "data"))
ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
    "TOKENIZERS_PARALLELISM": "false",
}
CALL_SIZE = 512
"""Texts per embed() call (the ingest pipeline embeds the chunks of a write batch per call)."""

# ONNX options not named in a variant take OnnxMiniLMEmbedder's defaults (arena on, patterns off, no spinning).
VARIANTS: dict[str, dict[str, Any]] = {
    "torch-bf16": {"kind": "torch", "precision": "bf16"},
    "torch-fp32": {"kind": "torch", "precision": "fp32"},
    "onnx-fp32": {"kind": "onnx", "precision": "fp32"},
    "onnx-fp32-arena": {"kind": "onnx", "precision": "fp32", "cpu_mem_arena": True},
    "onnx-fp32-noarena": {"kind": "onnx", "precision": "fp32", "cpu_mem_arena": False},
    "onnx-fp32-pattern": {"kind": "onnx", "precision": "fp32", "cpu_mem_arena": False, "mem_pattern": True},
    "onnx-fp32-arena-pattern": {"kind": "onnx", "precision": "fp32", "cpu_mem_arena": True, "mem_pattern": True},
    "onnx-fp32-spin": {"kind": "onnx", "precision": "fp32", "cpu_mem_arena": False, "allow_spinning": True},
    "onnx-fp32-notrim": {"kind": "onnx", "precision": "fp32", "no_trim": True},
    "onnx-fp32-nobudget": {"kind": "onnx", "precision": "fp32", "attention_budget": 0},
    "onnx-int8": {"kind": "onnx", "precision": "int8"},
}
REFERENCE = "torch-fp32"


def _clean(text: Any) -> str:
    return " ".join(str(text or "").split())


def build_texts(n: int, seed: int) -> dict[str, Any]:
    """~n chunk texts, half IU X-ray report sections, half MedQuAD answers, + MedQuAD questions as queries."""
    from sage_health.data.chunking import Chunker
    from sage_health.data.schema import Section

    rng = random.Random(seed)
    chunker = Chunker()
    with (DATA / "iu_xray" / "reports.jsonl").open(encoding="utf-8") as handle:
        reports = [json.loads(line) for line in handle if line.strip()]
    with gzip.open(DATA / "medquad" / "medquad.jsonl.gz", "rt", encoding="utf-8") as handle:
        answers = [json.loads(line) for line in handle if line.strip()]
    rng.shuffle(reports)
    rng.shuffle(answers)
    texts: list[str] = []
    owners: list[str] = []
    for report in reports:
        if len(texts) >= n // 2:
            break
        sections = [
            Section(name=name, text=_clean(report.get(name)))
            for name in ("indication", "comparison", "findings", "impression")
            if _clean(report.get(name))
        ]
        for chunk in chunker.chunk(sections):
            texts.append(chunk.text)
            owners.append(f"iu/{report['uid']}")
    queries: list[tuple[str, str]] = []
    for qa in answers:
        if len(texts) >= n:
            break
        answer = _clean(qa.get("answer"))
        if not answer:
            continue
        owner = f"medquad/{qa['id']}"
        for chunk in chunker.chunk([Section(name="answer", text=answer)], title=_clean(qa.get("focus")) or None):
            texts.append(chunk.text)
            owners.append(owner)
        if qa.get("question"):
            queries.append((_clean(qa["question"]), owner))
    return {
        "seed": seed,
        "texts": texts[:n],
        "owners": owners[:n],
        "queries": [q for q, o in queries if o in set(owners[:n])],
        "query_owners": [o for q, o in queries if o in set(owners[:n])],
    }


# -- child ---------------------------------------------------------------------------------------------------


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def child(variant: str, texts_file: Path, cache_dir: Path, out_prefix: Path) -> dict[str, Any]:
    import resource

    spec = VARIANTS[variant]
    data = json.loads(texts_file.read_text(encoding="utf-8"))
    texts, queries = data["texts"], data["queries"]
    t0 = time.perf_counter()
    embedder: Any
    if spec["kind"] == "torch":
        from sage_health.data.embed import MiniLMEmbedder

        embedder = MiniLMEmbedder(batch_size=32, precision=spec["precision"])
    else:
        from sage_health.data import embed_onnx

        if spec.get("no_trim"):
            embed_onnx._release_freed_memory = lambda: None
        options = {
            k: spec[k] for k in ("cpu_mem_arena", "mem_pattern", "allow_spinning", "attention_budget") if k in spec
        }
        embedder = embed_onnx.OnnxMiniLMEmbedder(cache_dir, batch_size=32, precision=spec["precision"], **options)
        embedder.load()
        if embedder.exports:
            raise SystemExit("the ONNX model was exported inside a measured run; run the setup first")
    embedder.embed(texts[:32])  # warm-up
    load_s = time.perf_counter() - t0
    rss_after_load = _status_mib("VmRSS")
    embed_s = 0.0
    parts = []
    for i in range(0, len(texts), CALL_SIZE):
        t = time.perf_counter()
        parts.append(embedder.embed(texts[i : i + CALL_SIZE]))
        embed_s += time.perf_counter() - t
    vectors = np.concatenate(parts)
    query_vectors = embedder.embed(queries)
    np.save(f"{out_prefix}.texts.npy", vectors)
    np.save(f"{out_prefix}.queries.npy", query_vectors)
    heavy = sorted(
        m for m in ("torch", "transformers", "sentence_transformers", "onnx", "onnxruntime") if m in sys.modules
    )
    return {
        "variant": variant,
        "texts": len(texts),
        "load_s": round(load_s, 2),
        "embed_s": round(embed_s, 2),
        "texts_per_s": round(len(texts) / embed_s, 1),
        "rss_after_load_mib": round(rss_after_load, 1),
        "peak_rss_mib": round(_status_mib("VmHWM"), 1),
        "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "modules_loaded": heavy,
        "settings": {k: v for k, v in spec.items() if k != "kind"},
        "precision": embedder.precision,
        "model_id": embedder.model_id,
    }


# -- parent --------------------------------------------------------------------------------------------------


def run_child(args: list[str]) -> dict[str, Any]:
    env = {**os.environ, **ENV}
    done = subprocess.run(  # noqa: S603 - this script, our interpreter, fixed arguments
        [sys.executable, str(Path(__file__).resolve()), *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def agreement(vectors: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    cosine = (vectors * reference).sum(axis=1)
    return {
        "max_abs_diff": float(np.abs(vectors - reference).max()),
        "min_cosine": float(cosine.min()),
        "mean_cosine": float(cosine.mean()),
    }


def retrieval(
    texts: np.ndarray, queries: np.ndarray, owners: list[str], query_owners: list[str], ref_top: np.ndarray | None
) -> tuple[dict[str, float], np.ndarray]:
    scores = queries @ texts.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    owner_arr = np.asarray(owners)
    hits = [query_owners[i] in set(owner_arr[top[i]]) for i in range(len(query_owners))]
    out = {"hit_at_10": float(np.mean(hits))}
    if ref_top is not None:
        out["top10_overlap_vs_fp32"] = float(
            np.mean([len(set(top[i]) & set(ref_top[i])) / 10.0 for i in range(len(top))])
        )
    return out, top


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--texts-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out-prefix", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=3000, help="chunk texts to embed (default 3000)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--reps", type=int, default=2, help="child runs per variant, interleaved (default 2)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "probe_onnx_embedder")
    args = parser.parse_args()
    cache_dir = args.workdir / "onnx"
    if args.child:
        print(json.dumps(child(args.child, args.texts_file, cache_dir, args.out_prefix)))
        return

    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    if REFERENCE not in names:
        names.insert(0, REFERENCE)
    args.workdir.mkdir(parents=True, exist_ok=True)
    texts_file = args.workdir / f"texts-{args.n}-{args.seed}.json"
    if not texts_file.exists():
        texts_file.write_text(json.dumps(build_texts(args.n, args.seed)), encoding="utf-8")
    data = json.loads(texts_file.read_text(encoding="utf-8"))
    print(f"[probe] {len(data['texts'])} chunk texts, {len(data['queries'])} queries; load {os.getloadavg()}")

    # one-time exports outside the measured runs
    precisions = sorted({VARIANTS[v]["precision"] for v in names if VARIANTS[v]["kind"] == "onnx"})
    for precision in precisions:
        code = (
            "from sage_health.data.embed_onnx import OnnxMiniLMEmbedder as E; import sys; "
            f"e = E(sys.argv[1], precision={precision!r}).load(); print(e.exports)"
        )
        t = time.perf_counter()
        done = subprocess.run(  # noqa: S603 - our interpreter, fixed code
            [sys.executable, "-c", code, str(cache_dir)], env={**os.environ, **ENV}, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"ONNX {precision} setup failed:\n{done.stderr[-3000:]}")
        print(f"[probe] onnx {precision} ready ({time.perf_counter() - t:.1f} s, exports={done.stdout.strip()})")

    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in names}
    for rep in range(args.reps):
        for variant in names:
            prefix = args.workdir / f"{variant}.rep{rep}"
            result = run_child(
                [
                    *("--child", variant, "--texts-file", str(texts_file)),
                    *("--out-prefix", str(prefix), "--workdir", str(args.workdir)),
                ]
            )
            result["load_average_1m"] = round(os.getloadavg()[0], 2)
            runs[variant].append(result)
            print(
                f"[probe] rep {rep} {variant}: {result['texts_per_s']} texts/s, peak RSS {result['peak_rss_mib']} MiB "
                f"(ru_maxrss {result['ru_maxrss_mib']}), load {result['load_s']} s, modules {result['modules_loaded']}",
                flush=True,
            )

    ref_texts = np.load(args.workdir / f"{REFERENCE}.rep0.texts.npy")
    ref_queries = np.load(args.workdir / f"{REFERENCE}.rep0.queries.npy")
    _, ref_top = retrieval(ref_texts, ref_queries, data["owners"], data["query_owners"], None)
    rows = []
    for variant in names:
        vecs = np.load(args.workdir / f"{variant}.rep0.texts.npy")
        qvecs = np.load(args.workdir / f"{variant}.rep0.queries.npy")
        tps = [r["texts_per_s"] for r in runs[variant]]
        row = {
            "variant": variant,
            "texts/s best": max(tps),
            "texts/s median": float(np.median(tps)),
            "peak RSS MiB (VmHWM, max)": max(r["peak_rss_mib"] for r in runs[variant]),
            "ru_maxrss MiB": max(r["ru_maxrss_mib"] for r in runs[variant]),
            "RSS after load MiB": runs[variant][0]["rss_after_load_mib"],
            "load s": runs[variant][0]["load_s"],
            **{k: round(v, 7) for k, v in agreement(vecs, ref_texts).items()},
            **{
                k: round(v, 4)
                for k, v in retrieval(vecs, qvecs, data["owners"], data["query_owners"], ref_top)[0].items()
            },
            "modules": "+".join(runs[variant][0]["modules_loaded"]),
        }
        rows.append(row)
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    table = "\n".join(lines)
    (args.workdir / "results.json").write_text(json.dumps({"rows": rows, "runs": runs}, indent=1), encoding="utf-8")
    (args.workdir / "results.md").write_text(table + "\n", encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
