"""OnnxMiniLMEmbedder: the real model exported to ONNX by a subprocess, checked against torch fp32.

Real components only: the installed all-MiniLM-L6-v2, the real export subprocess, onnxruntime, texts from
the shared IU X-ray and MedQuAD data. Two exports run (~10-20 s each): the shared cache and the corrupt copy.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sage_health.core.errors import ModelError
from sage_health.data.embed import Embedder, MiniLMEmbedder
from sage_health.data.embed_onnx import OnnxMiniLMEmbedder, load_tokenizer, model_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def texts(data_dir: Path) -> list[str]:
    """Real report sections and answers of mixed length, one beyond 256 word pieces, and edge cases."""
    out: list[str] = []
    with (data_dir / "iu_xray" / "reports.jsonl").open(encoding="utf-8") as handle:
        for line, _ in zip(handle, range(12), strict=False):
            report = json.loads(line)
            out.extend(str(report[k]) for k in ("findings", "impression") if report.get(k))
    with gzip.open(data_dir / "medquad" / "medquad.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line, _ in zip(handle, range(8), strict=False):
            qa = json.loads(line)
            out.extend([qa["question"], " ".join(qa["answer"].split())])
    assert max(len(load_tokenizer(model_dir()).encode(t).ids) for t in out) == 256  # truncation is exercised
    return [*out, "", "   ", "x"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def onnx_embedder(cache_dir: Path) -> OnnxMiniLMEmbedder:
    embedder = OnnxMiniLMEmbedder(cache_dir).load()
    assert embedder.exports == 1
    return embedder


def test_vectors_match_torch_fp32(onnx_embedder: OnnxMiniLMEmbedder, texts: list[str]) -> None:
    assert isinstance(onnx_embedder, Embedder)
    torch_fp32 = MiniLMEmbedder(precision="fp32")
    got = onnx_embedder.embed(texts)
    expected = torch_fp32.embed(texts)
    assert got.dtype == np.float32
    assert got.shape == (len(texts), 384)
    assert float(np.abs(got - expected).max()) < 1e-5  # measured ~2e-7
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # same model, same vectors: fp32 ONNX shares MiniLMEmbedder's model_id
    assert (onnx_embedder.model_id, onnx_embedder.precision) == (torch_fp32.model_id, "fp32")
    assert onnx_embedder.dim == 384
    assert onnx_embedder.batch_size == 32


def test_empty_input(onnx_embedder: OnnxMiniLMEmbedder) -> None:
    out = onnx_embedder.embed([])
    assert out.shape == (0, 384)
    assert out.dtype == np.float32


def test_order_preserved(onnx_embedder: OnnxMiniLMEmbedder, texts: list[str]) -> None:
    forward = onnx_embedder.embed(texts)
    backward = onnx_embedder.embed(texts[::-1])[::-1]
    np.testing.assert_allclose(forward, backward, atol=1e-5)
    for i in (0, 5, len(texts) - 4):
        np.testing.assert_allclose(onnx_embedder.embed([texts[i]])[0], forward[i], atol=1e-5)
    # small batches and a tight attention budget change batching, not results
    small = OnnxMiniLMEmbedder(onnx_embedder.cache_dir, batch_size=3, threads=1, attention_budget=20_000)
    np.testing.assert_allclose(small.embed(texts), forward, atol=1e-5)
    assert small.exports == 0


def test_cache_reused(onnx_embedder: OnnxMiniLMEmbedder, cache_dir: Path) -> None:
    path = onnx_embedder.model_path
    assert path.parent == cache_dir
    assert path.name.startswith("minilm-")
    assert path.suffix == ".onnx"
    mtime = path.stat().st_mtime_ns
    # other session options: a new session, loaded from the cached file
    second = OnnxMiniLMEmbedder(cache_dir, threads=1, cpu_mem_arena=True).load()
    assert second.exports == 0
    assert second.model_path == path
    assert path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted([path.name, path.with_suffix(".json").name])


def test_no_torch_in_the_embedding_process(onnx_embedder: OnnxMiniLMEmbedder) -> None:
    code = (
        "import sys; from sage_health.data.embed_onnx import OnnxMiniLMEmbedder as E; "
        "e = E(sys.argv[1]); v = e.embed(['no acute disease']); "
        "print(e.exports, v.shape, sorted(m for m in ('torch', 'transformers', 'sentence_transformers', 'onnx') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(onnx_embedder.cache_dir)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    assert done.stdout.strip() == "0 (1, 384) []"


def test_corrupt_cached_model_is_reported_and_reexported(
    onnx_embedder: OnnxMiniLMEmbedder, tmp_path: Path, texts: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt_dir = tmp_path / "cache"
    corrupt_dir.mkdir()
    path = corrupt_dir / onnx_embedder.model_path.name
    shutil.copy(onnx_embedder.model_path.with_suffix(".json"), path.with_suffix(".json"))
    path.write_bytes(onnx_embedder.model_path.read_bytes()[:4096])  # a truncated file
    embedder = OnnxMiniLMEmbedder(corrupt_dir)
    # the loader names the file and the cause
    with pytest.raises(ModelError, match=r"minilm-.*\.onnx: onnxruntime cannot load the model"):
        embedder._open(path)
    # embedding replaces the file with a fresh export and works
    vectors = embedder.embed(texts[:4])
    assert embedder.exports == 1
    assert "is unusable" in capsys.readouterr().err
    np.testing.assert_allclose(vectors, onnx_embedder.embed(texts[:4]), atol=1e-5)
    assert path.stat().st_size == onnx_embedder.model_path.stat().st_size
