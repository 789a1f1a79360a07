"""Agent runs and their traces: list the runs, read one run's persisted trace.

**Traces hold identified data.** Every step's input and output is kept as the agents saw it: the indication, the
patient's own records retrieved as evidence, the draft. Only principals whose view of the store is *identified*
(a clinician for treatment, a data steward) may read them. This module is the one place that rule lives; a refusal
is a :class:`~sage_health.core.errors.PolicyViolation` (HTTP 403) and is audited whichever channel asked (CLI, API).
"""

from __future__ import annotations

from dataclasses import dataclass

from sage_health.agents.trace import RunRecord, StepRecord, TraceStore
from sage_health.core.errors import PolicyViolation
from sage_health.data.governance.policy import Action
from sage_health.services.session import Session

IDENTIFIED_ONLY = "traces are identified data"


@dataclass(frozen=True)
class RunTrace:
    """One run and its persisted steps, oldest first."""

    run: RunRecord
    steps: tuple[StepRecord, ...]

    def as_dict(self) -> dict[str, object]:
        return {"run": self.run.model_dump(mode="json"), "steps": [s.model_dump(mode="json") for s in self.steps]}


@dataclass(frozen=True)
class RunList:
    """Runs, newest first."""

    runs: tuple[RunRecord, ...]
    status: str | None
    limit: int

    def as_list(self) -> list[dict[str, object]]:
        """The JSON rows (without the result and the plan: ``trace RUN_ID`` shows those)."""
        return [r.model_dump(mode="json", exclude={"result", "plan"}) for r in self.runs]


def require_identified_reader(session: Session, *, what: str, detail: dict[str, object] | None = None) -> None:
    """Refuse (and audit the refusal) unless the session's principal reads identified data for its purpose."""
    decision = session.decide(Action.READ, detail={**(detail or {}), "what": what})
    if decision.view != "identified":
        session.audit(
            Action.READ.value, detail={**(detail or {}), "what": what, "denied": IDENTIFIED_ONLY}, outcome="denied"
        )
        raise PolicyViolation(
            f"{session.access.label} sees de-identified data only; agent traces hold identified data "
            "(a clinician for treatment or a data steward may read them)"
        )


def trace(session: Session, run_id: str) -> RunTrace:
    """The persisted trace of ``run_id`` (identified readers only; the read is audited with the run's study and
    patient ids). An unknown run is :class:`~sage_health.core.errors.RunNotFoundError` (404), decided first."""
    require_identified_reader(session, what="trace", detail={"trace": run_id})
    traces = TraceStore(session.settings.db_path)
    run = traces.get_run(run_id)
    steps = tuple(traces.steps(run_id))
    session.audit(
        Action.READ.value,
        record_ids=[i for i in (run.study_id, run.patient_id) if i],
        detail={"trace": run_id, "steps": len(steps)},
    )
    return RunTrace(run=run, steps=steps)


def list_runs(session: Session, *, status: str | None = None, limit: int = 20) -> RunList:
    """Agent runs, newest first, optionally in one status (identified readers only: a run row holds its request)."""
    require_identified_reader(session, what="runs", detail={"status": status})
    found = tuple(TraceStore(session.settings.db_path).list_runs(status=status, limit=limit))
    session.audit(Action.READ.value, detail={"runs": len(found), "status": status})
    return RunList(runs=found, status=status, limit=limit)


__all__ = [
    "IDENTIFIED_ONLY",
    "RunList",
    "RunRecord",
    "RunTrace",
    "StepRecord",
    "list_runs",
    "require_identified_reader",
    "trace",
]
