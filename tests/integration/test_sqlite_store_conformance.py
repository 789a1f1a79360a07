"""The SQLite backend runs the shared DocumentStore conformance suite with the real MiniLM embedder (its dense
tests measure retrieval: a paraphrase without shared words must be found). SQLite-specific checks are unit tests
(tests/unit/test_sqlite_store.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sage_health.data.embed import MiniLMEmbedder
from sage_health.data.store.sqlite import SqliteDocumentStore
from sage_health.testing.document_store import DocumentStoreConformance


class TestSqliteDocumentStore(DocumentStoreConformance):
    @pytest.fixture
    def document_store(self, tmp_path: Path, embedder: MiniLMEmbedder) -> Iterator[SqliteDocumentStore]:
        with SqliteDocumentStore(tmp_path / "sage.db", embedder) as store:
            yield store
