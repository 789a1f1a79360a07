"""The retriever: what the data ecosystem knows that is relevant to one study.

Three kinds of evidence, each an :class:`~sage_health.agents.types.EvidenceItem` with the record id it is cited by:

- **similar prior reports** — hybrid (BM25 + dense) search for the study's indication over the *indication*
  sections of radiology reports (``DiagnosticReport`` with findings or impression), topped up from all report
  sections when fewer than ``similar_reports`` match; the reports' FINDINGS and IMPRESSION become evidence and
  in-context exemplars (indication → findings → impression). The study's own report and anything in
  ``exclude_ids`` are never returned (no answer leakage when re-drafting a stored study).
- **the patient's history** — with a ``patient_id``: the patient's most relevant records (conditions,
  observations, prior reports) for the indication, in date order (``patient_context``).
- **knowledge passages** — ``KnowledgeDocument`` hits for the indication.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from sage_health.agents.base import AgentContext
from sage_health.agents.types import EvidenceItem
from sage_health.core.errors import RetrievalError
from sage_health.data.retrieval import patient_context
from sage_health.data.schema import DiagnosticReport
from sage_health.data.store.protocol import SearchFilters, SearchQuery


class RetrieverInput(BaseModel):
    model_config = ConfigDict(frozen=True)

    query: str
    patient_id: str | None = None
    exclude_ids: tuple[str, ...] = ()
    similar_reports: int = 3
    history: int = 5
    knowledge: int = 2


class ReportExemplar(BaseModel):
    """A retrieved prior report as an in-context exemplar."""

    model_config = ConfigDict(frozen=True)

    id: str
    indication: str
    findings: str
    impression: str


class Retrieval(BaseModel):
    model_config = ConfigDict(frozen=True)

    evidence: tuple[EvidenceItem, ...] = ()
    exemplars: tuple[ReportExemplar, ...] = ()


_Found = tuple[ReportExemplar, float, int, str | None]
"""A similar report, its fused score, its version and its patient."""


def report_evidence_text(findings: str, impression: str) -> str:
    parts = [f"FINDINGS: {findings}" if findings else "", f"IMPRESSION: {impression}" if impression else ""]
    return "\n".join(p for p in parts if p)


class Retriever:
    name: ClassVar[str] = "retriever"
    input_model: ClassVar[type[BaseModel]] = RetrieverInput
    output_model: ClassVar[type[BaseModel]] = Retrieval

    def _similar(
        self, payload: RetrieverInput, ctx: AgentContext
    ) -> list[tuple[ReportExemplar, float, int, str | None]]:
        found: list[tuple[ReportExemplar, float, int, str | None]] = []
        seen = set(payload.exclude_ids)
        want = payload.similar_reports
        for sections in (("indication",), ()):
            if len(found) >= want:
                break
            hits = ctx.store.search(
                SearchQuery(
                    text=payload.query,
                    k=min(1000, max(4 * want, 20)),
                    filters=SearchFilters(resource_types=("DiagnosticReport",), sections=sections),
                )
            )
            for hit in hits:
                if hit.record_id in seen:
                    continue
                seen.add(hit.record_id)
                stored = ctx.store.get(hit.record_id)
                if stored is None or not isinstance(stored.record, DiagnosticReport):
                    continue
                rs = stored.record.report_sections
                if not (rs.findings or rs.impression):
                    continue
                found.append(
                    (
                        ReportExemplar(
                            id=hit.record_id,
                            indication=rs.indication or "",
                            findings=rs.findings or "",
                            impression=rs.impression or "",
                        ),
                        hit.score,
                        stored.version,
                        stored.record.patient_id,
                    )
                )
                if len(found) >= want:
                    break
        return found

    def run(self, payload: RetrieverInput, ctx: AgentContext) -> Retrieval:
        evidence: list[EvidenceItem] = []
        exemplars: list[ReportExemplar] = []
        if payload.similar_reports:
            for ex, score, version, patient in self._similar(payload, ctx):
                exemplars.append(ex)
                evidence.append(
                    EvidenceItem(
                        id=ex.id,
                        kind="similar_report",
                        text=report_evidence_text(ex.findings, ex.impression),
                        patient_id=patient,
                        record_version=version,
                        score=score,
                    )
                )
        if payload.patient_id and payload.history:
            try:
                context = patient_context(ctx.store, payload.patient_id, payload.query, k=payload.history)
            except RetrievalError:
                context = None  # a patient with no records in the window has no history to cite
            for hit in context.hits if context is not None else ():
                if hit.record_id in payload.exclude_ids:
                    continue
                evidence.append(
                    EvidenceItem(
                        id=hit.record_id,
                        kind="patient_history",
                        text=hit.text,
                        patient_id=hit.patient_id,
                        record_version=hit.record_version,
                        score=hit.score,
                        section=hit.section,
                    )
                )
        if payload.knowledge:
            for hit in ctx.store.search(
                SearchQuery(
                    text=payload.query,
                    k=payload.knowledge,
                    filters=SearchFilters(resource_types=("KnowledgeDocument",)),
                )
            ):
                evidence.append(
                    EvidenceItem(
                        id=hit.record_id,
                        kind="knowledge",
                        text=hit.text,
                        record_version=hit.record_version,
                        score=hit.score,
                        section=hit.section,
                    )
                )
        return Retrieval(evidence=tuple(evidence), exemplars=tuple(exemplars))
