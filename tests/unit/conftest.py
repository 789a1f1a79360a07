"""Unit tests need no shared data and no real model, and all of them run in under a minute (``make test-unit``).

The fixtures that would break that rule fail here with the reason, and an autouse guard makes loading a real
model (MiniLM on torch or ONNX, SmolLM2) fail too, so the rule cannot rot silently: a test that needs them
belongs in ``tests/integration``. Tests that need a store get one with the deterministic
:class:`~sage_health.testing.embedders.HashingEmbedder` (fine for store mechanics, not for retrieval quality).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from sage_health.data.store.sqlite import SqliteDocumentStore
from sage_health.testing.embedders import HashingEmbedder

MOVE = "move the test to tests/integration (see tests/unit/conftest.py)"


def _refuse(what: str) -> NoReturn:
    message = f"a unit test asked for {what}; unit tests need no shared data and no real model: {MOVE}"
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    _refuse("the shared data (`data_dir` fixture, SAGE_DATA_DIR)")


@pytest.fixture(scope="session")
def embedder() -> Any:
    _refuse("the real MiniLM embedder (`embedder` fixture); a store for mechanics can use `hashing_embedder`")


@pytest.fixture(scope="session")
def smollm2_cache() -> Path:
    _refuse("the real SmolLM2 model (`smollm2_cache` fixture)")


@pytest.fixture(scope="session")
def hashing_embedder() -> HashingEmbedder:
    """A deterministic, model-free embedder (word + character n-gram hashing)."""
    return HashingEmbedder()


@pytest.fixture
def store(tmp_path: Path, hashing_embedder: HashingEmbedder) -> Iterator[SqliteDocumentStore]:
    """A fresh real SQLite store in a temp dir, embedding with the hashing embedder."""
    with SqliteDocumentStore(tmp_path / "store" / "sage.db", hashing_embedder) as s:
        yield s


def _model_refused(name: str) -> Any:
    def refuse(*_args: object, **_kwargs: object) -> NoReturn:
        _refuse(f"the real {name} model (loaded directly, not through a fixture)")

    return refuse


@pytest.fixture(autouse=True)
def _no_real_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading MiniLM (torch or ONNX) or SmolLM2 in a unit test fails with the rule instead of taking minutes."""
    from sage_health.data.embed import MiniLMEmbedder
    from sage_health.data.embed_onnx import OnnxMiniLMEmbedder
    from sage_health.models.generation import transformers_backend

    monkeypatch.setattr(MiniLMEmbedder, "_model", _model_refused("all-MiniLM-L6-v2"))
    monkeypatch.setattr(OnnxMiniLMEmbedder, "_runner", _model_refused("all-MiniLM-L6-v2 (ONNX)"))
    monkeypatch.setattr(transformers_backend, "load_smollm2", _model_refused("SmolLM2"))
    lora = sys.modules.get("sage_health.models.adaptation.lora")
    if lora is not None:
        monkeypatch.setattr(lora, "load_smollm2", _model_refused("SmolLM2"))
