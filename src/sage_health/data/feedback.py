"""Clinician feedback as data: every review of a generated draft becomes a ``feedback_events`` row.

A feedback event links the agent run, the draft the model produced (with its model ref), the text the clinician
signed (or the rejection and its reason), the unified diff between the two, and the signed record's id/version.
The co-evolution loop reads these events to build the next dataset snapshot; nothing here is free text about a
patient beyond the report itself, and events are erased with the record they point to.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from sage_health.data.governance.hooks import ErasureScope, HookReport
from sage_health.data.sqlite_tables import connect, immediate

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

    # ------------------------------------------------------------------ erasure and lineage (ids only)
    def delete_for(self, *, record_ids: Sequence[str], run_ids: Sequence[str]) -> int:
        """Delete the events that point to one of ``record_ids`` or belong to one of ``run_ids``; returns how many."""
        removed = 0
        with self._conn() as conn, immediate(conn):
            for column, values in (("record_id", list(dict.fromkeys(record_ids))),
                                   ("run_id", list(dict.fromkeys(run_ids)))):  # fmt: skip
                for i in range(0, len(values), 500):
                    part = values[i : i + 500]
                    marks = ",".join("?" * len(part))
                    removed += conn.execute(f"DELETE FROM feedback_events WHERE {column} IN ({marks})", part).rowcount
        return removed

    def links(self, *, run_id: str | None = None, record_id: str | None = None) -> list[tuple[str, str | None, str]]:
        """``(run_id, record_id, kind)`` of the events of a run or of a signed record (ids only)."""
        sql, param = ("run_id = ?", run_id) if run_id is not None else ("record_id = ?", record_id)
        with self._conn() as conn:
            rows = conn.execute(f"SELECT run_id, record_id, kind FROM feedback_events WHERE {sql} ORDER BY id",
                                (param,)).fetchall()  # fmt: skip
        return [(r["run_id"], r["record_id"], r["kind"]) for r in rows]


class FeedbackErasureHook:
    """Erasure of feedback events: those pointing to one of the patient's records, and those of the patient's agent
    runs (``runs_of`` names them; the runs' own table belongs to the agents layer). Idempotent; run it before the
    agent-trace hook, which deletes the runs."""

    name = "feedback_events"

    def __init__(self, db_path: Path, runs_of: Callable[[ErasureScope], Sequence[str]]) -> None:
        self._feedback = FeedbackStore(db_path)
        self._runs_of = runs_of

    def erase(self, scope: ErasureScope) -> HookReport:
        removed = self._feedback.delete_for(record_ids=scope.record_ids, run_ids=self._runs_of(scope))
        return HookReport(hook=self.name, removed={"feedback_events": removed})


class FeedbackLineageHook:
    """Lineage through reviews: ``run:`` down → the record signed in its review; a signed ``record:`` up → the run
    it was reviewed in."""

    name = "feedback_events"

    def __init__(self, db_path: Path) -> None:
        self._feedback = FeedbackStore(db_path)

    def neighbours(self, node: str, *, up: bool) -> list[tuple[str, str, str]]:
        kind, _, ident = node.partition(":")
        if kind == "run" and not up:
            return [(f"record:{rec}", f"signed ({k})", "") for _, rec, k in self._feedback.links(run_id=ident) if rec]
        if kind == "record" and up:
            return [(f"run:{run}", f"reviewed ({k}) in run", "") for run, _, k in self._feedback.links(record_id=ident)]
        return []
