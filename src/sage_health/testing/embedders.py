"""A small deterministic :class:`~sage_health.data.embed.Embedder` for unit tests.

:class:`HashingEmbedder` needs no model and no data: each lower-cased word and its padded character n-grams are
hashed (blake2b, so vectors are equal across processes and machines) into a fixed number of signed buckets, and
the vector is L2-normalised. Texts that share words or word pieces get a positive cosine; a paraphrase without
shared words does not. Use it for tests that need a store, not for tests of retrieval quality (those use the real
MiniLM embedder in ``tests/integration``)::

    with SqliteDocumentStore(tmp_path / "sage.db", HashingEmbedder()) as store:
        ...
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from sage_health.data.embed import Vectors

_WORD = re.compile(r"\w+")


class HashingEmbedder:
    """Word and character n-gram feature hashing into ``dim`` buckets (default 256), L2-normalised, float32.

    Deterministic and stateless; a text with no word characters maps to a fixed unit vector.
    """

    def __init__(self, dim: int = 256, ngram_range: tuple[int, int] = (3, 4)) -> None:
        low, high = ngram_range
        if dim < 2:
            raise ValueError(f"dim must be at least 2, got {dim}")
        if not 1 <= low <= high:
            raise ValueError(f"ngram_range must be (low, high) with 1 <= low <= high, got {ngram_range}")
        self._dim = dim
        self._ngrams = (low, high)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def model_id(self) -> str:
        low, high = self._ngrams
        return f"hashing-w1-c{low}{high}-d{self._dim}@sage-health-testing"

    def _features(self, text: str) -> list[str]:
        low, high = self._ngrams
        features: list[str] = []
        for word in _WORD.findall(text.lower()):
            features.append(f"w:{word}")
            padded = f"<{word}>"
            for n in range(low, high + 1):
                features.extend(f"c:{padded[i : i + n]}" for i in range(len(padded) - n + 1))
        return features

    def _vector(self, text: str) -> Vectors:
        vec = np.zeros(self._dim, dtype=np.float64)
        for feature in self._features(text) or ["empty"]:
            digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
            bucket = int.from_bytes(digest[:7], "little") % self._dim
            vec[bucket] += 1.0 if digest[7] & 1 else -1.0
        norm = float(np.linalg.norm(vec))
        if norm == 0.0:  # every feature cancelled out: fall back to the fixed vector of empty text
            return self._vector("")
        unit: Vectors = (vec / norm).astype(np.float32)
        return unit

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        return np.stack([self._vector(t) for t in texts])
