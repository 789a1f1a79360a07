"""The in-memory BM25 index ranks like SQLite FTS5's bm25() (same tokens, same statistics, same formula),
applies filters inside the ranking, and follows writes, deletes and other store instances.

Real text: PubMedQA abstracts and MedQuAD answers from the shared data, their own questions as queries.
"""

from __future__ import annotations

import random
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from sage_health.core.errors import ConfigError
from sage_health.data.embed import MiniLMEmbedder
from sage_health.data.retrieval_eval import EvalCorpus, load_eval_corpus
from sage_health.data.store.protocol import SearchFilters, SearchHit, SearchQuery
from sage_health.data.store.sparse import SparseBM25Index
from sage_health.data.store.sqlite import FTS_TOKENIZE, SqliteDocumentStore, fts_query, query_words
from sage_health.testing.document_store import corpus, knowledge, report

SEED = 13
# Measured top-10 overlap with FTS5 (mean over queries): 1.000 on the 2,500-text sample (800 questions) and
# 1.000 on the store sample; the asserts leave room only for float32 ties at the cut.
MIN_MEAN_OVERLAP = 0.995
MIN_QUERY_OVERLAP = 0.8

NON_ASCII = [
    "Ménière's disease: vertigo, tinnitus and fluctuating hearing loss (MÉNIÈRE, naïve café).",
    "Sjögren syndrome with β-blocker use; İstanbul cohort; ½ dose; Ⅷ nerve; ﬁle e\u0301cole Straße.",
    "Crohn\u2019s disease \u201cflare\u201d \u2014 5\u2011ASA versus anti\u2011TNF therapy in na\u00efve patients.",
]


@pytest.fixture(scope="module")
def eval_corpus(data_dir: Path) -> EvalCorpus:
    return load_eval_corpus(
        data_dir / "pubmedqa" / "ori_pqal_dev.json",
        data_dir / "medquad" / "medquad.jsonl.gz",
        medquad_sample=300,
        seed=SEED,
    )


def _fts5_table(texts: Sequence[str]) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE VIRTUAL TABLE t USING fts5(text, tokenize='{FTS_TOKENIZE}')")
    conn.executemany("INSERT INTO t(rowid, text) VALUES (?, ?)", enumerate(texts, start=1))
    return conn


def _fts5_top(conn: sqlite3.Connection, query: str, k: int) -> list[tuple[int, float]]:
    match = fts_query(query)
    assert match is not None
    rows = conn.execute("SELECT rowid, bm25(t) AS s FROM t WHERE t MATCH ? ORDER BY s LIMIT ?", (match, k)).fetchall()
    return [(int(r[0]), -float(r[1])) for r in rows]


def _overlap(got: Sequence[int], expected: Sequence[int]) -> float:
    if not expected:
        return 1.0 if not got else 0.0
    return len(set(got) & set(expected)) / len(expected)


# ---------------------------------------------------------------------- the index alone vs an FTS5 table


@pytest.fixture(scope="module")
def sample_texts(eval_corpus: EvalCorpus) -> list[str]:
    pubmed = [d.text for d in eval_corpus.documents if d.source == "pubmedqa"]
    medquad = [d.text for d in eval_corpus.documents if d.source == "medquad"]
    return pubmed + random.Random(SEED).sample(medquad, 2000) + NON_ASCII


def test_tokens_and_statistics_equal_fts5(sample_texts: list[str]) -> None:
    conn = _fts5_table(sample_texts)
    conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, 'row')")
    fts_df = {term: doc for term, doc, _ in conn.execute("SELECT term, doc, cnt FROM v")}
    fts_tokens = sum(cnt for (cnt,) in conn.execute("SELECT cnt FROM v"))
    index = SparseBM25Index(FTS_TOKENIZE)
    half = len(sample_texts) // 2  # two updates: the incremental merge must give the same index
    index.update(keep_ids=None, new=[(np.arange(1, half + 1), sample_texts[:half])])
    postings = index.update(keep_ids=None, new=[(np.arange(half + 1, len(sample_texts) + 1), sample_texts[half:])])
    ours = {term: int(postings.indptr[t + 1] - postings.indptr[t]) for term, t in index.vocabulary.term_ids.items()}
    assert sum(1 for t in sample_texts if not t.isascii()) > len(NON_ASCII)  # the SQLite tokenizer path is used
    assert ours == fts_df
    assert postings.total_tokens == fts_tokens
    assert "menier" in ours
    assert "ecol" in ours  # "e" + combining acute: one token, diacritic removed, as FTS5 does
    index.close()


def test_top10_matches_fts5_bm25_on_real_text(eval_corpus: EvalCorpus, sample_texts: list[str]) -> None:
    conn = _fts5_table(sample_texts)
    index = SparseBM25Index(FTS_TOKENIZE)
    index.update(keep_ids=None, new=[(np.arange(1, len(sample_texts) + 1), sample_texts)])
    queries = [q.text for qs in eval_corpus.tasks.values() for q in qs]
    assert len(queries) == 800
    overlaps: list[float] = []
    for query in queries:
        expected = _fts5_top(conn, query, 10)
        got = index.search(query_words(query), 10)
        overlaps.append(_overlap([i for i, _ in got], [i for i, _ in expected]))
        scores = dict(expected)
        for cid, score in got:
            if cid in scores:
                assert score == pytest.approx(scores[cid], rel=1e-5)
    assert float(np.mean(overlaps)) >= MIN_MEAN_OVERLAP
    assert min(overlaps) >= MIN_QUERY_OVERLAP
    index.close()


def test_appends_and_deletes_give_the_index_of_a_fresh_build(sample_texts: list[str]) -> None:
    ids = np.arange(1, len(sample_texts) + 1)
    step = SparseBM25Index(FTS_TOKENIZE)
    step.update(keep_ids=None, new=[(ids[:1000], sample_texts[:1000])])
    step.update(keep_ids=None, new=[(ids[1000:1500], sample_texts[1000:1500]), (ids[1500:], sample_texts[1500:])])
    kept = np.setdiff1d(ids, ids[::7])  # delete every 7th chunk
    a = step.update(keep_ids=kept, new=[])
    fresh = SparseBM25Index(FTS_TOKENIZE)
    b = fresh.update(keep_ids=None, new=[(kept, [sample_texts[i - 1] for i in kept])])
    assert np.array_equal(a.ids, b.ids)
    assert np.array_equal(a.lengths, b.lengths)
    assert a.total_tokens == b.total_tokens
    for term, t in fresh.vocabulary.term_ids.items():  # term ids differ (first-seen order): compare by term
        u = step.vocabulary.term_ids[term]
        sa, sb = slice(a.indptr[u], a.indptr[u + 1]), slice(b.indptr[t], b.indptr[t + 1])
        assert np.array_equal(a.rows[sa], b.rows[sb])
        assert np.array_equal(a.tf[sa], b.tf[sb])
        assert np.array_equal(a.weights[sa], b.weights[sb])
    gone = set(step.vocabulary.term_ids) - set(fresh.vocabulary.term_ids)
    assert all(a.indptr[step.vocabulary.term_ids[g] + 1] == a.indptr[step.vocabulary.term_ids[g]] for g in gone)
    step.close()
    fresh.close()


def test_unknown_words_and_stem_collisions_count_like_fts5() -> None:
    texts = ["disease diseases treated", "treatment of the disease", "unrelated text entirely"]
    conn = _fts5_table(texts)
    index = SparseBM25Index(FTS_TOKENIZE)
    index.update(keep_ids=None, new=[(np.array([1, 2, 3]), texts)])
    # "diseases" and "disease" are two phrases for FTS5 with the same stem: they count twice
    for query in ("disease diseases", "zzzunknownword disease", "treating", "zzzunknownword"):
        expected = _fts5_top(conn, query, 10)
        got = index.search(query_words(query), 10)
        assert [i for i, _ in got] == [i for i, _ in expected]
        assert [s for _, s in got] == pytest.approx([s for _, s in expected], rel=1e-5)
    assert index.search(query_words("zzzunknownword"), 10) == []
    index.close()


# ---------------------------------------------------------------------- through the store


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory, eval_corpus: EvalCorpus, embedder: MiniLMEmbedder) -> Path:
    """120 PubMedQA + 200 MedQuAD documents, the conformance corpus (patients, dates, sections, types) and a
    few non-ASCII texts, written in three batches with one update and one delete in between."""
    rng = random.Random(SEED)
    pubmed = rng.sample([d for d in eval_corpus.documents if d.source == "pubmedqa"], 120)
    medquad = rng.sample([d for d in eval_corpus.documents if d.source == "medquad"], 200)
    extra = [knowledge(900 + i, "Non-ASCII", text) for i, text in enumerate(NON_ASCII)]
    path = tmp_path_factory.mktemp("sparse") / "sage.db"
    with SqliteDocumentStore(path, embedder) as store:
        store.write([*pubmed[:60], *medquad[:100], *corpus()])
        store.write([*pubmed[60:], *medquad[100:], *extra])
        store.write([report(2, "Lungs are clear. Tiny right apical pneumothorax.", "Small pneumothorax.", "P2")])
        assert store.delete([medquad[0].id]) == 1
    return path


@pytest.fixture
def stores(store_path: Path, embedder: MiniLMEmbedder) -> Iterator[tuple[SqliteDocumentStore, SqliteDocumentStore]]:
    with (
        SqliteDocumentStore(store_path, embedder) as memory,
        SqliteDocumentStore(store_path, embedder, bm25_index="fts5") as fts5,
    ):
        yield memory, fts5


def _bm25(
    store: SqliteDocumentStore,
    text: str,
    k: int = 10,
    filters: SearchFilters | None = None,
    candidates: int | None = None,
) -> list[SearchHit]:
    filters = filters or SearchFilters()
    query = SearchQuery(text=text, k=k, mode="bm25", one_per_record=False, filters=filters, candidates=candidates)
    return store.search(query)


def test_store_bm25_ranks_like_fts5(
    stores: tuple[SqliteDocumentStore, SqliteDocumentStore], eval_corpus: EvalCorpus
) -> None:
    memory, fts5 = stores
    queries = [q.text for qs in eval_corpus.tasks.values() for q in qs][::4]
    overlaps = []
    for text in queries:
        expected = _bm25(fts5, text)
        got = _bm25(memory, text)
        overlaps.append(_overlap([h.chunk_id for h in got], [h.chunk_id for h in expected]))
        scores = {h.chunk_id: h.bm25_score for h in expected}
        assert all(h.bm25_score == pytest.approx(scores[h.chunk_id], rel=1e-5) for h in got if h.chunk_id in scores)
    assert float(np.mean(overlaps)) >= MIN_MEAN_OVERLAP
    assert min(overlaps) >= MIN_QUERY_OVERLAP


FILTERS = {
    "patient": SearchFilters(patient_id="P1"),
    "type": SearchFilters(resource_types=("DiagnosticReport", "Observation")),
    "source": SearchFilters(sources=("conformance",)),
    "section": SearchFilters(sections=("impression",)),
    "dates": SearchFilters(since=datetime(2019, 1, 1, tzinfo=UTC), until=datetime(2020, 12, 31, tzinfo=UTC)),
    "record_ids": SearchFilters(record_ids=("conf/DiagnosticReport/1", "conf/DiagnosticReport/3")),
}


@pytest.mark.parametrize("name", list(FILTERS))
def test_filters_apply_inside_the_index(stores: tuple[SqliteDocumentStore, SqliteDocumentStore], name: str) -> None:
    memory, fts5 = stores
    filters = FILTERS[name]
    # words of many MedQuAD/PubMedQA chunks; "small", "left", "right" also occur in the conformance reports
    text = "small left right symptoms treatment causes patients disease risk"
    matching = _bm25(fts5, text, k=100, filters=filters)
    k = min(4, len(matching))
    assert k >= 3
    # the retriever contributes only 5 candidates: a post-filter of its global top 5 would find at most 1
    expected = matching[:k]
    got = _bm25(memory, text, k=k, filters=filters, candidates=5)
    assert [h.chunk_id for h in got] == [h.chunk_id for h in expected]
    assert [h.bm25_score for h in got] == pytest.approx([h.bm25_score for h in expected], rel=1e-5)
    global_top = {h.chunk_id for h in _bm25(fts5, text, k=5)}
    assert len({h.chunk_id for h in got} - global_top) >= k - 1


def test_unknown_bm25_index_is_a_config_error(tmp_path: Path, embedder: MiniLMEmbedder) -> None:
    with pytest.raises(ConfigError, match="bm25_index must be 'memory' or 'fts5', got 'lucene'"):
        SqliteDocumentStore(tmp_path / "sage.db", embedder, bm25_index="lucene")  # type: ignore[arg-type]
    assert not (tmp_path / "sage.db").exists()


def test_filter_without_matches_returns_nothing(stores: tuple[SqliteDocumentStore, SqliteDocumentStore]) -> None:
    memory, _ = stores
    assert _bm25(memory, "pneumonia", filters=SearchFilters(patient_id="nobody")) == []
    assert _bm25(memory, "glaucoma", filters=SearchFilters(record_ids=("conf/DiagnosticReport/1",))) == []


def test_writes_and_deletes_by_another_instance_are_seen(tmp_path: Path, embedder: MiniLMEmbedder) -> None:
    path = tmp_path / "sage.db"
    with (
        SqliteDocumentStore(path, embedder) as reader,
        SqliteDocumentStore(path, embedder) as writer,
        SqliteDocumentStore(path, embedder, bm25_index="fts5") as truth,
    ):
        writer.write(corpus()[:3])
        assert _bm25(reader, "glaucoma optic nerve") == []  # builds the index (reports only)
        writer.write(corpus()[3:])  # another connection: the reader's index is now behind
        hits = _bm25(reader, "glaucoma optic nerve")
        assert hits[0].record_id == "conformance-kb/KnowledgeDocument/1"
        writer.write([report(3, "Right upper lobe consolidation, improving.", "Resolving pneumonia.", "P1")])
        writer.delete(["conformance-kb/KnowledgeDocument/1"])
        for text in ("glaucoma optic nerve", "consolidation pneumonia", "airways blood lungs"):
            got, expected = _bm25(reader, text), _bm25(truth, text)
            assert [h.chunk_id for h in got] == [h.chunk_id for h in expected]
            assert [h.bm25_score for h in got] == pytest.approx([h.bm25_score for h in expected], rel=1e-5)
        assert all(h.record_id != "conformance-kb/KnowledgeDocument/1" for h in _bm25(reader, "glaucoma"))
        hit = _bm25(reader, "improving consolidation")[0]
        assert (hit.record_id, hit.record_version) == ("conf/DiagnosticReport/3", 2)


def test_concurrent_searches_during_writes(tmp_path: Path, embedder: MiniLMEmbedder) -> None:
    path = tmp_path / "sage.db"
    docs = [knowledge(i, f"Topic {i}", f"Condition number {i} causes fever and cough in case {i}.") for i in range(60)]
    deleted = {docs[start - 5].id for start in range(10, 60, 10)}
    with SqliteDocumentStore(path, embedder) as store, SqliteDocumentStore(path, embedder) as writer:
        writer.write(docs[:10])
        done = threading.Event()

        def searcher() -> int:
            searches = 0
            while not done.is_set():
                hits = _bm25(store, "fever cough condition", k=5)
                assert len(hits) == 5
                assert all(h.record_id.startswith("conformance-kb/") for h in hits)
                searches += 1
            return searches

        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = [pool.submit(searcher) for _ in range(3)]
            for start in range(10, 60, 10):
                writer.write(docs[start : start + 10])
                writer.delete([docs[start - 5].id])
            done.set()
            assert all(f.result() > 0 for f in futures)  # re-raises a searcher's failure here
        hits = store.search(SearchQuery(text="fever cough condition", k=100, mode="bm25"))
        assert {h.record_id for h in hits} == {d.id for d in docs} - deleted


def test_bf16_first_pass_returns_the_exact_fp32_ranking(
    store_path: Path, embedder: MiniLMEmbedder, eval_corpus: EvalCorpus
) -> None:
    """The bf16 scoring pass + exact fp32 re-scoring of its pool gives the exact dense top-k (ids and scores)."""
    questions = [q.text for q in next(iter(eval_corpus.tasks.values()))[:40]]
    with (
        SqliteDocumentStore(store_path, embedder, dense_precision="bf16") as low,
        SqliteDocumentStore(store_path, embedder, dense_precision="fp32") as exact,
    ):
        for filters in (SearchFilters(), SearchFilters(resource_types=["KnowledgeDocument"])):
            for text in questions:
                query = SearchQuery(text=text, k=10, mode="dense", one_per_record=False, filters=filters)
                a = low.search(query)
                b = exact.search(query)
                assert [h.chunk_id for h in a] == [h.chunk_id for h in b]
                assert [h.dense_score for h in a] == pytest.approx([h.dense_score for h in b], abs=1e-5)
    with pytest.raises(ConfigError, match="dense_precision"):
        SqliteDocumentStore(store_path, embedder, dense_precision="int8")  # type: ignore[arg-type]
