"""REST endpoints of the radiology workflow (mounted by :func:`sage_health.interfaces.api.create_app`).

- ``POST /v1/radiology/drafts`` — validate the study, run the workflow, return the draft (it then waits for review).
- ``POST /v1/radiology/drafts/{run_id}/review`` — approve (optionally with the edited report) or reject.
- ``GET /v1/runs/{run_id}`` — a run and its persisted trace steps.

Image paths are paths on the server (the store's images, or files the server can read). One workflow runs at a
time per application (the store connection and the CPU are shared); the others wait.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from sage_health.agents.base import AgentContext
from sage_health.agents.trace import TraceStore
from sage_health.apps.radiology.workflow import (
    DraftOutcome,
    ReviewOutcome,
    draft_report,
    prepare_request,
    report_text,
    review_draft,
)
from sage_health.core.errors import PolicyViolation
from sage_health.data.governance.policy import Action
from sage_health.interfaces.api.deps import SessionDep
from sage_health.services.session import Session


class DraftBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    indication: str | None = Field(default=None, description="The clinical question (or from a stored study).")
    comparison: str | None = None
    patient_id: str | None = None
    study_id: str | None = None
    images: list[str] = Field(default_factory=list, description="PNG/DICOM paths readable by the server.")
    model: str | None = Field(default=None, description="Writer model NAME[@VERSION]; default: the planner's choice.")


class ReviewBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    approve: bool
    findings: str | None = Field(default=None, description="Edited FINDINGS (with impression) replaces the draft.")
    impression: str | None = None
    signer: str | None = Field(default=None, description="Must be the acting principal when given.")
    reason: str | None = None


def add_radiology_routes(app: FastAPI) -> None:
    """Mount the radiology routes (the session's runtime shares the store and generator pool per process)."""

    def context(session: Session) -> AgentContext:
        pool = session.pool()
        return AgentContext(settings=session.settings, store=session.governed(), registry=pool.registry, pool=pool)

    @app.post("/v1/radiology/drafts", tags=["radiology"])
    def create_draft(body: DraftBody, session: SessionDep) -> DraftOutcome:
        with session.runtime.workflow_lock:
            ctx = context(session)
            request = prepare_request(
                ctx,
                indication=body.indication,
                images=[Path(p) for p in body.images],
                comparison=body.comparison,
                patient_id=body.patient_id,
                study_id=body.study_id,
                model=body.model,
            )
            return draft_report(ctx, request)

    @app.post("/v1/radiology/drafts/{run_id}/review", tags=["radiology"])
    def review(run_id: str, body: ReviewBody, session: SessionDep) -> ReviewOutcome:
        edited = None
        if body.findings is not None or body.impression is not None:
            edited = report_text(body.findings or "", body.impression or "")
        with session.runtime.workflow_lock:
            return review_draft(
                context(session), run_id, approve=body.approve, edited=edited, signer=body.signer, reason=body.reason
            )

    @app.get("/v1/runs/{run_id}", tags=["radiology"])
    def get_run(run_id: str, session: SessionDep) -> dict[str, Any]:
        s = session.settings
        governed = session.governed()
        decision = governed.decide(Action.READ)
        if decision.view != "identified":
            raise PolicyViolation(f"{governed.access.label} sees de-identified data only; agent traces are identified")
        traces = TraceStore(s.db_path)
        run = traces.get_run(run_id)
        governed.log(Action.READ.value, record_ids=[i for i in (run.study_id, run.patient_id) if i],
                     detail={"trace": run_id})  # fmt: skip
        return {
            "run": run.model_dump(mode="json"),
            "steps": [st.model_dump(mode="json") for st in traces.steps(run_id)],
        }
