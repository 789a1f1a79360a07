"""Shared fixtures: the real public data directory, the real offline embedder, a real SQLite store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# Before torch loads: passive OpenMP waits (spinning threads slow torch 5-10x on shared cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

from sage_health.data.embed import MiniLMEmbedder
from sage_health.data.store.sqlite import SqliteDocumentStore

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared public data (SAGE_DATA_DIR, default ../shared/data). Missing data fails, never skips."""
    path = Path(os.environ.get("SAGE_DATA_DIR", REPO_ROOT.parent / "shared" / "data")).resolve()
    if not (path / "iu_xray" / "reports.jsonl").is_file():
        pytest.fail(f"public data not found at {path}; set SAGE_DATA_DIR to the shared data folder")
    return path


@pytest.fixture(scope="session")
def embedder() -> MiniLMEmbedder:
    """The real offline MiniLM embedder (loaded once per test session)."""
    return MiniLMEmbedder()


@pytest.fixture
def store(tmp_path: Path, embedder: MiniLMEmbedder) -> Iterator[SqliteDocumentStore]:
    """A fresh real SQLite store in a temp dir."""
    with SqliteDocumentStore(tmp_path / "store" / "sage.db", embedder) as s:
        yield s


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised LLaMA + locally trained tokenizer, saved once per session."""
    from sage_health.testing.tiny_lm import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the de-quantised SmolLM2 weights are cached for this test session."""
    return tmp_path_factory.mktemp("models")
