"""Shared fixtures: the real public data directory, the real offline embedder, a real SQLite store.

Markers follow the folders (``unit``, ``integration``, ``e2e``: added at collection), and every ``SAGE_*``
environment variable is cleared for each test, so a developer's shell settings never leak in.
"""

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
TESTS_ROOT = REPO_ROOT / "tests"

# Read once, before the autouse fixture below clears SAGE_* for every test; `data_dir` resolves it.
SAGE_DATA_DIR = os.environ.get("SAGE_DATA_DIR")

FOLDER_MARKERS = {"unit": "unit", "integration": "integration", "e2e": "e2e"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by its folder: tests/unit -> unit, tests/integration -> integration, tests/e2e -> e2e."""
    for item in items:
        try:
            folder = item.path.relative_to(TESTS_ROOT).parts[0]
        except ValueError:
            continue
        marker = FOLDER_MARKERS.get(folder)
        if marker is not None and item.get_closest_marker(marker) is None:
            item.add_marker(marker)


@pytest.fixture(autouse=True)
def _clear_sage_env(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """No SAGE_* variable of the calling shell reaches a test (tests set what they need with monkeypatch/env=).

    The one exception is where the public data lives: integration and e2e tests get ``SAGE_DATA_DIR`` as an
    absolute path, so the commands they run in-process or in a subprocess find the data whatever the working
    directory; unit tests get nothing (they must not need the data)."""
    for name in [n for n in os.environ if n.startswith("SAGE_")]:
        monkeypatch.delenv(name)
    if "unit" not in request.node.keywords:
        monkeypatch.setenv("SAGE_DATA_DIR", str(Path(SAGE_DATA_DIR or REPO_ROOT.parent / "shared" / "data").resolve()))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared public data (SAGE_DATA_DIR, default ../shared/data). Missing data fails, never skips."""
    path = Path(SAGE_DATA_DIR or REPO_ROOT.parent / "shared" / "data").resolve()
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
