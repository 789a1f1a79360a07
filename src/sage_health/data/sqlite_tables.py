"""Short-lived connections to the store database for the side tables (registry, traces, feedback, audit).

The document store keeps one long-lived connection; the side tables open one per call, create their schema if
missing, and write inside ``BEGIN IMMEDIATE`` transactions so concurrent writers queue instead of failing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sage_health.core.errors import StoreError


@contextmanager
def connect(path: Path, *, schema: str, what: str) -> Iterator[sqlite3.Connection]:
    """A connection (autocommit mode, ``Row`` rows, WAL, foreign keys) with ``schema`` created if missing.

    ``what`` names the tables in the error raised when the database cannot be opened."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA secure_delete=ON")  # erased rows leave no bytes behind in free pages
        conn.executescript(schema)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {what} in {path}: {exc}") from exc
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One ``BEGIN IMMEDIATE`` transaction on ``conn``: everything inside commits together or not at all."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
