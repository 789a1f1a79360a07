"""Retrieval evaluation with real components: the persistent embedding cache around the real MiniLM embedder, and
one small real evaluation on PubMedQA + MedQuAD items taken from the shared data at run time."""

from __future__ import annotations

import gzip
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from sage_health.core.errors import ModelError
from sage_health.core.hashing import sha256_file
from sage_health.data.embed import CachedEmbedder, Embedder, MiniLMEmbedder, Vectors
from sage_health.data.retrieval_eval import evaluate_retrieval, load_eval_corpus

# ---------------------------------------------------------------------- CachedEmbedder


class CountingEmbedder:
    """The real embedder, counting the texts it is asked to embed."""

    def __init__(self, inner: MiniLMEmbedder) -> None:
        self.inner = inner
        self.texts: list[str] = []

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def precision(self) -> str:
        return self.inner.precision

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.texts.extend(texts)
        return self.inner.embed(texts)


TEXTS = [
    "No acute cardiopulmonary abnormality.",
    "Mild cardiomegaly with small bilateral pleural effusions.",
    "What are the symptoms of glaucoma?",
    "No acute cardiopulmonary abnormality.",  # a duplicate: embedded once
]


def test_cached_embedder_round_trip(tmp_path: Path) -> None:
    inner = MiniLMEmbedder(precision="fp32")
    counting = CountingEmbedder(inner)
    cache_path = tmp_path / "cache" / "embeddings.db"
    expected = inner.embed(TEXTS)
    with CachedEmbedder(counting, cache_path) as cache:
        assert isinstance(cache, Embedder)
        assert (cache.dim, cache.model_id) == (inner.dim, inner.model_id)
        assert cache.model_key == f"{inner.model_id}#fp32"
        first = cache.embed(TEXTS)
        assert first.shape == (4, 384)
        assert first.dtype == np.float32
        np.testing.assert_allclose(first, expected, atol=1e-5)
        assert counting.texts == TEXTS[:3]  # distinct texts only, in order
        assert (cache.hits, cache.misses) == (1, 3)
        assert len(cache) == 3
        second = cache.embed(list(reversed(TEXTS)))
        np.testing.assert_array_equal(second, first[::-1])
        assert counting.texts == TEXTS[:3]  # the second call embedded nothing
        assert (cache.hits, cache.misses) == (5, 3)
    # persisted: a new instance on the same file embeds nothing either
    counting.texts.clear()
    with CachedEmbedder(counting, cache_path) as again:
        np.testing.assert_array_equal(again.embed(TEXTS[:2]), first[:2])
        assert counting.texts == []
        # a new text is embedded, alone
        again.embed([*TEXTS[:2], "Right lower lobe pneumonia."])
        assert counting.texts == ["Right lower lobe pneumonia."]
        assert len(again) == 4
    assert cache.embed([]).shape == (0, 384)


def test_cached_embedder_keys_vectors_by_model_and_precision(tmp_path: Path) -> None:
    path = tmp_path / "embeddings.db"
    fp32 = CountingEmbedder(MiniLMEmbedder(precision="fp32"))
    bf16 = CountingEmbedder(MiniLMEmbedder(precision="bf16"))
    with CachedEmbedder(fp32, path) as a:
        a.embed(TEXTS[:2])
    with CachedEmbedder(bf16, path) as b:
        b.embed(TEXTS[:2])
        assert bf16.texts == TEXTS[:2]  # fp32 vectors are never served for bf16
        assert len(b) == 2
    rows = sqlite3.connect(path).execute("SELECT model_key, count(*) FROM embeddings GROUP BY 1 ORDER BY 1").fetchall()
    assert [(k.rsplit("#", 1)[1], n) for k, n in rows] == [("bf16", 2), ("fp32", 2)]


def test_cached_embedder_put_checks_dimension(tmp_path: Path) -> None:
    counting = CountingEmbedder(MiniLMEmbedder(precision="fp32"))
    with CachedEmbedder(counting, tmp_path / "e.db") as cache:
        with pytest.raises(ModelError, match="has 3 values, expected 384"):
            cache.put([("ab" * 32, np.ones(3, dtype=np.float32))])
        assert len(cache) == 0
        vec = np.zeros(384, dtype=np.float32)
        vec[0] = 1.0
        from sage_health.core.hashing import sha256_text

        assert cache.put([(sha256_text("seeded text"), vec)]) == 1
        np.testing.assert_array_equal(cache.embed(["seeded text"])[0], vec)
        assert counting.texts == []


# ---------------------------------------------------------------------- real evaluation


def _small_files(data_dir: Path, tmp_path: Path, n_pubmedqa: int = 50, n_medquad: int = 200) -> tuple[Path, Path]:
    pubmedqa = json.loads((data_dir / "pubmedqa" / "ori_pqal_dev.json").read_text(encoding="utf-8"))
    keys = sorted(pubmedqa)[:n_pubmedqa]
    pub = tmp_path / "ori_pqal_small.json"
    pub.write_text(json.dumps({k: pubmedqa[k] for k in keys}), encoding="utf-8")
    with gzip.open(data_dir / "medquad" / "medquad.jsonl.gz", "rt", encoding="utf-8") as handle:
        lines = [next(handle) for _ in range(n_medquad)]
    mq = tmp_path / "medquad_small.jsonl"
    mq.write_text("".join(lines), encoding="utf-8")
    return pub, mq


@pytest.mark.integration
def test_eval_corpus_indexes_abstracts_and_answers_only(data_dir: Path, tmp_path: Path) -> None:
    pub, mq = _small_files(data_dir, tmp_path)
    corpus = load_eval_corpus(pub, mq, medquad_sample=60, seed=13)
    assert len(corpus.documents) == 250
    assert {d.resource_type for d in corpus.documents} == {"KnowledgeDocument"}
    assert len(corpus.tasks["pubmedqa"]) == 50
    assert len(corpus.tasks["medquad"]) == 60
    doc_ids = {d.id for d in corpus.documents}
    assert all(q.relevant_id in doc_ids for qs in corpus.tasks.values() for q in qs)
    # the sample is reproducible and depends on the seed
    again = load_eval_corpus(pub, mq, medquad_sample=60, seed=13)
    other = load_eval_corpus(pub, mq, medquad_sample=60, seed=14)
    assert again.tasks["medquad"] == corpus.tasks["medquad"]
    assert other.tasks["medquad"] != corpus.tasks["medquad"]


@pytest.mark.integration
@pytest.mark.slow
def test_small_real_evaluation(data_dir: Path, tmp_path: Path, embedder: MiniLMEmbedder) -> None:
    pub, mq = _small_files(data_dir, tmp_path)
    work = tmp_path / "work"
    cache = tmp_path / "cache.db"
    result = evaluate_retrieval(
        pub, mq, medquad_sample=100, seed=13, work_dir=work, embedder=embedder, embedding_cache=cache
    )
    assert result.n_docs == 250
    assert result.n_chunks >= 250
    assert result.config.pubmedqa_file.sha256 == sha256_file(pub)
    assert result.config.medquad_file is not None
    assert result.config.medquad_file.sha256 == sha256_file(mq)
    assert (result.config.seed, result.config.medquad_sampled) == (13, 100)
    assert result.config.embedder_model_id == embedder.model_id
    assert set(result.tasks) == {"pubmedqa", "medquad"}
    for task in result.tasks.values():
        assert set(task.modes) == {"bm25", "dense", "hybrid"}
        for m in task.modes.values():
            assert m.n_queries == task.n_queries
            values = [*m.recall.values(), m.mrr, m.ndcg_at_10]
            assert all(0.0 <= v <= 1.0 for v in values)
            assert m.recall[1] <= m.recall[5] <= m.recall[10]
    assert result.tasks["pubmedqa"].n_queries == 50
    # measured here: every mode finds 49 of the 50 abstracts in the top 10 (0.98); hybrid MRR 0.98
    pub_hybrid = result.tasks["pubmedqa"].modes["hybrid"]
    assert pub_hybrid.recall[10] >= 0.9
    assert pub_hybrid.mrr >= 0.85
    # MedQuAD (100 questions over 250 documents): hybrid recall@10 0.98, MRR ~0.69 measured
    mq_hybrid = result.tasks["medquad"].modes["hybrid"]
    assert mq_hybrid.recall[10] >= 0.85
    assert mq_hybrid.mrr >= 0.5
    # only KnowledgeDocuments were indexed (never the PubMedQA questions)
    conn = sqlite3.connect(work / "retrieval-eval.db")
    types = conn.execute("SELECT DISTINCT resource_type FROM records").fetchall()
    assert types == [("KnowledgeDocument",)]
    conn.close()
    # a re-run reuses every cached vector (documents and queries) and gives the same figures
    again = evaluate_retrieval(
        pub, mq, medquad_sample=100, seed=13, work_dir=work, embedder=embedder, embedding_cache=cache
    )
    for name, task in result.tasks.items():
        for mode, m in task.modes.items():
            other = again.tasks[name].modes[mode]
            assert (other.recall, other.mrr, other.ndcg_at_10) == (m.recall, m.mrr, m.ndcg_at_10)
