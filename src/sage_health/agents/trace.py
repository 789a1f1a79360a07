"""Persisted agent runs and their step traces (tables ``agent_runs`` and ``agent_steps`` in the store's database).

The trace schema is ours, independent of any orchestration library:

- ``agent_runs``: one row per run — task, status, the request, the plan, the result, timestamps, the error.
- ``agent_steps``: one row per finished step — agent, step name, input, output, the evidence ids the output
  relies on, the model id/version it used, latency, status (``ok`` / ``error``), error message.

A step row is written in one transaction with the run's ``updated_at``/status, only after the step finished, so
a process killed mid-step leaves the last finished step as the resume point and never a half-written step.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from sage_health.core.errors import RunNotFoundError
from sage_health.data.sqlite_tables import connect, immediate

RunStatus = Literal["running", "paused", "blocked", "failed", "approved", "rejected", "completed"]
StepStatus = Literal["ok", "error"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS agent_runs (
    run_id TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN
        ('running', 'paused', 'blocked', 'failed', 'approved', 'rejected', 'completed')),
    request_json TEXT NOT NULL,
    plan_json TEXT,
    result_json TEXT,
    patient_id TEXT,
    study_id TEXT,
    error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS agent_runs_status ON agent_runs(status, updated_at);
CREATE TABLE IF NOT EXISTS agent_steps (
    run_id TEXT NOT NULL REFERENCES agent_runs(run_id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    step TEXT NOT NULL,
    agent TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'error')),
    input_json TEXT NOT NULL,
    output_json TEXT,
    evidence_ids_json TEXT NOT NULL DEFAULT '[]',
    model_ref TEXT,
    latency_ms REAL NOT NULL,
    error TEXT,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
"""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class StepRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    run_id: str
    seq: int
    step: str
    agent: str
    status: StepStatus
    input: dict[str, Any]
    output: dict[str, Any] | None
    evidence_ids: tuple[str, ...]
    model_ref: str | None
    latency_ms: float
    error: str | None
    started_at: str
    finished_at: str


class RunRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    run_id: str
    task: str
    status: RunStatus
    request: dict[str, Any]
    plan: dict[str, Any] | None
    result: dict[str, Any] | None
    patient_id: str | None
    study_id: str | None
    error: str | None
    created_at: str
    updated_at: str


def _loads(value: str | None) -> Any:
    return json.loads(value) if value is not None else None


class TraceStore:
    """Reads and writes runs and steps. Cheap to construct; each call opens a short-lived connection."""

    def __init__(self, db_path: Path) -> None:
        self._path = db_path

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        with connect(self._path, schema=_SCHEMA, what="the agent trace tables") as conn:
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: everything inside commits together or not at all."""
        with self._conn() as conn, immediate(conn):
            yield conn

    def create_run(
        self,
        run_id: str,
        task: str,
        request: dict[str, Any],
        *,
        patient_id: str | None = None,
        study_id: str | None = None,
    ) -> None:
        at = now_iso()
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO agent_runs (run_id, task, status, request_json, patient_id, study_id, created_at, "
                "updated_at) VALUES (?, ?, 'running', ?, ?, ?, ?, ?)",
                (run_id, task, json.dumps(request, sort_keys=True), patient_id, study_id, at, at),
            )

    def add_step(
        self,
        *,
        run_id: str,
        step: str,
        agent: str,
        status: StepStatus,
        input: dict[str, Any],
        output: dict[str, Any] | None,
        evidence_ids: Sequence[str],
        model_ref: str | None,
        latency_ms: float,
        error: str | None,
        started_at: str,
        plan: dict[str, Any] | None = None,
        conn: sqlite3.Connection | None = None,
    ) -> int:
        """Append a finished step (and, for the planning step, the plan) in one transaction; returns its seq."""

        def write(c: sqlite3.Connection) -> int:
            seq = int(c.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM agent_steps WHERE run_id = ?", (run_id,))
                      .fetchone()[0])  # fmt: skip
            at = now_iso()
            c.execute(
                "INSERT INTO agent_steps (run_id, seq, step, agent, status, input_json, output_json, "
                "evidence_ids_json, model_ref, latency_ms, error, started_at, finished_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    seq,
                    step,
                    agent,
                    status,
                    json.dumps(input, sort_keys=True, default=str),
                    json.dumps(output, sort_keys=True, default=str) if output is not None else None,
                    json.dumps(list(evidence_ids)),
                    model_ref,
                    latency_ms,
                    error,
                    started_at,
                    at,
                ),
            )
            if plan is not None:
                c.execute("UPDATE agent_runs SET plan_json = ? WHERE run_id = ?", (json.dumps(plan), run_id))
            c.execute("UPDATE agent_runs SET updated_at = ? WHERE run_id = ?", (at, run_id))
            return seq

        if conn is not None:
            return write(conn)
        with self.transaction() as c:
            return write(c)

    def set_status(
        self,
        run_id: str,
        status: RunStatus,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        conn: sqlite3.Connection | None = None,
    ) -> None:
        def write(c: sqlite3.Connection) -> None:
            sets = ["status = ?", "updated_at = ?", "error = ?"]
            params: list[Any] = [status, now_iso(), error]
            if result is not None:
                sets.append("result_json = ?")
                params.append(json.dumps(result, sort_keys=True, default=str))
            params.append(run_id)
            cur = c.execute(f"UPDATE agent_runs SET {', '.join(sets)} WHERE run_id = ?", params)
            if cur.rowcount != 1:
                raise RunNotFoundError(f"no agent run {run_id}; list runs with `sage-health runs`")

        if conn is not None:
            write(conn)
            return
        with self.transaction() as c:
            write(c)

    def get_run(self, run_id: str) -> RunRecord:
        with self._conn() as conn:
            row = conn.execute("SELECT * FROM agent_runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(f"no agent run {run_id}; list runs with `sage-health runs`")
        return self._run(row)

    @staticmethod
    def _run(row: sqlite3.Row) -> RunRecord:
        return RunRecord(
            run_id=row["run_id"],
            task=row["task"],
            status=row["status"],
            request=json.loads(row["request_json"]),
            plan=_loads(row["plan_json"]),
            result=_loads(row["result_json"]),
            patient_id=row["patient_id"],
            study_id=row["study_id"],
            error=row["error"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    def list_runs(self, *, status: str | None = None, limit: int = 50) -> list[RunRecord]:
        sql = "SELECT * FROM agent_runs"
        params: list[Any] = []
        if status:
            sql += " WHERE status = ?"
            params.append(status)
        sql += " ORDER BY created_at DESC, run_id DESC LIMIT ?"
        params.append(limit)
        with self._conn() as conn:
            return [self._run(r) for r in conn.execute(sql, params)]

    def steps(self, run_id: str) -> list[StepRecord]:
        with self._conn() as conn:
            rows = conn.execute("SELECT * FROM agent_steps WHERE run_id = ? ORDER BY seq", (run_id,)).fetchall()
        return [
            StepRecord(
                run_id=r["run_id"],
                seq=r["seq"],
                step=r["step"],
                agent=r["agent"],
                status=r["status"],
                input=json.loads(r["input_json"]),
                output=_loads(r["output_json"]),
                evidence_ids=tuple(json.loads(r["evidence_ids_json"])),
                model_ref=r["model_ref"],
                latency_ms=r["latency_ms"],
                error=r["error"],
                started_at=r["started_at"],
                finished_at=r["finished_at"],
            )
            for r in rows
        ]
