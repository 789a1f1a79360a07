"""The chest X-ray report workflow as use cases: draft a report, review (approve, edit, reject) it, resume an
interrupted run, and evaluate the whole workflow on explicit files.

Each takes an authenticated :class:`~sage_health.services.session.Session`. The workflow decides and audits
through the session's governed store (``generate`` for a draft or a resume, ``review`` for a review, ``evaluate``
for an evaluation; every read and search the agents make is decided and audited too). A review is signed by the
session's principal, never by a name the caller types. Workflows of one process run one at a time
(``session.runtime.workflow_lock``): they share the store connection and the CPU.

Runs and traces are :mod:`sage_health.services.traces`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sage_health.agents.base import AgentContext
from sage_health.apps.radiology.evaluation import SystemResult, comparison_markdown, run_radiology_eval
from sage_health.apps.radiology.workflow import (
    DraftOutcome,
    ReviewOutcome,
    draft_report,
    prepare_request,
    report_text,
    resume_run,
    review_draft,
)
from sage_health.data.governance.policy import Action
from sage_health.models.evaluation.labeler import CheXpertLabeler
from sage_health.services.session import Session
from sage_health.services.traces import require_identified_reader

EvalProgress = Callable[[str, int, int], None]
"""(system, studies done, studies in all)."""

DEFAULT_BASELINE = "extractive@1"


def agent_context(session: Session, *, must_exist: bool = True) -> AgentContext:
    """The agents' context for this session: its governed store, and the process's registry and generator pool."""
    pool = session.pool()
    store = session.governed(must_exist=must_exist)
    return AgentContext(settings=session.settings, store=store, registry=pool.registry, pool=pool)


def draft(
    session: Session,
    *,
    indication: str | None = None,
    images: Sequence[Path] = (),
    comparison: str | None = None,
    patient_id: str | None = None,
    study_id: str | None = None,
    model: str | None = None,
) -> DraftOutcome:
    """Validate the study (nothing is stored for a bad one: :class:`~sage_health.core.errors.StudyInputError`),
    then run plan → retrieve → screen → imaging → write → verify → safety and pause for review."""
    session.decide(Action.GENERATE)  # before the study is read: a principal who may not draft learns nothing
    with session.runtime.workflow_lock:
        ctx = agent_context(session)
        request = prepare_request(
            ctx,
            indication=indication,
            images=list(images),
            comparison=comparison,
            patient_id=patient_id,
            study_id=study_id,
            model=model,
        )
        return draft_report(ctx, request)


def review(
    session: Session,
    run_id: str,
    *,
    approve: bool,
    edited: str | None = None,
    signer: str | None = None,
    reason: str | None = None,
) -> ReviewOutcome:
    """Approve (with ``edited``, the report as ``FINDINGS: … IMPRESSION: …`` text, if the radiologist changed it)
    or reject a paused draft. ``signer``, when given, must be the session's principal."""
    with session.runtime.workflow_lock:
        return review_draft(
            agent_context(session), run_id, approve=approve, edited=edited, signer=signer, reason=reason
        )


def resume(session: Session, run_id: str) -> DraftOutcome:
    """Continue an interrupted (``running``) or ``failed`` run from its last finished step. The run goes on from
    its persisted steps, whose outputs the result shows: like its trace, identified readers only."""
    require_identified_reader(session, what="resume", detail={"run_id": run_id})
    with session.runtime.workflow_lock:
        return resume_run(agent_context(session), run_id)


@dataclass(frozen=True)
class RadiologyEvaluation:
    """Every system's evaluation run, and the comparison table with the published R2Gen numbers."""

    systems: tuple[SystemResult, ...]
    comparison_markdown: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "systems": [
                {
                    "model": r.ref,
                    "run_id": r.outcome.run.run_id,
                    "eval_set": r.outcome.eval_set,
                    "metrics": r.outcome.run.metrics,
                    "report": str(r.outcome.files.json_path),
                }
                for r in self.systems
            ],
            "comparison_markdown": self.comparison_markdown,
        }


def evaluate(
    session: Session,
    *,
    train: Path,
    test: Path,
    model: str | None = None,
    baseline: str | None = DEFAULT_BASELINE,
    limit: int | None = None,
    seed: int = 13,
    drop_leaks: bool = False,
    out_dir: Path | None = None,
    on_progress: EvalProgress | None = None,
) -> RadiologyEvaluation:
    """The whole workflow per test study for ``model`` (default: the configured generator) and ``baseline``
    (``None`` or ``""``: none), scored against the reference reports; the retrieval memory is the train file only
    (:mod:`sage_health.apps.radiology.evaluation`). Decided as ``evaluate`` and audited (file hashes, no paths)."""
    session.decide(Action.EVALUATE)
    settings = session.settings
    refs = [model or settings.generator] + ([baseline] if baseline else [])
    results = run_radiology_eval(
        settings=settings,
        governed=session.governed(must_exist=False),
        registry=session.registry,
        train_file=train,
        test_file=test,
        out_dir=out_dir or settings.store / "evals" / "radiology",
        models=refs,
        labeler=CheXpertLabeler.from_data_dir(settings.data_dir),
        limit=limit,
        seed=seed,
        drop_leaks=drop_leaks,
        progress=on_progress,
    )
    return RadiologyEvaluation(systems=tuple(results), comparison_markdown=comparison_markdown(results))


__all__ = [
    "DraftOutcome",
    "RadiologyEvaluation",
    "ReviewOutcome",
    "SystemResult",
    "draft",
    "evaluate",
    "report_text",
    "resume",
    "review",
]
