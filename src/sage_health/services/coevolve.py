"""The data-model co-evolution loop as use cases: run one cycle, read the history of cycles, replay studies as
simulated radiologist feedback.

- :func:`run_cycle` — the loop decides ``snapshot``, ``train``, ``evaluate`` and ``promote`` for the session's
  principal before anything is written, and audits the cycle (:mod:`sage_health.apps.coevolve.loop`);
- :func:`history` — every recorded cycle and a plot of the primary metric; decided as ``evaluate`` (cycles are
  evaluation results) and audited;
- :func:`replay` — each study of a ``reports.jsonl`` file is drafted and reviewed through the radiology workflow
  by the session's principal (``generate`` and ``review`` are decided up front).

The loop's work files are scrubbed by erasure (:class:`sage_health.apps.coevolve.erasure.CoevolveErasureHook`,
registered in :mod:`sage_health.services.hooks`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sage_health.apps.coevolve import loop
from sage_health.apps.coevolve.decision import RULE
from sage_health.apps.coevolve.loop import TASK_SPECS, CycleRecord, LoopOptions, plot_history
from sage_health.apps.coevolve.replay import ReplayResult, replay_studies
from sage_health.apps.coevolve.spec import quiet, work_root
from sage_health.core.errors import ValidationError
from sage_health.data.governance.policy import Action
from sage_health.models.evaluation.harness import load_report_file
from sage_health.services.radiology import agent_context
from sage_health.services.session import Session


def run_cycle(
    session: Session, options: LoopOptions, *, on_progress: Callable[[str], None] | None = None
) -> CycleRecord:
    """One co-evolution cycle as the session's principal (``options.dry_run``: report what it would do, write
    nothing). The promotion rule is :data:`RULE`."""
    with session.runtime.workflow_lock:
        return loop.run_cycle(session.settings, session.governed(), options, progress=on_progress or quiet)


@dataclass(frozen=True)
class CoevolveHistory:
    cycles: tuple[CycleRecord, ...]
    """Oldest first."""
    plot: Path | None
    """The plot of the primary metric per cycle (``None`` when no cycle has metrics)."""

    def as_dict(self) -> dict[str, Any]:
        return {"cycles": [r.as_dict() for r in self.cycles], "plot": str(self.plot) if self.plot else None}


def history(session: Session, *, task: str | None = None, plot: Path | None = None) -> CoevolveHistory:
    """Every recorded cycle (of ``task``, or of all tasks), with the plot written to ``plot`` (default: in the
    store's ``coevolve`` folder)."""
    settings = session.settings
    if task is not None and task not in TASK_SPECS:
        raise ValidationError(f"unknown task {task!r}; the loop runs for: {', '.join(TASK_SPECS)}")
    session.decide(Action.EVALUATE, detail={"coevolve_history": task or "all"})
    records = tuple(loop.history(settings, task))
    target = plot or work_root(settings) / f"history-{task or 'all'}.png"
    plotted = plot_history(records, target) if records else None
    session.audit(Action.EVALUATE.value, detail={"coevolve_history": task or "all", "cycles": len(records)})
    return CoevolveHistory(cycles=records, plot=plotted)


def replay(
    session: Session,
    *,
    train_file: Path,
    offset: int = 0,
    limit: int = 100,
    model: str | None = "extractive",
    reject_ids: Collection[str] = (),
    on_progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Draft each of the ``limit`` studies after ``offset`` in ``train_file`` with ``model`` and approve it with
    the study's reference report as the edit (``reject_ids``: reject those instead), as the session's principal."""
    studies = load_report_file(train_file)[offset : offset + limit]
    with session.runtime.workflow_lock:
        ctx = agent_context(session, must_exist=False)  # a replay may be the first thing a store receives
        return replay_studies(ctx, ctx, studies, model=model, reject_ids=reject_ids, progress=on_progress)


__all__ = [
    "RULE",
    "TASK_SPECS",
    "CoevolveHistory",
    "CycleRecord",
    "LoopOptions",
    "ReplayResult",
    "history",
    "replay",
    "run_cycle",
]
