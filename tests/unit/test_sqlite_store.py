"""SQLite-specific store checks on a store with the deterministic hashing embedder (the DocumentStore conformance
suite, which measures dense retrieval, runs with the real embedder in tests/integration)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sage_health.core.errors import StoreError
from sage_health.data.store.sqlite import SqliteDocumentStore, fts_query, reciprocal_rank_fusion
from sage_health.testing.document_store import corpus
from sage_health.testing.embedders import HashingEmbedder


def test_store_check_reports_no_problems_after_writes_and_deletes(store: SqliteDocumentStore) -> None:
    store.write(corpus())
    store.delete(["conf/DiagnosticReport/1"])
    assert store.check() == {"ok": True, "problems": []}


def test_store_check_detects_orphan_chunks(store: SqliteDocumentStore) -> None:
    store.write(corpus())
    conn = store.connection
    conn.execute("DELETE FROM records WHERE id='conf/DiagnosticReport/3'")  # simulate a buggy writer
    result = store.check()
    assert not result["ok"]
    assert any("without a current record" in p for p in result["problems"])


def test_identical_chunk_text_reuses_vectors(store: SqliteDocumentStore) -> None:
    first = store.write(corpus())
    distinct = {c.text for r in corpus() for c in store.plan_chunks(r)}
    assert first.chunks == sum(len(store.plan_chunks(r)) for r in corpus())
    assert first.embedded == len(distinct) < first.chunks  # "INDICATION: Cough." is shared
    clones = [r.model_copy(update={"id": r.id.replace("conf", "clone", 1)}) for r in corpus()[:3]]
    second = store.write(clones)
    assert second.inserted == 3
    assert second.embedded == 0


def test_dense_matrix_refreshes_incrementally_and_after_deletes(store: SqliteDocumentStore) -> None:
    from sage_health.data.store.protocol import SearchQuery

    store.write(corpus()[:3])
    assert (
        store.search(SearchQuery(text="glaucoma optic nerve", k=1, mode="dense"))[0].resource_type == "DiagnosticReport"
    )
    store.write(corpus()[3:])
    assert store.search(SearchQuery(text="glaucoma optic nerve", k=1, mode="dense"))[0].record_id.endswith("/1")
    store.delete(["conformance-kb/KnowledgeDocument/1"])
    hits = store.search(SearchQuery(text="glaucoma optic nerve", k=20, mode="dense"))
    assert "conformance-kb/KnowledgeDocument/1" not in {h.record_id for h in hits}


def test_incompatible_schema_version_is_a_clear_error(tmp_path: Path, hashing_embedder: HashingEmbedder) -> None:
    db = tmp_path / "sage.db"
    with SqliteDocumentStore(db, hashing_embedder) as store:
        store.write(corpus()[:1])
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with (
        pytest.raises(StoreError, match="schema version 99 is not supported"),
        SqliteDocumentStore(db, hashing_embedder) as s,
    ):
        s.get("x/y/z")


def test_fts_query_drops_stopwords_and_quotes_terms() -> None:
    assert fts_query("What is the treatment of Glaucoma?") == '"treatment" OR "glaucoma"'
    assert fts_query('"); DROP TABLE chunks; --') == '"drop" OR "table" OR "chunks"'
    assert fts_query("the of a") is None


def test_reciprocal_rank_fusion_sums_reciprocal_ranks() -> None:
    fused = reciprocal_rank_fusion([[(1, 9.0), (2, 8.0)], [(2, 0.9), (3, 0.8)]], k=60)
    assert [cid for cid, _ in fused] == [2, 1, 3]
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 61)
