"""The SQLite store's database: schema, module helpers and the connection every part of
:class:`~sage_health.data.store.sqlite.SqliteDocumentStore` shares.

* One long-lived connection per store instance (WAL, ``synchronous=NORMAL``, foreign keys on), opened on
  first use; the schema is created if missing (idempotent) and its version is checked on open.
* Every write runs in one ``BEGIN IMMEDIATE`` transaction under the store's lock (:meth:`SqliteDatabase._txn`):
  concurrent writers queue instead of failing, and a failure rolls the whole call back.
* ``secure_delete`` is on for the connection, on every build: SQLite zeroes what a write deletes or moves
  (rows, freed pages, cells moved when a page splits) instead of leaving it in free space, so nothing erased
  can be read back from the file later (see :mod:`~sage_health.data.store.sqlite_erasure`).
* ``meta`` holds the ``generation`` (bumped by every write that changes records) and ``delete_generation``
  (bumped by every write that removes chunks) counters the in-memory indexes follow.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sage_health.core.errors import StoreError
from sage_health.data.embed import Embedder

SCHEMA_VERSION = 1
_IN_BATCH = 500  # parameters per IN (...) list
FTS_TOKENIZE = "porter unicode61 remove_diacritics 2"
"""The FTS5 tokenizer of ``chunks_fts``; the in-memory BM25 index tokenises with exactly this."""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ingest_runs (
  id TEXT PRIMARY KEY, started_at TEXT NOT NULL, finished_at TEXT, status TEXT NOT NULL,
  command TEXT, stats TEXT);
CREATE TABLE IF NOT EXISTS ingest_errors (
  id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, path TEXT NOT NULL, locator TEXT, reason TEXT NOT NULL,
  created_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS ingest_errors_run ON ingest_errors(run_id);
CREATE TABLE IF NOT EXISTS files (
  path TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL, connector TEXT NOT NULL,
  run_id TEXT NOT NULL, records INTEGER NOT NULL, completed_at TEXT NOT NULL,
  PRIMARY KEY (path, sha256));
CREATE TABLE IF NOT EXISTS records (
  pk INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL, version INTEGER NOT NULL, is_current INTEGER NOT NULL,
  resource_type TEXT NOT NULL, source TEXT NOT NULL, patient_id TEXT, effective TEXT,
  content_hash TEXT NOT NULL, body TEXT NOT NULL, provenance TEXT NOT NULL, chunker TEXT,
  run_id TEXT, created_at TEXT NOT NULL,
  UNIQUE (id, version));
CREATE UNIQUE INDEX IF NOT EXISTS records_current ON records(id) WHERE is_current = 1;
CREATE INDEX IF NOT EXISTS records_patient ON records(patient_id, effective) WHERE is_current = 1;
CREATE INDEX IF NOT EXISTS records_type ON records(resource_type) WHERE is_current = 1;
CREATE TABLE IF NOT EXISTS chunks (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  record_id TEXT NOT NULL, section TEXT NOT NULL, ordinal INTEGER NOT NULL, text TEXT NOT NULL,
  start INTEGER NOT NULL, "end" INTEGER NOT NULL, text_hash TEXT NOT NULL,
  resource_type TEXT NOT NULL, source TEXT NOT NULL, patient_id TEXT, effective TEXT);
CREATE INDEX IF NOT EXISTS chunks_record ON chunks(record_id);
CREATE INDEX IF NOT EXISTS chunks_patient ON chunks(patient_id, effective);
CREATE INDEX IF NOT EXISTS chunks_type ON chunks(resource_type);
CREATE INDEX IF NOT EXISTS chunks_source ON chunks(source);
CREATE INDEX IF NOT EXISTS chunks_text_hash ON chunks(text_hash);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
  text, content='chunks', content_rowid='id', tokenize='{FTS_TOKENIZE}');
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
  INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
  INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
CREATE TABLE IF NOT EXISTS vectors (
  chunk_id INTEGER PRIMARY KEY REFERENCES chunks(id) ON DELETE CASCADE,
  model_id TEXT NOT NULL, vec BLOB NOT NULL);
"""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _batched(items: Sequence[Any], size: int = _IN_BATCH) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _parse_dt(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


class SqliteDatabase:
    """The connection, transactions and ``meta`` counters of one store database (the base of the store and of
    its search, ledger and erasure parts). The store's constructor sets the attributes declared here."""

    path: Path
    embedder: Embedder
    _conn: sqlite3.Connection | None
    _lock: threading.RLock

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            # deleted rows, freed pages and b-tree cells moved by a page split are zeroed, not left in free space:
            # what makes an erasure leave no bytes behind (the default of some SQLite builds, not of all)
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA temp_store=MEMORY")
            conn.execute("PRAGMA cache_size=-65536")
            conn.execute("PRAGMA mmap_size=268435456")
            conn.executescript(_SCHEMA)  # idempotent (IF NOT EXISTS); runs outside a transaction
            with self._txn(conn):
                row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                if row is None:
                    conn.executemany(
                        "INSERT INTO meta(key, value) VALUES (?, ?)",
                        [
                            ("schema_version", str(SCHEMA_VERSION)),
                            ("generation", "0"),
                            ("delete_generation", "0"),
                            ("embedder", self.embedder.model_id),
                            ("created_at", _now()),
                        ],
                    )
                elif int(row["value"]) != SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path}: store schema version {row['value']} is not supported by this "
                        f"version of SAGE-Health (expects {SCHEMA_VERSION}); ingest into a new store"
                    )
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot open the store database: {exc}") from exc
        self._conn = conn
        return conn

    @contextmanager
    def _txn(self, conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        conn = conn or self._connect()
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    @property
    def connection(self) -> sqlite3.Connection:
        """The raw connection, for read-only reporting (stats, tests)."""
        return self._connect()

    def _meta_int(self, conn: sqlite3.Connection, key: str) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return int(row["value"]) if row else 0

    def _bump(self, conn: sqlite3.Connection, key: str) -> None:
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key=?", (key,))

    @staticmethod
    def _generations(conn: sqlite3.Connection) -> tuple[int, int]:
        rows = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('generation', 'delete_generation')"))
        return int(rows.get("generation", 0)), int(rows.get("delete_generation", 0))
