"""Run every benchmark in order (``make bench``): ingest, retrieval quality, search latency, labeler
validation, generator backends, generation/QA baselines, the radiology workflow, de-identification, one LoRA
adaptation on the IU X-ray train split (~20 min) and the co-evolution case study (~45 min).

The ingest benchmark runs first: its store is reused by the latency benchmark, and its vectors seed the
embedding cache (benchmarks/.work/embed-cache.db) so the retrieval and latency stores need no model calls.
Each benchmark writes results/<date>_<name>.json + .md and results/latest_<name>.json + .md.

``--only NAME`` runs one benchmark (ingest | retrieval | latency | labeler | generators | baselines | radiology |
deid | lora | coevolve).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import _common as c

BENCHMARKS = (
    "ingest",
    "retrieval",
    "latency",
    "labeler",
    "generators",
    "baselines",
    "radiology",
    "deid",
    "lora",
    "coevolve",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=BENCHMARKS, action="append")
    args = parser.parse_args()
    c.setup_env()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    for name in args.only or BENCHMARKS:
        t0 = time.perf_counter()
        print(f"=== bench_{name} ===", flush=True)
        script = Path(__file__).resolve().parent / f"bench_{name}.py"
        rc = subprocess.run([sys.executable, str(script)], check=False).returncode  # noqa: S603 - our own script
        timings[name] = round(time.perf_counter() - t0, 1)
        if rc != 0:
            print(f"bench_{name} failed with exit code {rc}", file=sys.stderr)
            return rc
    total = round(time.perf_counter() - started, 1)
    summary = {"seconds_by_benchmark": timings, "total_seconds": total}
    c.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (c.RESULTS_DIR / "latest_run_all.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
