"""The test-only HashingEmbedder keeps the Embedder contract: float32 unit rows in input order, deterministic
across instances and processes, and lexical overlap gives a higher cosine than none."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from sage_health.data.embed import Embedder
from sage_health.testing.embedders import HashingEmbedder

TEXTS = [
    "Mild cardiomegaly with small bilateral pleural effusions.",
    "Small left pleural effusion.",
    "Glaucoma damages the optic nerve.",
    "",
    "!!! ---",
]


def test_contract_shape_dtype_unit_norm_and_order() -> None:
    emb = HashingEmbedder()
    assert isinstance(emb, Embedder)
    assert (emb.dim, emb.model_id) == (256, "hashing-w1-c34-d256@sage-health-testing")
    vectors = emb.embed(TEXTS)
    assert vectors.shape == (5, 256)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(emb.embed(TEXTS[::-1])[::-1], vectors)
    np.testing.assert_array_equal(vectors[3], vectors[4])  # no word characters: the same fixed vector
    assert emb.embed([]).shape == (0, 256)


def test_shared_words_score_higher_than_unrelated_text() -> None:
    v = HashingEmbedder().embed(TEXTS[:3])
    assert float(v[0] @ v[1]) > 0.3
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2
    assert float(v[0] @ v[0]) == pytest.approx(1.0)


def test_same_vectors_in_another_process_and_for_another_dim() -> None:
    here = HashingEmbedder(dim=64).embed(TEXTS[:2])
    code = (
        "import sys; from sage_health.testing.embedders import HashingEmbedder as H; "
        "sys.stdout.write(H(dim=64).embed(sys.argv[1:]).tobytes().hex())"
    )
    out = subprocess.run([sys.executable, "-c", code, *TEXTS[:2]], capture_output=True, text=True, check=True)
    np.testing.assert_array_equal(np.frombuffer(bytes.fromhex(out.stdout), dtype=np.float32).reshape(2, 64), here)
    assert HashingEmbedder(dim=64).model_id != HashingEmbedder().model_id


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"dim": 1}, "dim must be at least 2, got 1"), ({"ngram_range": (4, 3)}, r"ngram_range must be \(low, high\)")],
)
def test_bad_parameters_are_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HashingEmbedder(**kwargs)  # type: ignore[arg-type]
