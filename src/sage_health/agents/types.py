"""Typed values the agents exchange. Every agent input and output is one of these frozen pydantic models.

They are what the runner persists in the trace (``model_dump(mode="json")``) and reads back on resume, so
they must round-trip through JSON.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sage_health.models.imaging.quality import ImageCheck

EvidenceKind = Literal["similar_report", "patient_history", "knowledge", "image_finding"]
ReportSection = Literal["findings", "impression"]


class EvidenceItem(BaseModel):
    """One piece of evidence an agent may cite. ``id`` is a store record id, or ``image:<id>#<observation>``."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: EvidenceKind
    text: str
    patient_id: str | None = None
    """The patient the evidence belongs to (None for knowledge / de-identified corpora)."""
    record_version: int | None = None
    score: float | None = None
    section: str | None = None
    """Report section the text comes from (``findings``, ``impression``, …) where known."""


ImageQuality = ImageCheck
"""Quality checks of one input image (defined with the checks in :mod:`sage_health.models.imaging.quality`)."""


class ImageFinding(BaseModel):
    """One observation the image model is confident about (present or absent)."""

    model_config = ConfigDict(frozen=True)

    observation: str
    """A CheXpert observation name (see ``models.evaluation.labeler.OBSERVATIONS``)."""
    present: bool
    probability: float
    image_id: str
    evidence_id: str
    """``image:<image_id>#<observation>``: what a sentence cites when it relies on this finding."""

    def sentence(self) -> str:
        verb = "suggests" if self.present else "shows no"
        return f"Image model {verb} {self.observation.lower()} (p={self.probability:.2f}, image {self.image_id})."


class ImagingResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    images: tuple[ImageQuality, ...] = ()
    findings: tuple[ImageFinding, ...] = ()
    abstained: bool = True
    reason: str | None = None
    """Why the imaging agent abstained (no model registered, no usable image, low confidence)."""
    model_ref: str | None = None
    model_note: str | None = None
    """Which model version was used and why (production, or the newest candidate when none is in production)."""


class DraftSentence(BaseModel):
    model_config = ConfigDict(frozen=True)

    section: ReportSection
    text: str
    citations: tuple[str, ...] = ()
    """Evidence ids (``EvidenceItem.id``) this sentence relies on."""
    support: float | None = None
    """Best similarity between the sentence and a cited evidence sentence (0..1), when computed."""


class Draft(BaseModel):
    model_config = ConfigDict(frozen=True)

    sentences: tuple[DraftSentence, ...] = ()
    notes: tuple[str, ...] = ()
    """Plain-language notes for the radiologist (e.g. the imaging agent abstained and why)."""
    model_ref: str | None = None

    def section_text(self, section: ReportSection) -> str:
        return " ".join(s.text for s in self.sentences if s.section == section)

    @property
    def findings(self) -> str:
        return self.section_text("findings")

    @property
    def impression(self) -> str:
        return self.section_text("impression")

    def citations(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for s in self.sentences:
            for c in s.citations:
                seen.setdefault(c, None)
        return tuple(seen)


FlagKind = Literal["unsupported", "label_conflict", "laterality", "negation", "empty_section"]


class VerifierFlag(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: FlagKind
    section: ReportSection | None
    sentence: str | None
    """The flagged sentence's text (draft text, never evidence text of another patient)."""
    detail: str
    action: Literal["removed", "flagged"]


class Verification(BaseModel):
    model_config = ConfigDict(frozen=True)

    draft: Draft
    """The draft after removing unsupported sentences."""
    flags: tuple[VerifierFlag, ...] = ()
    labels: dict[str, dict[str, str]] = Field(default_factory=dict)
    """CheXpert-style labels per section: ``{"findings": {"Cardiomegaly": "positive", …}, "impression": …}``."""

    @property
    def ok(self) -> bool:
        return not self.flags


ViolationKind = Literal["phi_leak", "prompt_injection", "policy"]


class SafetyViolation(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: ViolationKind
    detail: str
    """What was found, naming evidence ids, never quoting PHI."""
    evidence_id: str | None = None
    blocking: bool = True


class EvidenceScreen(BaseModel):
    """The safety agent's screen of retrieved evidence before any of it reaches a prompt."""

    model_config = ConfigDict(frozen=True)

    kept: tuple[EvidenceItem, ...]
    quarantined: tuple[str, ...] = ()
    """Evidence ids withheld from the writer (prompt-injection attempts)."""
    violations: tuple[SafetyViolation, ...] = ()


class SafetyReport(BaseModel):
    """The safety agent's check of a draft. ``blocked`` drafts never reach a radiologist's sign-off."""

    model_config = ConfigDict(frozen=True)

    blocked: bool
    violations: tuple[SafetyViolation, ...] = ()
