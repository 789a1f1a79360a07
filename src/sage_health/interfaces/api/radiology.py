"""REST endpoints of the radiology workflow (mounted by :func:`sage_health.interfaces.api.create_app`).

- ``POST /v1/radiology/drafts`` — validate the study, run the workflow, return the draft (it then waits for review).
- ``POST /v1/radiology/drafts/{run_id}/review`` — approve (optionally with the edited report) or reject.
- ``GET /v1/runs`` — runs, newest first (``?status=paused&limit=20``).
- ``GET /v1/runs/{run_id}`` — a run and its persisted trace steps.
- ``POST /v1/runs/{run_id}/resume`` — continue an interrupted or failed run from its last finished step.

Each route parses the request and calls :mod:`sage_health.services.radiology` or :mod:`sage_health.services.traces`,
which decide, audit and serialise the workflows. Runs and traces hold identified data: a principal with a
de-identified view gets 403 (audited).

Image paths are paths on the server (the store's images, or files the server can read). One workflow runs at a
time per application (the store connection and the CPU are shared); the others wait (the service holds the lock).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query
from pydantic import BaseModel, ConfigDict, Field

from sage_health.interfaces.api.deps import SessionDep
from sage_health.services import radiology as service
from sage_health.services import traces
from sage_health.services.radiology import DraftOutcome, ReviewOutcome, report_text


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

    @app.post("/v1/radiology/drafts", tags=["radiology"])
    def create_draft(body: DraftBody, session: SessionDep) -> DraftOutcome:
        return service.draft(
            session,
            indication=body.indication,
            images=[Path(p) for p in body.images],
            comparison=body.comparison,
            patient_id=body.patient_id,
            study_id=body.study_id,
            model=body.model,
        )

    @app.post("/v1/radiology/drafts/{run_id}/review", tags=["radiology"])
    def review(run_id: str, body: ReviewBody, session: SessionDep) -> ReviewOutcome:
        edited = None
        if body.findings is not None or body.impression is not None:
            edited = report_text(body.findings or "", body.impression or "")
        return service.review(
            session, run_id, approve=body.approve, edited=edited, signer=body.signer, reason=body.reason
        )

    @app.get("/v1/runs", tags=["radiology"])
    def list_runs(
        session: SessionDep,
        status: Annotated[str | None, Query(description="Only runs in this status.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    ) -> list[dict[str, Any]]:
        return traces.list_runs(session, status=status, limit=limit).as_list()

    @app.get("/v1/runs/{run_id}", tags=["radiology"])
    def get_run(run_id: str, session: SessionDep) -> dict[str, Any]:
        return traces.trace(session, run_id).as_dict()

    @app.post("/v1/runs/{run_id}/resume", tags=["radiology"])
    def resume_run(run_id: str, session: SessionDep) -> DraftOutcome:
        return service.resume(session, run_id)
