"""Simulated radiologist feedback: replay studies of a train file through the real radiology workflow.

For each study of a ``reports.jsonl``-format file (IU X-ray, Open-i fields), the workflow drafts a report from the
study's indication (plan → retrieve → screen → imaging → write → verify → safety → paused), then the acting
clinician reviews it, taking the study's reference report as their edit: an approval whose signed
``DiagnosticReport`` holds the reference findings and impression, and whose feedback event holds the diff from the
draft. A study whose reference lacks findings or impression is skipped (counted). A study with ``reject`` in
``reject_ids`` is rejected instead (the draft becomes a negative example).

The replay is resumable: each reviewed study is written to the ``coevolve_replay`` ledger (study id → run id) in
the review's wake, and a study already in the ledger is skipped, so re-running after a crash replays only what is
missing (a crash between the review and the ledger line replays that one study again, as a new run).

Both policies are decided before the first study (``generate`` for the drafter, ``review`` for the reviewer), so a
principal who may draft but not sign gets one refusal, not a run per study.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sage_health.agents.base import AgentContext
from sage_health.apps.radiology.workflow import draft_report, prepare_request, report_text, review_draft
from sage_health.core.errors import SageError
from sage_health.data.governance.policy import Action
from sage_health.data.sqlite_tables import connect, immediate
from sage_health.models.evaluation.harness import ReportStudy

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ReplayResult:
    replayed: int = 0
    approved: int = 0
    edited: int = 0
    rejected: int = 0
    already: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "replayed": self.replayed,
            "approved": self.approved,
            "edited": self.edited,
            "rejected": self.rejected,
            "already_replayed": self.already,
            "skipped": dict(self.skipped),
            "problems": list(self.problems),
            "seconds": round(self.seconds, 2),
        }


_LEDGER = """
CREATE TABLE IF NOT EXISTS coevolve_replay (
    study_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    at TEXT NOT NULL
);
"""


def _ledger(db_path: Path) -> AbstractContextManager[sqlite3.Connection]:
    return connect(db_path, schema=_LEDGER, what="the replay ledger")


def replayed_studies(ctx: AgentContext) -> set[str]:
    """Study ids already replayed into this store."""
    with _ledger(ctx.settings.db_path) as conn:
        return {str(r["study_id"]) for r in conn.execute("SELECT study_id FROM coevolve_replay")}


def replay_ledger(db_path: Path) -> dict[str, str]:
    """The ledger: study id → the run that replayed it."""
    if not db_path.is_file():
        return {}
    with _ledger(db_path) as conn:
        return {
            str(r["study_id"]): str(r["run_id"]) for r in conn.execute("SELECT study_id, run_id FROM coevolve_replay")
        }


def forget_runs(db_path: Path, run_ids: Collection[str]) -> int:
    """Remove the ledger lines of ``run_ids`` (runs erased with their patient); returns how many were removed. A
    study whose line is gone is replayed again by the next replay, as a new run."""
    if not run_ids or not db_path.is_file():
        return 0
    ids = sorted(set(run_ids))
    with _ledger(db_path) as conn, immediate(conn):
        cur = conn.execute(f"DELETE FROM coevolve_replay WHERE run_id IN ({','.join('?' * len(ids))})", ids)
        return int(cur.rowcount)


def _mark(ctx: AgentContext, study_id: str, run_id: str, outcome: str) -> None:
    with _ledger(ctx.settings.db_path) as conn, immediate(conn):
        conn.execute(
            "INSERT OR REPLACE INTO coevolve_replay(study_id, run_id, outcome, at) VALUES (?,?,?,?)",
            (study_id, run_id, outcome, datetime.now(UTC).isoformat(timespec="seconds")),
        )


def replay_studies(
    drafter: AgentContext,
    reviewer: AgentContext,
    studies: Sequence[ReportStudy],
    *,
    model: str | None = "extractive",
    reject_ids: Collection[str] = (),
    progress: Progress | None = None,
) -> ReplayResult:
    """Draft each study with ``model`` as ``drafter`` and review it as ``reviewer`` (module docstring)."""
    drafter.store.decide(Action.GENERATE)
    reviewer.store.decide(Action.REVIEW)
    started = time.perf_counter()
    counts: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    problems: list[str] = []
    done = replayed_studies(drafter)
    for n, study in enumerate(studies, 1):
        if progress is not None:
            progress(n, len(studies))
        if study.id in done:
            counts["already"] += 1
            continue
        if not (study.findings and study.impression):
            skipped["no findings or impression"] += 1
            continue
        indication = study.indication or "Chest radiograph."
        try:
            request = prepare_request(
                drafter,
                indication=indication,
                comparison=study.comparison or None,
                model=model,
            )
            outcome = draft_report(drafter, request)
            if outcome.status != "paused":
                skipped[f"draft {outcome.status}"] += 1
                continue
            if study.id in reject_ids:
                review_draft(reviewer, outcome.run_id, approve=False, reason="replay: simulated rejection")
                counts["rejected"] += 1
                _mark(drafter, study.id, outcome.run_id, "rejected")
            else:
                review = review_draft(
                    reviewer, outcome.run_id, approve=True, edited=report_text(study.findings, study.impression)
                )
                counts["edited" if review.feedback_kind == "edited" else "approved"] += 1
                _mark(drafter, study.id, outcome.run_id, review.feedback_kind)
            counts["replayed"] += 1
        except SageError as exc:
            problems.append(f"study {study.id}: {type(exc).__name__}: {exc}")
    return ReplayResult(
        replayed=counts["replayed"],
        approved=counts["approved"],
        edited=counts["edited"],
        rejected=counts["rejected"],
        already=counts["already"],
        skipped=dict(skipped),
        problems=tuple(problems),
        seconds=time.perf_counter() - started,
    )
