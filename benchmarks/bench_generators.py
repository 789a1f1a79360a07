"""Generator backends side by side on the same SmolLM2-135M-Instruct weights: our default ``smollm2``
(transformers, GGUF de-quantised to float32) vs ``llamacpp`` (llama.cpp on the Q4_1 GGUF; the peer), and the
``extractive`` baseline for scale.

Each backend runs in a fresh child process (peak RSS measured): cold load time, then greedy decoding of the
impression for the first 12 IU X-ray R2Gen-train findings (max 48 new tokens). Reported: load seconds, decode
tokens/s (completion tokens / generation seconds), mean latency per item, peak RSS.
Writes results/<date>_generators.{json,md} and results/latest_generators.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import _common as c

N_ITEMS = 12
MAX_NEW = 48


def _prompts(data: Path) -> list[str]:
    ann = json.loads((data / "iu_xray" / "r2gen_annotation.json").read_text(encoding="utf-8"))
    return [e["report"] for e in ann["train"][:N_ITEMS]]


def child(backend: str, result: Path) -> None:
    from sage_health.core.config import Settings
    from sage_health.models.generation.base import GenerationParams
    from sage_health.models.generation.factory import build_generator
    from sage_health.models.generation.prompts import IMPRESSION_FROM_FINDINGS

    settings = Settings(store=c.WORK_DIR / "generators", model_cache_dir=c.WORK_DIR / "models")
    gen = build_generator(backend, settings, {"n_ctx": 2048} if backend == "llamacpp" else {})
    prompts = _prompts(c.data_dir())
    params = GenerationParams(max_new_tokens=MAX_NEW)
    t0 = time.perf_counter()
    gen.generate(IMPRESSION_FROM_FINDINGS.messages(prompts[0]), GenerationParams(max_new_tokens=1))
    load_s = time.perf_counter() - t0
    tokens, gen_s, lat = 0, 0.0, []
    for text in prompts:
        out = gen.generate(IMPRESSION_FROM_FINDINGS.messages(text), params)
        tokens += out.completion_tokens
        gen_s += out.latency_s
        lat.append(out.latency_s)
    result.write_text(
        json.dumps(
            {
                "backend": backend,
                "model": f"{gen.info.model_id}@{gen.info.version}",
                "load_and_first_token_s": round(load_s, 2),
                "items": len(prompts),
                "completion_tokens": tokens,
                "decode_tokens_per_s": round(tokens / gen_s, 1) if gen_s else None,
                "mean_latency_s": round(sum(lat) / len(lat), 3),
                "child_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        ),
        encoding="utf-8",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", choices=("smollm2", "llamacpp", "extractive"))
    parser.add_argument("--result", type=Path)
    args = parser.parse_args()
    c.setup_env()
    if args.child:
        child(args.child, args.result)
        return 0
    rows: list[dict[str, Any]] = []
    backends = ["smollm2", "llamacpp", "extractive"]
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python is not installed (`make llamacpp`): the llama.cpp peer is skipped", file=sys.stderr)
        backends.remove("llamacpp")
    work = c.WORK_DIR / "generators"
    work.mkdir(parents=True, exist_ok=True)
    for backend in backends:
        row = c.run_child(Path(__file__), ["--child", backend], work / f"{backend}.json")
        rows.append(row)
        print(row, flush=True)
    payload = {"benchmark": "generators", "machine": c.machine_info(), "max_new_tokens": MAX_NEW, "rows": rows}
    cols = ["backend", "model", "load_and_first_token_s", "decode_tokens_per_s", "mean_latency_s", "child_peak_rss_mib"]
    md = [
        "# Generator backends on the same SmolLM2-135M-Instruct weights",
        "",
        f"Greedy decoding, impression from findings for {N_ITEMS} IU X-ray R2Gen-train studies, max {MAX_NEW} new"
        " tokens; each backend in a fresh process.",
        "",
        c.md_table(rows, cols),
        "",
        c.machine_md(payload["machine"]),
    ]
    c.write_results("generators", payload, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
