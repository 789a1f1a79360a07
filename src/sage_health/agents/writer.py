"""The writer: drafts FINDINGS and IMPRESSION with the plan's generator, and attaches evidence to every sentence.

Generation is two calls, both with the retrieved similar reports as in-context exemplars (the adaptation that
measured best in the model layer's baselines): indication → FINDINGS (``cxr-findings-from-indication``), then
the drafted findings → IMPRESSION (``cxr-impression-from-findings``). The text is split into sentences, cleaned
(section labels stripped, repeats dropped — small models loop) and each sentence cites the evidence whose
best sentence supports it most (:func:`~sage_health.agents.support.best_support`, up to two ids at or above
``support_threshold``; image findings count as evidence). A sentence with no support keeps no citation and the
verifier removes it — the writer does not pretend.

Image findings are not turned into report prose: they are listed in the draft notes and offered as evidence,
and the notes say when the imaging agent abstained. If the plan's generator cannot load or fails, the writer
uses the plan's fallback (``extractive@1``) and says so in the notes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from sage_health.agents.base import AgentContext
from sage_health.agents.retriever import ReportExemplar
from sage_health.agents.support import best_support, split_sentences
from sage_health.agents.types import Draft, DraftSentence, EvidenceItem, ImagingResult, ReportSection
from sage_health.core.errors import AgentError, ModelError
from sage_health.models.generation.base import GenerationParams, Generator
from sage_health.models.generation.prompts import FINDINGS_FROM_INDICATION, IMPRESSION_FROM_FINDINGS, Exemplar

_LABEL = re.compile(r"^\s*(findings|impression|indication|comparison)\s*:\s*", re.IGNORECASE)
# Small models sometimes echo the prompt scaffolding after the answer: cut the text there.
_ECHO = re.compile(r"</?\s*(input|evidence|question|options|task)\b|\bWrite the (impression|findings)\b|<\|im_", re.I)
_MAX_SENTENCES: dict[ReportSection, int] = {"findings": 12, "impression": 4}


class WriterInput(BaseModel):
    model_config = ConfigDict(frozen=True)

    indication: str
    comparison: str | None = None
    exemplars: tuple[ReportExemplar, ...] = ()
    evidence: tuple[EvidenceItem, ...] = ()
    imaging: ImagingResult | None = None
    model_ref: str
    fallback_ref: str | None = None
    findings_tokens: int = 160
    impression_tokens: int = 64
    seed: int = 13


def clean_sentences(text: str, section: ReportSection, *, truncated: bool = False) -> list[str]:
    """Sentences of generated text: prompt echoes cut, section labels stripped, repeats dropped, capped; with
    ``truncated`` (the token budget ran out) a final sentence without closing punctuation is dropped."""
    echo = _ECHO.search(text)
    if echo is not None:
        text = text[: echo.start()]
        truncated = True
    parts = split_sentences(_LABEL.sub("", text.strip()))
    if truncated and parts and not parts[-1].rstrip().endswith((".", "!", "?")):
        parts = parts[:-1]
    out: list[str] = []
    seen: set[str] = set()
    for raw in parts:
        sentence = _LABEL.sub("", raw).strip()
        key = re.sub(r"\W+", " ", sentence.lower()).strip()
        if len(key) < 3 or key in seen:
            continue
        seen.add(key)
        out.append(sentence)
        if len(out) >= _MAX_SENTENCES[section]:
            break
    return out


def _input_text(indication: str, comparison: str | None) -> str:
    parts = [f"Indication: {indication}" if indication else "", f"Comparison: {comparison}" if comparison else ""]
    return "\n".join(p for p in parts if p)


def cite(
    sentence: str, section: ReportSection, evidence: Sequence[EvidenceItem], threshold: float, *, max_ids: int = 2
) -> DraftSentence:
    matches = best_support(sentence, evidence)
    cited = [m for m in matches if m.score >= threshold][:max_ids]
    return DraftSentence(
        section=section,
        text=sentence,
        citations=tuple(m.evidence_id for m in cited),
        support=round(matches[0].score, 4) if matches else 0.0,
    )


class Writer:
    name: ClassVar[str] = "writer"
    input_model: ClassVar[type[BaseModel]] = WriterInput
    output_model: ClassVar[type[BaseModel]] = Draft

    def _generate(self, gen: Generator, payload: WriterInput) -> tuple[str, str]:
        # Most similar last: the closest exemplar sits right before the study in the prompt.
        shots = payload.exemplars[::-1]
        findings_msgs = FINDINGS_FROM_INDICATION.messages(
            _input_text(payload.indication, payload.comparison),
            exemplars=[
                Exemplar(input=_input_text(e.indication, None), output=e.findings, id=e.id) for e in shots if e.findings
            ],
        )
        findings = gen.generate(
            findings_msgs,
            GenerationParams(max_new_tokens=payload.findings_tokens, temperature=0.0, seed=payload.seed),
        )
        findings_text = " ".join(
            clean_sentences(findings.text, "findings", truncated=findings.finish_reason == "length")
        )
        impression_msgs = IMPRESSION_FROM_FINDINGS.messages(
            findings_text or _input_text(payload.indication, payload.comparison),
            exemplars=[
                Exemplar(input=e.findings, output=e.impression, id=e.id) for e in shots if e.findings and e.impression
            ],
        )
        impression = gen.generate(
            impression_msgs,
            GenerationParams(max_new_tokens=payload.impression_tokens, temperature=0.0, seed=payload.seed),
        )
        impression_text = " ".join(
            clean_sentences(impression.text, "impression", truncated=impression.finish_reason == "length")
        )
        return findings_text, impression_text

    def run(self, payload: WriterInput, ctx: AgentContext) -> Draft:
        notes: list[str] = []
        refs = [payload.model_ref] + ([payload.fallback_ref] if payload.fallback_ref else [])
        result: tuple[str, str] | None = None
        used: str | None = None
        failure: str | None = None
        for ref in refs:
            try:
                model, gen = ctx.pool.get(ref)
                result = self._generate(gen, payload)
            except ModelError as exc:
                failure = f"{ref} failed ({type(exc).__name__}: {exc})"
                notes.append(f"{failure}; " + ("trying the fallback" if ref != refs[-1] else "no fallback left"))
                continue
            used = model.ref
            break
        if result is None or used is None:
            raise AgentError(f"writer: every generator failed; last: {failure}")
        if used != payload.model_ref:
            notes.append(f"drafted by the fallback {used}, not {payload.model_ref}")
        evidence = list(payload.evidence)
        imaging = payload.imaging
        if imaging is not None:
            if imaging.abstained:
                notes.append(f"imaging: abstained — {imaging.reason or 'no reason given'}; no image findings are used")
            else:
                for f in imaging.findings:
                    evidence.append(EvidenceItem(id=f.evidence_id, kind="image_finding", text=f.sentence()))
                    notes.append(f"imaging ({imaging.model_ref}): {f.sentence()}")
            for q in imaging.images:
                if q.problems:
                    notes.append(f"image {q.image_id}: " + "; ".join(q.problems))
        similar = [e.id for e in payload.exemplars]
        if similar:
            notes.append(f"drafted with {len(similar)} similar prior report(s) as examples: {', '.join(similar)}")
        else:
            notes.append("no similar prior reports were available: the draft has no report evidence to cite")
        threshold = ctx.settings.support_threshold
        findings, impression = result
        sentences = [cite(s, "findings", evidence, threshold) for s in clean_sentences(findings, "findings")]
        sentences += [cite(s, "impression", evidence, threshold) for s in clean_sentences(impression, "impression")]
        return Draft(sentences=tuple(sentences), notes=tuple(notes), model_ref=used)
