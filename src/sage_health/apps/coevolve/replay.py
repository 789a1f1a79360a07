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
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sage_health.agents.base import AgentContext
from sage_health.apps.radiology.workflow import draft_report, prepare_request, report_text, review_draft
from sage_health.core.errors import SageError
from sage_health.data.sqlite_tables import connect, immediate
from sage_health.models.evaluation.harness import ReportStudy

Progress = Callable[[int, int], None]


@dataclass
class ReplayResult:
    replayed: int = 0
    approved: int = 0
    edited: int = 0
    rejected: int = 0
    already: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
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


def _ledger(ctx: AgentContext) -> AbstractContextManager[sqlite3.Connection]:
    return connect(ctx.settings.db_path, schema=_LEDGER, what="the replay ledger")


def replayed_studies(ctx: AgentContext) -> set[str]:
    """Study ids already replayed into this store."""
    with _ledger(ctx) as conn:
        return {str(r["study_id"]) for r in conn.execute("SELECT study_id FROM coevolve_replay")}


def _mark(ctx: AgentContext, study_id: str, run_id: str, outcome: str) -> None:
    with _ledger(ctx) as conn, immediate(conn):
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
    started = time.perf_counter()
    result = ReplayResult()
    done = replayed_studies(drafter)
    for n, study in enumerate(studies, 1):
        if progress is not None:
            progress(n, len(studies))
        if study.id in done:
            result.already += 1
            continue
        if not (study.findings and study.impression):
            result.skipped["no findings or impression"] = result.skipped.get("no findings or impression", 0) + 1
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
                result.skipped[f"draft {outcome.status}"] = result.skipped.get(f"draft {outcome.status}", 0) + 1
                continue
            if study.id in reject_ids:
                review_draft(reviewer, outcome.run_id, approve=False, reason="replay: simulated rejection")
                result.rejected += 1
                _mark(drafter, study.id, outcome.run_id, "rejected")
            else:
                review = review_draft(
                    reviewer, outcome.run_id, approve=True, edited=report_text(study.findings, study.impression)
                )
                if review.feedback_kind == "edited":
                    result.edited += 1
                else:
                    result.approved += 1
                _mark(drafter, study.id, outcome.run_id, review.feedback_kind)
            result.replayed += 1
        except SageError as exc:
            result.problems.append(f"study {study.id}: {type(exc).__name__}: {exc}")
    result.seconds = time.perf_counter() - started
    return result
