"""Open the configured document store from Settings: one place for every entry point."""

from __future__ import annotations

from typing import Literal

from sage_health.core.config import Settings
from sage_health.core.errors import StoreError
from sage_health.data.chunking import Chunker
from sage_health.data.embed import embedder_for
from sage_health.data.store.sqlite import SqliteDocumentStore


def open_store(
    settings: Settings,
    *,
    must_exist: bool = True,
    bm25_index: Literal["memory", "fts5"] | None = None,
) -> SqliteDocumentStore:
    """The store under ``settings.store``. ``bm25_index`` overrides ``settings.bm25_index`` ("auto" → fts5:
    a one-shot command searches a few times at most, so building the in-memory BM25 index (~3 s per 60k
    chunks) would cost more than it saves)."""
    if must_exist and not settings.db_path.is_file():
        raise StoreError(f"no store at {settings.store}; run `sage-health ingest PATH --store {settings.store}` first")
    embedder = embedder_for(settings)
    chunker = Chunker(settings.chunk_words, settings.chunk_overlap_words)
    if bm25_index is None:
        bm25_index = "fts5" if settings.bm25_index == "auto" else settings.bm25_index
    return SqliteDocumentStore(
        settings.db_path,
        embedder,
        chunker,
        rrf_k=settings.rrf_k,
        bm25_index=bm25_index,
        dense_precision=settings.dense_precision,
        dense_weight=settings.hybrid_dense_weight,
    )
