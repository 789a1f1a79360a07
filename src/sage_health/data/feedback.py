"""Clinician feedback as data: every review of a generated draft becomes a ``feedback_events`` row.

A feedback event links the agent run, the draft the model produced (with its model ref), the text the clinician
signed (or the rejection and its reason), the unified diff between the two, and the signed record's id/version.
The co-evolution loop reads these events to build the next dataset snapshot; nothing here is free text about a
patient beyond the report itself, and events are erased with the record they point to.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from sage_health.data.sqlite_tables import connect

FeedbackKind = Literal["approved", "edited", "rejected"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback_events (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    task TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('approved', 'edited', 'rejected')),
    record_id TEXT,
    record_version INTEGER,
    signer TEXT NOT NULL,
    model_ref TEXT,
    draft_json TEXT NOT NULL,
    final_json TEXT,
    diff TEXT NOT NULL DEFAULT '',
    reason TEXT,
    created_at TEXT NOT NULL,
    UNIQUE (run_id)
);
CREATE INDEX IF NOT EXISTS feedback_events_task ON feedback_events(task, created_at);
"""


class FeedbackEvent(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    run_id: str
    task: str
    kind: FeedbackKind
    record_id: str | None
    record_version: int | None
    signer: str
    model_ref: str | None
    draft: dict[str, Any]
    final: dict[str, Any] | None
    diff: str
    reason: str | None
    created_at: str


class FeedbackStore:
    """The ``feedback_events`` table of the store database. One event per run (a run is reviewed once)."""

    def __init__(self, db_path: Path) -> None:
        self._path = db_path

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        with connect(self._path, schema=_SCHEMA, what="the feedback table") as conn:
            yield conn

    @staticmethod
    def ensure_schema(conn: sqlite3.Connection) -> None:
        """Create the table on ``conn`` (works inside an open transaction, unlike ``executescript``)."""
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)

    @staticmethod
    def add(
        conn: sqlite3.Connection,
        *,
        run_id: str,
        task: str,
        kind: FeedbackKind,
        signer: str,
        draft: dict[str, Any],
        final: dict[str, Any] | None,
        diff: str,
        record_id: str | None = None,
        record_version: int | None = None,
        model_ref: str | None = None,
        reason: str | None = None,
    ) -> int:
        """Insert one event on ``conn`` (inside the caller's transaction, so it commits with the review)."""
        FeedbackStore.ensure_schema(conn)
        cur = conn.execute(
            "INSERT INTO feedback_events (run_id, task, kind, record_id, record_version, signer, model_ref, "
            "draft_json, final_json, diff, reason, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                task,
                kind,
                record_id,
                record_version,
                signer,
                model_ref,
                json.dumps(draft, sort_keys=True),
                json.dumps(final, sort_keys=True) if final is not None else None,
                diff,
                reason,
                datetime.now(UTC).isoformat(timespec="seconds"),
            ),
        )
        return int(cur.lastrowid or 0)

    def events(self, *, task: str | None = None, run_id: str | None = None) -> list[FeedbackEvent]:
        sql = "SELECT * FROM feedback_events"
        where: list[str] = []
        params: list[Any] = []
        if task:
            where.append("task = ?")
            params.append(task)
        if run_id:
            where.append("run_id = ?")
            params.append(run_id)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        with self._conn() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [
            FeedbackEvent(
                id=r["id"],
                run_id=r["run_id"],
                task=r["task"],
                kind=r["kind"],
                record_id=r["record_id"],
                record_version=r["record_version"],
                signer=r["signer"],
                model_ref=r["model_ref"],
                draft=json.loads(r["draft_json"]),
                final=json.loads(r["final_json"]) if r["final_json"] else None,
                diff=r["diff"],
                reason=r["reason"],
                created_at=r["created_at"],
            )
            for r in rows
        ]
