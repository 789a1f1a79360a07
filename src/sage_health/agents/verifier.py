"""The verifier agent: checks a draft report sentence by sentence against the evidence it cites.

Contract (:func:`verify`, wrapped by :class:`Verifier`):

* **unsupported** — a draft sentence is *supported* when

  1. it cites at least one id that exists (an ``EvidenceItem.id`` of the input evidence, or the ``evidence_id`` of
     an image finding of the input ``ImagingResult``), and
  2. every observation the CheXpert labeler finds in the sentence (non-blank label; "No Finding" excluded, it is a
     report-level summary, not a statement of one sentence) has the same *polarity* in at least one cited evidence
     sentence or cited image finding (positive and uncertain are "present", negative is "absent"), and
  3. either the best lexical :func:`~sage_health.agents.support.support` of the sentence against the cited items'
     sentences reaches ``threshold`` (``Settings.support_threshold``), or the sentence cites an image finding that
     matches one of its labelled observations (an image finding has no wording to copy: what it supports is an
     observation and its presence).

  An unsupported sentence is **removed** from the returned draft with a flag (``action="removed"``) whose detail
  says why (``no citation``, ``cited id unknown: …``, ``support 0.31 < 0.50``, ``'Pleural Effusion' positive in
  sentence but negative in cited evidence``). A supported sentence keeps its citations; its ``support`` is set to
  the computed best lexical support. A supported sentence that *also* cites unknown ids keeps its text, loses the
  unknown ids (a citation must be traceable) and gets an ``unsupported`` flag with ``action="flagged"``.
* **empty_section** — findings or impression has no sentence left after removal.
* **label_conflict** — an observation present (positive/uncertain) in the findings section and negative in the
  impression section, or the reverse (the sections of the kept sentences are labelled as whole texts).
* **negation** — within one section, one sentence says an observation is present and another says it is absent.
* **laterality** — an observation present in both sections whose sides are disjoint (findings only left,
  impression only right, or the reverse). The side of a mention is read from its clause (the part of the sentence
  between commas, semicolons and ``and``/``with``/``but``): ``left``, ``right``, or both for ``bilateral``,
  ``bibasilar``, ``biapical``, ``both``. Within one section, a left and a right mention in different sentences are
  two findings (a left and a right effusion), not a conflict, so laterality compares sections only.

``Verification.labels`` holds the non-blank labels of the kept findings and impression texts (both keys always
present). Flag details quote only the draft's own sentences, never evidence text. The result is deterministic:
flags come in the order unsupported (draft order), empty_section, label_conflict, negation, laterality, and
observations in the labeler's column order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

from pydantic import BaseModel, ConfigDict

from sage_health.agents.base import AgentContext
from sage_health.agents.support import best_support, split_sentences
from sage_health.agents.types import (
    Draft,
    DraftSentence,
    EvidenceItem,
    ImageFinding,
    ImagingResult,
    ReportSection,
    Verification,
    VerifierFlag,
)
from sage_health.models.evaluation.labeler import NO_FINDING, OBSERVATIONS, CheXpertLabeler, Label, ReportLabels

__all__ = ["SIDE_WORDS", "Verifier", "VerifierInput", "verify"]

SECTIONS: Final[tuple[ReportSection, ReportSection]] = ("findings", "impression")

#: Laterality words and the sides they name (matched as whole words in the lower-cased clause of a mention).
SIDE_WORDS: Final[Mapping[str, frozenset[str]]] = {
    "left": frozenset({"left"}),
    "right": frozenset({"right"}),
    "bilateral": frozenset({"left", "right"}),
    "bilaterally": frozenset({"left", "right"}),
    "bibasilar": frozenset({"left", "right"}),
    "bibasal": frozenset({"left", "right"}),
    "biapical": frozenset({"left", "right"}),
    "both": frozenset({"left", "right"}),
}
_SIDE_WORD = re.compile(r"\b(" + "|".join(SIDE_WORDS) + r")\b")
# Clause boundaries inside a (normalised, lower-case) sentence.
_CLAUSE_BREAK = re.compile(r"[,;:]|\b(?:and|with|but|while|whereas)\b")
_PRESENT: Final = frozenset({Label.POSITIVE, Label.UNCERTAIN})


class VerifierInput(BaseModel):
    """What the verifier checks: the writer's draft, the evidence it could cite, and the imaging result."""

    model_config = ConfigDict(frozen=True)

    draft: Draft
    evidence: tuple[EvidenceItem, ...]
    imaging: ImagingResult | None = None


def _polarity(label: Label) -> str:
    return "present" if label in _PRESENT else "absent"


def _observations(labels: ReportLabels) -> dict[str, Label]:
    """Non-blank labels of one sentence, No Finding excluded, in the labeler's column order."""
    return {
        name: labels.labels[name]
        for name in OBSERVATIONS
        if name != NO_FINDING and labels.labels[name] is not Label.BLANK
    }


def _sides(labels: ReportLabels, observation: str) -> frozenset[str]:
    """The sides (``left``/``right``) named in the clause of the observation's deciding mention."""
    evidence = labels.evidence.get(observation)
    if evidence is None:
        return frozenset()
    text = labels.text
    start = 0
    end = len(text)
    for match in _CLAUSE_BREAK.finditer(text):
        if match.end() <= evidence.start:
            start = match.end()
        elif match.start() >= evidence.end:
            end = match.start()
            break
    clause = text[start:end]
    sides: set[str] = set()
    for word in _SIDE_WORD.findall(clause):
        sides |= SIDE_WORDS[word]
    return frozenset(sides)


@dataclass(frozen=True)
class _Judgement:
    supported: bool
    reasons: tuple[str, ...]
    support: float
    known: tuple[str, ...]
    unknown: tuple[str, ...]


class _Labels:
    """Labels of every text the verifier needs, computed in one batch (each distinct text once)."""

    def __init__(self, labeler: CheXpertLabeler, texts: Iterable[str]) -> None:
        unique = list(dict.fromkeys(texts))
        self._by_text = dict(zip(unique, labeler.label_many(unique), strict=True))

    def __getitem__(self, text: str) -> ReportLabels:
        return self._by_text[text]


def _judge(
    sentence: DraftSentence,
    evidence: Mapping[str, EvidenceItem],
    findings: Mapping[str, ImageFinding],
    labels: _Labels,
    threshold: float,
) -> _Judgement:
    if not sentence.citations:
        return _Judgement(False, ("no citation",), 0.0, (), ())
    known = tuple(c for c in dict.fromkeys(sentence.citations) if c in evidence or c in findings)
    unknown = tuple(c for c in dict.fromkeys(sentence.citations) if c not in evidence and c not in findings)
    if not known:
        return _Judgement(False, (f"cited id unknown: {', '.join(unknown)}",), 0.0, known, unknown)

    cited_items = [
        evidence[c] if c in evidence else EvidenceItem(id=c, kind="image_finding", text=findings[c].sentence())
        for c in known
    ]
    matches = best_support(sentence.text, cited_items)
    score = matches[0].score if matches else 0.0

    # What the cited sources say about each observation: the polarities found in any cited sentence / finding.
    said: dict[str, set[str]] = {}
    image_said: dict[str, set[str]] = {}
    for cid in known:
        finding = findings.get(cid)
        if finding is not None and cid not in evidence:
            pol = "present" if finding.present else "absent"
            said.setdefault(finding.observation, set()).add(pol)
            image_said.setdefault(finding.observation, set()).add(pol)
            continue
        item = evidence[cid]
        for ev_sentence in split_sentences(item.text) or [item.text]:
            for name, label in _observations(labels[ev_sentence]).items():
                said.setdefault(name, set()).add(_polarity(label))
        if finding is not None:  # an image finding also passed as an evidence item: trust its flag too
            pol = "present" if finding.present else "absent"
            said.setdefault(finding.observation, set()).add(pol)
            image_said.setdefault(finding.observation, set()).add(pol)

    reasons: list[str] = []
    own = _observations(labels[sentence.text])
    for name, label in own.items():
        found = said.get(name)
        if not found:
            reasons.append(f"{name!r} {label.value} in sentence but not mentioned in cited evidence")
        elif _polarity(label) not in found:
            other = "negative" if _polarity(label) == "present" else "positive"
            reasons.append(f"{name!r} {label.value} in sentence but {other} in cited evidence")
    image_match = any(_polarity(label) in image_said.get(name, ()) for name, label in own.items())
    if score < threshold and not image_match:
        reasons.insert(0, f"support {score:.2f} < {threshold:.2f}")
    return _Judgement(not reasons, tuple(reasons), score, known, unknown)


def _first(
    sentences: Sequence[DraftSentence], per: Mapping[str, ReportLabels], name: str, polarity: str
) -> DraftSentence | None:
    for s in sentences:
        label = per[s.text].labels.get(name, Label.BLANK)
        if label is not Label.BLANK and _polarity(label) == polarity:
            return s
    return None


def verify(
    draft: Draft,
    evidence: Sequence[EvidenceItem],
    imaging: ImagingResult | None,
    *,
    labeler: CheXpertLabeler,
    threshold: float,
) -> Verification:
    """Check ``draft`` against ``evidence`` and ``imaging`` (module docstring: the rules, flags and order)."""
    by_id = {item.id: item for item in evidence}
    findings = {f.evidence_id: f for f in (imaging.findings if imaging is not None else ())}

    texts: list[str] = [s.text for s in draft.sentences]
    for cid in draft.citations():
        item = by_id.get(cid)
        if item is not None:
            texts.extend(split_sentences(item.text) or [item.text])
    labels = _Labels(labeler, texts)

    flags: list[VerifierFlag] = []
    kept: list[DraftSentence] = []
    for sentence in draft.sentences:
        judgement = _judge(sentence, by_id, findings, labels, threshold)
        if not judgement.supported:
            flags.append(
                VerifierFlag(
                    kind="unsupported",
                    section=sentence.section,
                    sentence=sentence.text,
                    detail="; ".join(judgement.reasons),
                    action="removed",
                )
            )
            continue
        update: dict[str, object] = {"support": judgement.support}
        if judgement.unknown:
            update["citations"] = judgement.known
            flags.append(
                VerifierFlag(
                    kind="unsupported",
                    section=sentence.section,
                    sentence=sentence.text,
                    detail=f"cited id unknown: {', '.join(judgement.unknown)} (citation dropped, sentence kept)",
                    action="flagged",
                )
            )
        kept.append(sentence.model_copy(update=update))

    checked = draft.model_copy(update={"sentences": tuple(kept)})
    by_section = {sec: [s for s in kept if s.section == sec] for sec in SECTIONS}
    section_text = {sec: checked.section_text(sec) for sec in SECTIONS}
    section_labels = dict(zip(SECTIONS, labeler.label_many(section_text[sec] for sec in SECTIONS), strict=True))
    per = {s.text: labels[s.text] for s in kept}

    for sec in SECTIONS:
        if not by_section[sec]:
            flags.append(
                VerifierFlag(
                    kind="empty_section",
                    section=sec,
                    sentence=None,
                    detail=f"{sec} has no supported sentence",
                    action="flagged",
                )
            )

    # label_conflict: the two sections disagree on presence.
    find_obs = _observations(section_labels["findings"])
    imp_obs = _observations(section_labels["impression"])
    for name in OBSERVATIONS:
        if name not in find_obs or name not in imp_obs:
            continue
        f_pol, i_pol = _polarity(find_obs[name]), _polarity(imp_obs[name])
        if f_pol == i_pol:
            continue
        f_sentence = _first(by_section["findings"], per, name, f_pol)
        i_sentence = _first(by_section["impression"], per, name, i_pol)
        f_quote = f" ({f_sentence.text!r})" if f_sentence else ""
        flags.append(
            VerifierFlag(
                kind="label_conflict",
                section="impression",
                sentence=i_sentence.text if i_sentence else section_text["impression"],
                detail=f"{name!r} {find_obs[name].value} in findings{f_quote} but {imp_obs[name].value} in impression",
                action="flagged",
            )
        )

    # negation: one section says both.
    for sec in SECTIONS:
        for name in OBSERVATIONS:
            if name == NO_FINDING:
                continue
            present = _first(by_section[sec], per, name, "present")
            absent = _first(by_section[sec], per, name, "absent")
            if present is None or absent is None:
                continue
            first, second = (present, absent) if kept.index(present) < kept.index(absent) else (absent, present)
            flags.append(
                VerifierFlag(
                    kind="negation",
                    section=sec,
                    sentence=second.text,
                    detail=(
                        f"{name!r} {per[first.text].labels[name].value} in {first.text!r} but "
                        f"{per[second.text].labels[name].value} in {second.text!r} (same section)"
                    ),
                    action="flagged",
                )
            )

    # laterality: present in both sections, on disjoint sides.
    for name in OBSERVATIONS:
        if name == NO_FINDING:
            continue
        sides: dict[ReportSection, tuple[frozenset[str], DraftSentence | None]] = {}
        for sec in SECTIONS:
            union: set[str] = set()
            witness: DraftSentence | None = None
            for s in by_section[sec]:
                label = per[s.text].labels.get(name, Label.BLANK)
                if label in _PRESENT:
                    found = _sides(per[s.text], name)
                    if found and witness is None:
                        witness = s
                    union |= found
            sides[sec] = (frozenset(union), witness)
        (f_sides, f_witness), (i_sides, i_witness) = sides["findings"], sides["impression"]
        if f_sides and i_sides and not (f_sides & i_sides) and f_witness is not None and i_witness is not None:
            flags.append(
                VerifierFlag(
                    kind="laterality",
                    section="impression",
                    sentence=i_witness.text,
                    detail=(
                        f"{name!r} {'/'.join(sorted(f_sides))} in findings ({f_witness.text!r}) but "
                        f"{'/'.join(sorted(i_sides))} in impression"
                    ),
                    action="flagged",
                )
            )

    out_labels = {
        sec: {
            name: section_labels[sec].labels[name].value
            for name in OBSERVATIONS
            if section_labels[sec].labels[name] is not Label.BLANK
        }
        for sec in SECTIONS
    }
    return Verification(draft=checked, flags=tuple(flags), labels=out_labels)


class Verifier:
    """Agent ``verifier``: :class:`VerifierInput` -> :class:`~sage_health.agents.types.Verification`.

    Uses ``ctx.labeler`` (loaded lazily on first use) and ``ctx.settings.support_threshold``; reads nothing else.
    """

    name: ClassVar[str] = "verifier"
    input_model: ClassVar[type[VerifierInput]] = VerifierInput
    output_model: ClassVar[type[Verification]] = Verification

    def run(self, payload: VerifierInput, ctx: AgentContext) -> Verification:
        return verify(
            payload.draft,
            payload.evidence,
            payload.imaging,
            labeler=ctx.labeler,
            threshold=ctx.settings.support_threshold,
        )
