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
from sage_health.data.governance.hooks import ErasureScope, HookReport
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

    # ------------------------------------------------------------------ erasure and lineage (ids only)
    def run_ids_of(self, patient_id: str, record_ids: Sequence[str]) -> list[str]:
        """Runs about the patient (their id, one of their records as the study) or whose steps cite one of
        ``record_ids`` as evidence (a step's output holds the evidence text), sorted."""
        ids = list(dict.fromkeys(record_ids))
        found: set[str] = set()
        with self._conn() as conn:
            found.update(r[0] for r in conn.execute("SELECT run_id FROM agent_runs WHERE patient_id = ?",
                                                    (patient_id,)))  # fmt: skip
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                marks = ",".join("?" * len(part))
                found.update(r[0] for r in conn.execute(f"SELECT run_id FROM agent_runs WHERE study_id IN ({marks})",
                                                        part))  # fmt: skip
                found.update(r[0] for r in conn.execute(
                    "SELECT DISTINCT run_id FROM agent_steps WHERE EXISTS (SELECT 1 FROM "
                    f"json_each(agent_steps.evidence_ids_json) WHERE value IN ({marks}))", part))  # fmt: skip
        return sorted(found)

    def delete_runs(self, run_ids: Sequence[str]) -> tuple[int, int]:
        """Delete runs with their steps in one transaction; returns (runs, steps) removed."""
        ids = list(dict.fromkeys(run_ids))
        runs = steps = 0
        with self.transaction() as conn:
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                marks = ",".join("?" * len(part))
                steps += conn.execute(f"DELETE FROM agent_steps WHERE run_id IN ({marks})", part).rowcount
                runs += conn.execute(f"DELETE FROM agent_runs WHERE run_id IN ({marks})", part).rowcount
        return runs, steps

    def runs_citing(self, record_id: str) -> list[str]:
        """Runs whose steps cite ``record_id`` as evidence, or whose study it is, sorted."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT run_id FROM agent_runs WHERE study_id = ? UNION SELECT DISTINCT run_id FROM agent_steps "
                "WHERE EXISTS (SELECT 1 FROM json_each(agent_steps.evidence_ids_json) WHERE value = ?) ORDER BY 1",
                (record_id, record_id),
            ).fetchall()
        return [r[0] for r in rows]

    def evidence_of(self, run_id: str) -> tuple[str | None, list[str]]:
        """The study record id of a run and the record ids its steps cite (``(None, [])`` for an unknown run)."""
        with self._conn() as conn:
            row = conn.execute("SELECT study_id FROM agent_runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                return None, []
            cited = conn.execute(
                "SELECT DISTINCT e.value FROM agent_steps s, json_each(s.evidence_ids_json) e WHERE s.run_id = ? "
                "ORDER BY 1",
                (run_id,),
            ).fetchall()
        return row["study_id"], [r[0] for r in cited]


class TraceErasureHook:
    """Erasure of agent runs and their steps: runs about the patient, on one of their records as the study, or
    citing one of their records as evidence (step outputs hold the evidence text). Idempotent."""

    name = "agent_traces"

    def __init__(self, db_path: Path) -> None:
        self._traces = TraceStore(db_path)

    def erase(self, scope: ErasureScope) -> HookReport:
        runs, steps = self._traces.delete_runs(self._traces.run_ids_of(scope.patient_id, scope.record_ids))
        return HookReport(hook=self.name, removed={"agent_runs": runs, "agent_steps": steps})


class TraceLineageHook:
    """Lineage through agent runs: ``record:`` down → the runs citing it (or on it as the study); ``run:`` up →
    its study and the evidence records its steps cite."""

    name = "agent_traces"

    def __init__(self, db_path: Path) -> None:
        self._traces = TraceStore(db_path)

    def neighbours(self, node: str, *, up: bool) -> list[tuple[str, str, str]]:
        kind, _, ident = node.partition(":")
        if kind == "record" and not up:
            return [(f"run:{r}", "evidence in agent run", "") for r in self._traces.runs_citing(ident)]
        if kind == "run" and up:
            study, cited = self._traces.evidence_of(ident)
            out = [(f"record:{study}", "study of the run", "")] if study else []
            return out + [(f"record:{c}", "cited as evidence", "") for c in cited if c != study]
        return []
