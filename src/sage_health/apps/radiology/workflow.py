"""The chest X-ray report workflow: study in → evidence-cited, verified draft → radiologist review → signed report.

Steps (each persisted by the runner, see :mod:`sage_health.agents.runner`)::

    plan → retrieve → screen (safety) → imaging → write → verify → safety → [paused for review]

``draft_report`` validates the request *before* a run exists (unreadable image, unknown patient, empty
indication → :class:`~sage_health.core.errors.StudyInputError`, nothing stored), starts the run and returns the
draft. ``review_draft`` approves (optionally with the radiologist's edited text) or rejects a paused run:
an approval stores a signed ``DiagnosticReport`` whose provenance records draft → edit → signature, and every
review becomes a feedback event (``feedback_events``) for the co-evolution loop.
"""

from __future__ import annotations

import difflib
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sage_health.agents.base import AgentContext
from sage_health.agents.imaging import ImagingAgent, ImagingInput
from sage_health.agents.planner import Plan, Planner, PlannerInput
from sage_health.agents.retriever import Retrieval, Retriever, RetrieverInput
from sage_health.agents.runner import Runner, RunState, Workflow, WorkflowStep
from sage_health.agents.safety import Safety, SafetyCheckInput, SafetyScreenInput
from sage_health.agents.trace import RunRecord, RunStatus
from sage_health.agents.types import Draft, EvidenceItem, EvidenceScreen, ImagingResult, SafetyReport, Verification
from sage_health.agents.verifier import Verifier, VerifierInput
from sage_health.agents.writer import Writer, WriterInput
from sage_health.core.errors import PolicyViolation, RunStateError, StudyInputError
from sage_health.core.hashing import sha256_text
from sage_health.core.provenance import Provenance, Transform
from sage_health.data.feedback import FeedbackKind, FeedbackStore
from sage_health.data.governance.policy import Action
from sage_health.data.schema import Coding, DiagnosticReport, Image, Patient, ReportSections
from sage_health.data.store.protocol import SearchFilters
from sage_health.models.imaging.quality import require_readable

TASK = "radiology_report"
SIGNED_SOURCE = "sage-radiology"
WORKFLOW_VERSION = "1"


class DraftRequest(BaseModel):
    """A validated study: what the workflow drafts from."""

    model_config = ConfigDict(frozen=True)

    indication: str = Field(min_length=1)
    comparison: str | None = None
    patient_id: str | None = None
    study_id: str | None = None
    images: tuple[str, ...] = ()
    views: tuple[str | None, ...] = ()
    image_ids: tuple[str, ...] = ()
    """Store ids of the study's Image records (when the images came from the store)."""
    model: str | None = None
    seed: int = 13


def _study_images(ctx: AgentContext, study_id: str) -> list[Image]:
    found: list[Image] = []
    for stored in ctx.store.iter_records(SearchFilters(resource_types=("Image",))):
        rec = stored.record
        if isinstance(rec, Image) and rec.study_id == study_id:
            found.append(rec)
    return sorted(found, key=lambda r: r.id)


def prepare_request(
    ctx: AgentContext,
    *,
    indication: str | None,
    images: list[Path] | None = None,
    comparison: str | None = None,
    patient_id: str | None = None,
    study_id: str | None = None,
    model: str | None = None,
    seed: int = 13,
) -> DraftRequest:
    """Check a draft request against the store and the files; raise ``StudyInputError`` naming what is wrong."""
    views: list[str | None] = []
    image_ids: list[str] = []
    paths = list(images or [])
    if study_id:
        stored = ctx.store.get(study_id)
        if stored is not None and isinstance(stored.record, DiagnosticReport):
            rs = stored.record.report_sections
            if indication is None:
                indication = rs.indication
            if comparison is None:
                comparison = rs.comparison
            if patient_id is None:
                patient_id = stored.record.patient_id
        if not paths:
            for img in _study_images(ctx, study_id):
                paths.append(Path(img.pixel_ref))
                views.append(img.view)
                image_ids.append(img.id)
    if indication is None:
        raise StudyInputError(
            "no indication: pass --indication TEXT (the clinical question), or --study-id of a stored report with one"
        )
    if not indication.strip():
        raise StudyInputError("empty indication: --indication must contain the clinical question")
    if patient_id is not None:
        stored_patient = ctx.store.get(patient_id)
        if stored_patient is None or not isinstance(stored_patient.record, Patient):
            raise StudyInputError(f"unknown patient {patient_id}: no Patient record with that id in the store")
    require_readable(paths)
    if not views:
        views = [None] * len(paths)
    return DraftRequest(
        indication=" ".join(indication.split()),
        comparison=" ".join(comparison.split()) if comparison and comparison.strip() else None,
        patient_id=patient_id,
        study_id=study_id,
        images=tuple(str(p.resolve()) for p in paths),
        views=tuple(views),
        image_ids=tuple(image_ids),
        model=model,
        seed=seed,
    )


# --------------------------------------------------------------------------------------------- the workflow


def _request(state: RunState) -> DraftRequest:
    assert isinstance(state.request, DraftRequest)  # noqa: S101 - the workflow's request model
    return state.request


def _kept_evidence(state: RunState) -> tuple[EvidenceItem, ...]:
    return state.output("screen", EvidenceScreen).kept


def _writer_input(state: RunState) -> WriterInput:
    req = _request(state)
    plan = state.output("plan", Plan)
    screen = state.output("screen", EvidenceScreen)
    kept = {e.id for e in screen.kept}
    retrieval = state.output("retrieve", Retrieval)
    return WriterInput(
        indication=req.indication,
        comparison=req.comparison,
        exemplars=tuple(e for e in retrieval.exemplars if e.id in kept),
        evidence=screen.kept,
        imaging=state.output("imaging", ImagingResult),
        model_ref=plan.model_ref,
        fallback_ref=plan.fallback_ref,
        seed=req.seed,
    )


def _finish(state: RunState) -> tuple[RunStatus, dict[str, Any]]:
    outcome = outcome_of(state)
    return ("blocked" if outcome.blocked else "paused"), outcome.model_dump(mode="json")


def radiology_workflow(ctx: AgentContext) -> Workflow:
    similar = ctx.settings.similar_reports
    return Workflow(
        task=TASK,
        request_model=DraftRequest,
        plan_step="plan",
        steps=(
            WorkflowStep(
                "plan",
                Planner(),
                Plan,
                lambda s: PlannerInput(
                    task=TASK,
                    model=_request(s).model,
                    has_images=bool(_request(s).images),
                    patient_id=_request(s).patient_id,
                ),
            ),
            WorkflowStep(
                "retrieve",
                Retriever(),
                Retrieval,
                lambda s: RetrieverInput(
                    query=_request(s).indication,
                    patient_id=_request(s).patient_id,
                    exclude_ids=tuple(x for x in (_request(s).study_id,) if x),
                    similar_reports=similar,
                ),
                evidence_of=lambda out: [e.id for e in out.evidence] if isinstance(out, Retrieval) else [],
            ),
            WorkflowStep(
                "screen",
                Safety(),
                EvidenceScreen,
                lambda s: SafetyScreenInput(
                    patient_id=_request(s).patient_id, evidence=s.output("retrieve", Retrieval).evidence
                ),
                evidence_of=lambda out: [e.id for e in out.kept] if isinstance(out, EvidenceScreen) else [],
            ),
            WorkflowStep(
                "imaging",
                ImagingAgent(),
                ImagingResult,
                lambda s: ImagingInput(
                    image_paths=_request(s).images, views=_request(s).views, study_id=_request(s).study_id
                ),
                evidence_of=lambda out: [f.evidence_id for f in out.findings] if isinstance(out, ImagingResult) else [],
            ),
            WorkflowStep(
                "write",
                Writer(),
                Draft,
                _writer_input,
                evidence_of=lambda out: out.citations() if isinstance(out, Draft) else [],
            ),
            WorkflowStep(
                "verify",
                Verifier(),
                Verification,
                lambda s: VerifierInput(
                    draft=s.output("write", Draft),
                    evidence=_kept_evidence(s),
                    imaging=s.output("imaging", ImagingResult),
                ),
                evidence_of=lambda out: out.draft.citations() if isinstance(out, Verification) else [],
                model_of=lambda out: out.draft.model_ref if isinstance(out, Verification) else None,
            ),
            WorkflowStep(
                "safety",
                Safety(),
                SafetyReport,
                lambda s: SafetyCheckInput(
                    patient_id=_request(s).patient_id,
                    draft=s.output("verify", Verification).draft,
                    evidence=s.output("retrieve", Retrieval).evidence,
                ),
            ),
        ),
        finish=_finish,
    )


class DraftOutcome(BaseModel):
    """What the radiologist sees (and what ``--json`` prints)."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    status: str = "paused"
    findings: str
    impression: str
    draft: Draft
    flags: tuple[dict[str, Any], ...] = ()
    violations: tuple[dict[str, Any], ...] = ()
    blocked: bool = False
    labels: dict[str, dict[str, str]] = Field(default_factory=dict)
    notes: tuple[str, ...] = ()
    plan_notes: tuple[str, ...] = ()
    model_ref: str | None = None
    evidence: tuple[dict[str, Any], ...] = ()
    quarantined: tuple[str, ...] = ()
    imaging: dict[str, Any] | None = None


def outcome_of(state: RunState) -> DraftOutcome:
    verification = state.output("verify", Verification)
    safety = state.output("safety", SafetyReport)
    screen = state.output("screen", EvidenceScreen)
    plan = state.output("plan", Plan)
    imaging = state.output("imaging", ImagingResult)
    draft = verification.draft
    return DraftOutcome(
        run_id=state.run_id,
        status="blocked" if safety.blocked else "paused",
        findings=draft.findings,
        impression=draft.impression,
        draft=draft,
        flags=tuple(f.model_dump(mode="json") for f in verification.flags),
        violations=tuple(v.model_dump(mode="json") for v in (*screen.violations, *safety.violations)),
        blocked=safety.blocked,
        labels=verification.labels,
        notes=draft.notes,
        plan_notes=plan.notes,
        model_ref=draft.model_ref,
        evidence=tuple(
            {"id": e.id, "kind": e.kind, "score": e.score, "text": e.text[:400]}
            for e in (*screen.kept, *(_image_evidence(imaging)))
        ),
        quarantined=screen.quarantined,
        imaging=imaging.model_dump(mode="json"),
    )


def _image_evidence(imaging: ImagingResult) -> list[EvidenceItem]:
    return [EvidenceItem(id=f.evidence_id, kind="image_finding", text=f.sentence()) for f in imaging.findings]


def draft_report(ctx: AgentContext, request: DraftRequest, *, run_id: str | None = None) -> DraftOutcome:
    """Run the workflow up to the review pause (policy: ``generate``; one audit event per run, besides the
    events of every read and search the agents make). Inside an evaluation (a store acting as ``evaluate``) the
    evaluation's decision covers the generation."""
    ctx.store.decide(ctx.store.read_as or Action.GENERATE)
    record = Runner(ctx).start(
        radiology_workflow(ctx), request, run_id=run_id, patient_id=request.patient_id, study_id=request.study_id
    )
    outcome = load_outcome(ctx, record)
    _log_run(ctx, outcome, request)
    return outcome


def resume_run(ctx: AgentContext, run_id: str) -> DraftOutcome:
    ctx.store.decide(ctx.store.read_as or Action.GENERATE)
    record = Runner(ctx).resume(radiology_workflow(ctx), run_id)
    outcome = load_outcome(ctx, record)
    _log_run(ctx, outcome, DraftRequest.model_validate(record.request), resumed=True)
    return outcome


def _log_run(ctx: AgentContext, outcome: DraftOutcome, request: DraftRequest, *, resumed: bool = False) -> None:
    ids = [i for i in (request.study_id, request.patient_id) if i] + list(outcome.draft.citations())
    ctx.store.log(
        (ctx.store.read_as or Action.GENERATE).value,
        record_ids=ids,
        detail={"run_id": outcome.run_id, "task": TASK, "model": outcome.model_ref, "status": outcome.status,
                "resumed": resumed},
    )  # fmt: skip


def load_outcome(ctx: AgentContext, record: RunRecord) -> DraftOutcome:
    if record.result is None:
        raise RunStateError(f"run {record.run_id} is {record.status} and has no draft yet")
    outcome = DraftOutcome.model_validate(record.result)
    return outcome.model_copy(update={"status": record.status})


# --------------------------------------------------------------------------------------------- review

_SECTION_RE = re.compile(r"^\s*(FINDINGS|IMPRESSION)\s*:\s*", re.IGNORECASE | re.MULTILINE)


def parse_report_text(text: str, *, source: str = "edited report") -> tuple[str, str]:
    """``FINDINGS: …`` / ``IMPRESSION: …`` text (the format ``radiology draft`` prints) → (findings, impression)."""
    parts = _SECTION_RE.split(text)
    sections: dict[str, str] = {}
    for i in range(1, len(parts) - 1, 2):
        sections[parts[i].lower()] = " ".join(parts[i + 1].split())
    findings, impression = sections.get("findings", ""), sections.get("impression", "")
    if not findings or not impression:
        missing = " and ".join(n.upper() for n in ("findings", "impression") if not sections.get(n))
        raise StudyInputError(f"{source}: no {missing} section; write the report as 'FINDINGS: …' then 'IMPRESSION: …'")
    return findings, impression


def report_text(findings: str, impression: str) -> str:
    return f"FINDINGS: {findings}\n\nIMPRESSION: {impression}\n"


class ReviewOutcome(BaseModel):
    model_config = ConfigDict(frozen=True)

    run_id: str
    status: str
    feedback_kind: str
    record_id: str | None = None
    record_version: int | None = None
    diff: str = ""
    signer: str
    signature: str | None = None


def review_draft(
    ctx: AgentContext,
    run_id: str,
    *,
    approve: bool,
    edited: str | None = None,
    signer: str | None = None,
    reason: str | None = None,
) -> ReviewOutcome:
    """Approve (possibly edited) or reject a paused run. Idempotent under crashes: the signed record's content is
    a function of the run and the text (its time is the run's creation time), so re-running a review interrupted
    after the record was written stores nothing new and completes the run."""
    ctx.store.decide(Action.REVIEW)
    acting = ctx.store.access.principal.name
    if signer is not None and signer.strip() != acting:
        raise PolicyViolation(f"a review is signed by the acting principal ({acting}); act as {signer!r} with --as")
    runner = Runner(ctx)
    traces = runner.traces
    run = traces.get_run(run_id)
    if run.task != TASK:
        raise RunStateError(f"run {run_id} is a {run.task} run, not a radiology report")
    if run.status != "paused":
        hint = {
            "blocked": "the safety agent blocked this draft; start a new draft",
            "running": f"the run was interrupted; resume it with `sage-health runs resume {run_id}`",
            "failed": f"the run failed; resume it with `sage-health runs resume {run_id}`",
        }.get(run.status, "it was already reviewed")
        raise RunStateError(f"run {run_id} is {run.status}, not waiting for review: {hint}")
    outcome = load_outcome(ctx, run)
    request = DraftRequest.model_validate(run.request)
    signer = acting
    draft_text = report_text(outcome.findings, outcome.impression)
    draft_payload = {"findings": outcome.findings, "impression": outcome.impression, "model_ref": outcome.model_ref}
    if not approve:
        with traces.transaction() as conn:
            traces.add_step(
                run_id=run_id,
                step="review",
                agent="human",
                status="ok",
                input={"decision": "reject", "signer": signer, "reason": reason},
                output={"feedback": "rejected"},
                evidence_ids=(),
                model_ref=None,
                latency_ms=0.0,
                error=None,
                started_at=run.updated_at,
                conn=conn,
            )
            FeedbackStore.add(
                conn,
                run_id=run_id,
                task=TASK,
                kind="rejected",
                signer=signer,
                draft=draft_payload,
                final=None,
                diff="",
                model_ref=outcome.model_ref,
                reason=reason,
            )
            traces.set_status(run_id, "rejected", conn=conn)
        return ReviewOutcome(run_id=run_id, status="rejected", feedback_kind="rejected", signer=signer)
    if edited is not None:
        findings, impression = parse_report_text(edited)
    else:
        findings, impression = outcome.findings, outcome.impression
        if not findings or not impression:
            raise StudyInputError(
                f"run {run_id}: the draft has an empty section after verification; approve it with --edit-file "
                "holding the completed report"
            )
    final_text = report_text(findings, impression)
    diff = "".join(
        difflib.unified_diff(
            draft_text.splitlines(keepends=True),
            final_text.splitlines(keepends=True),
            fromfile=f"draft/{run_id}",
            tofile=f"signed/{run_id}",
        )
    )
    signature = sha256_text(f"{run_id}\n{signer}\n{final_text}")
    record = DiagnosticReport(
        id=f"{SIGNED_SOURCE}/DiagnosticReport/{run_id}",
        source=SIGNED_SOURCE,
        patient_id=request.patient_id,
        effective=datetime.fromisoformat(run.created_at),
        status="final",
        category="RAD",
        modality="CR",
        code=Coding(display="Chest X-ray"),
        report_sections=ReportSections(
            indication=request.indication, comparison=request.comparison, findings=findings, impression=impression
        ),
        image_ids=list(request.image_ids),
        provenance=Provenance(
            run_id=run_id,
            model_id=outcome.model_ref,
            derived_from=outcome.draft.citations() + request.image_ids,
            transforms=(
                Transform(name="draft", version=WORKFLOW_VERSION, params={"model": outcome.model_ref}),
                Transform(
                    name="edit",
                    version=WORKFLOW_VERSION,
                    params={"changed": bool(diff), "diff_sha256": sha256_text(diff) if diff else None},
                ),
                Transform(name="sign", version=WORKFLOW_VERSION, params={"signer": signer, "signature": signature}),
            ),
        ),
    )
    ctx.store.write([record], run_id=run_id, action=Action.REVIEW)
    stored = ctx.store.get(record.id)
    version = stored.version if stored is not None else None
    kind: FeedbackKind = "edited" if diff else "approved"
    with traces.transaction() as conn:
        traces.add_step(
            run_id=run_id,
            step="review",
            agent="human",
            status="ok",
            input={"decision": "approve", "signer": signer, "edited": edited is not None},
            output={"record_id": record.id, "record_version": version, "diff": diff, "signature": signature},
            evidence_ids=outcome.draft.citations(),
            model_ref=outcome.model_ref,
            latency_ms=0.0,
            error=None,
            started_at=run.updated_at,
            conn=conn,
        )
        FeedbackStore.add(
            conn,
            run_id=run_id,
            task=TASK,
            kind=kind,
            signer=signer,
            draft=draft_payload,
            final={"findings": findings, "impression": impression},
            diff=diff,
            record_id=record.id,
            record_version=version,
            model_ref=outcome.model_ref,
            reason=reason,
        )
        traces.set_status(run_id, "approved", conn=conn)
    return ReviewOutcome(
        run_id=run_id,
        status="approved",
        feedback_kind=kind,
        record_id=record.id,
        record_version=version,
        diff=diff,
        signer=signer,
        signature=signature,
    )
