"""The safety agent: screens retrieved evidence before it reaches a prompt, and checks a draft before sign-off.

Two steps, one agent (``Safety.run`` dispatches on the input type):

**Evidence screen** (:class:`SafetyScreenInput` -> :class:`~sage_health.agents.types.EvidenceScreen`,
:func:`screen_evidence`). An evidence item whose text matches any of :data:`INJECTION_PATTERNS` (text aimed at the
model, not at a clinician) is quarantined: withheld from the writer, with a non-blocking ``prompt_injection``
violation naming the evidence id and the pattern name (never the text). The patterns are checked for false
positives on 3,000 real IU X-ray reports by the unit tests (none may match).

**Draft check** (:class:`SafetyCheckInput` -> :class:`~sage_health.agents.types.SafetyReport`, :func:`check_draft`).
``evidence`` should be everything that was retrieved (the screen's input, quarantined items included): the check
re-screens it to know which items were quarantined. Violations (``blocked`` is True when any is blocking):

* ``phi_leak`` (blocking) — an identifier of *another* patient's evidence (``patient_id`` set and different from
  the target's) appears in the draft (sentences and notes). The identifiers are what the platform's PHI detector
  (:func:`sage_health.data.governance.deid.identifiers.detect_phi`, the de-identifier's recognizers) finds in the
  evidence text, plus the other patient's ``Patient`` record when the store has it (names, birth date,
  identifiers, telecom): person names (names the detector scores at least :data:`NAME_MIN_SCORE`: titled, cued
  and known names, ``Dr. Smith``, ``Patient John Doe``, ``Name: John Doe``), dates with a year, a month and a day
  (compared as calendar dates, so a reformatted date still matches), record and other identifiers (``MRN: …``,
  long digit runs, codes, SSNs), phone numbers (compared by digits) and e-mail addresses. Names, identifiers and
  e-mails match case-insensitively as whole words; name words that are common English words or titles never
  count, and a name where the draft uses it as a clinical eponym (:data:`NAME_ALLOWLIST`: "Graves disease") does
  not match. A value is *not* a leak when it also occurs in the target patient's own evidence or record, or in
  evidence of no patient (knowledge, de-identified corpora): the draft can have it from there. The detail names
  the evidence id and the kind, never the value.
* ``prompt_injection`` (blocking) — the draft contains an injection pattern, cites a quarantined item, or a draft
  sentence copies the injected text of a quarantined item (lexical support >= :data:`QUARANTINE_OVERLAP` against a
  sentence of the item that matches an injection pattern; the item's ordinary sentences do not count).
* ``policy`` — **non-blocking** when the draft has no findings or no impression sentence (the verifier flagged it;
  sign-off then requires the radiologist's edited report); **blocking** for a sentence over :data:`MAX_SENTENCE_CHARS`
  characters; a draft over :data:`MAX_DRAFT_CHARS`; a URL or e-mail address (as the PHI detector finds them), a code
  fence; chatbot boilerplate
  (:data:`BOILERPLATE_PATTERNS`). **Non-blocking** policy note: a specific drug dose (``40 mg``, ``2.5 mcg``,
  ``1 mg/kg``) — dosing is outside a radiology report's scope, so the radiologist is told to confirm or remove it,
  but a dose copied from the history ("on warfarin 5 mg") is not by itself unsafe to sign.

Details name sentence positions (``impression sentence 2``) and evidence ids, never patient values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import ClassVar, Final, Literal, overload

from pydantic import BaseModel, ConfigDict

from sage_health.agents.base import AgentContext
from sage_health.agents.support import split_sentences, support
from sage_health.agents.types import Draft, EvidenceItem, EvidenceScreen, SafetyReport, SafetyViolation
from sage_health.data.governance.deid.identifiers import (
    calendar_date,
    contains_value,
    detect_phi,
    name_tokens,
    phone_digits,
)
from sage_health.data.governance.deid.lexicon import MEDICAL_EPONYMS
from sage_health.data.governance.deid.types import EntityLabel, PhiSpan
from sage_health.data.schema import Patient

__all__ = [
    "BOILERPLATE_PATTERNS",
    "INJECTION_PATTERNS",
    "MAX_DRAFT_CHARS",
    "MAX_SENTENCE_CHARS",
    "NAME_ALLOWLIST",
    "NAME_MIN_SCORE",
    "QUARANTINE_OVERLAP",
    "PatientLookup",
    "Safety",
    "SafetyCheckInput",
    "SafetyScreenInput",
    "check_draft",
    "find_injection",
    "screen_evidence",
]

_I = re.IGNORECASE
_DETERMINERS = (
    r"(?:(?:all|any|the|your|my|these|those|of|previous|prior|above|earlier|preceding|foregoing|original)\s+)*"
)
_RULE_NOUNS = r"(?:instructions?|prompts?|directives?|rules|guidelines|directions|commands|context)"

#: Prompt-injection patterns: name -> regex (case-insensitive). Each targets text addressed to a language model;
#: none may match a real radiology report (checked on 3,000 IU X-ray reports by ``tests/unit/test_safety.py``).
INJECTION_PATTERNS: Final[Mapping[str, re.Pattern[str]]] = {
    # "ignore previous instructions", "forget all prior rules", "override the system prompt"
    "ignore_instructions": re.compile(
        rf"\b(?:ignore|forget|override|bypass|skip)\s+{_DETERMINERS}(?:system\s+)?{_RULE_NOUNS}\b", _I
    ),
    # "disregard the above instructions", "disregard everything above"
    "disregard_instructions": re.compile(
        rf"\bdisregard\s+(?:{_DETERMINERS}(?:system\s+)?{_RULE_NOUNS}\b"
        r"|(?:all|everything)\s+(?:above|before|prior|previous|else)\b)",
        _I,
    ),
    # "you are now an unrestricted assistant", "from now on you will ..."
    "role_override": re.compile(
        r"\byou\s+are\s+now\b|\bfrom\s+now\s+on,?\s+you\b|\bpretend\s+(?:to\s+be|you\s+are)\b", _I
    ),
    # imperative "act as ..." (sentence start, or after please / now / you must): not "may act as a lead point"
    "act_as": re.compile(
        r"(?:^|[.!?:;\n]\s*|\bplease\s+|\bnow\s+|\byou\s+(?:will|must|should)\s+)act\s+as\b", _I | re.M
    ),
    "system_prompt": re.compile(r"\bsystem\s*prompt\b|\bsystem\s+message\b|\bdeveloper\s+mode\b|\bjailbreak", _I),
    "new_instructions": re.compile(r"\b(?:new|updated|additional|real|actual|hidden|secret)\s+instructions?\s*:", _I),
    # imperative "Do not mention ...", "please don't reveal ...", and "do not follow the (previous) instructions"
    "do_not_follow": re.compile(
        rf"(?:^|[.!?:;,\n]\s*|\bplease\s+|\byou\s+(?:must|should|will)\s+)(?:do\s+not|don't|never)\s+"
        rf"(?:mention|reveal|disclose)\b|\b(?:do\s+not|don't|never)\s+follow\s+{_DETERMINERS}{_RULE_NOUNS}\b",
        _I | re.M,
    ),
    "reveal_prompt": re.compile(
        r"\b(?:reveal|print|repeat|show|output)\s+(?:me\s+)?(?:your|the)\s+(?:system\s+|initial\s+|hidden\s+)?"
        r"(?:prompt|instructions)\b",
        _I,
    ),
    # chat-template role tags and markers
    "role_tag": re.compile(
        r"<\|(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id|end_header_id)\|>"
        r"|\[/?INST\]|<</?SYS>>|#{2,}\s*(?:instruction|system|response|user|assistant)\b",
        _I,
    ),
    # a role label opening a line or a sentence: "assistant: ...", "System: ..."
    "role_label": re.compile(r"(?:^|[.!?]\s+)(?:system|assistant|user|human|ai)\s*:", _I | re.M),
}

#: Chatbot boilerplate that must not appear in a report (policy, blocking).
BOILERPLATE_PATTERNS: Final[Mapping[str, re.Pattern[str]]] = {
    "as_an_ai": re.compile(r"\bas\s+an?\s+(?:ai|artificial intelligence|assistant|chatbot)\b", _I),
    "language_model": re.compile(r"\blanguage\s+model\b", _I),
    # "I cannot ..." / "I am unable to ...", but not a radiologist's "I cannot exclude / rule out ..."
    "refusal": re.compile(
        r"\bi\s+(?:cannot|can't|can\s+not|am\s+unable\s+to|am\s+not\s+able\s+to)\b"
        r"(?!\s+(?:entirely\s+|completely\s+|definitely\s+)?(?:exclude|rule\s+out|be\s+excluded))",
        _I,
    ),
    "apology": re.compile(r"\bi(?:'m|\s+am)\s+sorry\b|\bi\s+apologi[sz]e\b", _I),
}

_FENCE = re.compile(r"```|~~~")
_DOSE = re.compile(r"\b\d+(?:\.\d+)?\s?(?:mg|mcg|µg|ug|micrograms?|milligrams?)(?:/kg)?\b", _I)

MAX_SENTENCE_CHARS: Final = 400
MAX_DRAFT_CHARS: Final = 4000
#: Lexical support of a draft sentence against a quarantined evidence sentence at which it counts as copied.
QUARANTINE_OVERLAP: Final = 0.6

#: The de-identifier's medical allow-list (:data:`~sage_health.data.governance.deid.MEDICAL_EPONYMS`): where the
#: draft uses one of these as a clinical eponym ("Graves disease", "Parkinson's"), it is not a name.
NAME_ALLOWLIST: Final[frozenset[str]] = MEDICAL_EPONYMS
#: A name the PHI detector finds in evidence text counts from this score: titled, cued and known names and
#: Synthea-style names, not a capitalised word that merely resembles a name (scores 0.35-0.4).
NAME_MIN_SCORE: Final = 0.5

# ---------------------------------------------------------------------- identifier extraction

IdentifierKind = Literal["name", "date", "identifier", "phone", "email"]
_KINDS: Final[tuple[IdentifierKind, ...]] = ("name", "date", "identifier", "phone", "email")
#: The PHI detector's labels that are compared, and the kind each is reported as.
_KIND_OF: Final[Mapping[EntityLabel, IdentifierKind]] = {
    "NAME": "name",
    "DATE": "date",
    "ID": "identifier",
    "SSN": "identifier",
    "PHONE": "phone",
    "EMAIL": "email",
}

#: Looks up a patient's record by id (``None`` when the store does not have it).
PatientLookup = Callable[[str], Patient | None]


def find_injection(text: str) -> str | None:
    """The name of the first :data:`INJECTION_PATTERNS` entry that matches ``text``, or None."""
    for name, pattern in INJECTION_PATTERNS.items():
        if pattern.search(text):
            return name
    return None


def _empty_values() -> dict[IdentifierKind, set[str]]:
    return {kind: set() for kind in _KINDS}


def _span_values(spans: Iterable[PhiSpan]) -> dict[IdentifierKind, set[str]]:
    """The comparable values of detected spans: name words, ISO dates, lower-cased ids and e-mails, phone digits."""
    values = _empty_values()
    for span in spans:
        kind = _KIND_OF.get(span.label)
        if kind == "name" and span.score >= NAME_MIN_SCORE:
            values["name"] |= name_tokens([span.text])
        elif kind == "date":
            day = calendar_date(span.text)
            if day is not None:
                values["date"].add(day)
        elif kind == "phone":
            values["phone"].add(phone_digits(span.text))
        elif kind in ("identifier", "email"):
            values[kind].add(span.text.lower())
    return values


def _record_values(patient: Patient) -> dict[IdentifierKind, set[str]]:
    values = _empty_values()
    values["name"] |= name_tokens([*patient.given_names, patient.family_name or ""])
    if patient.birth_date is not None:
        values["date"].add(patient.birth_date.isoformat())
    for coding in patient.identifiers:
        if coding.code and len(coding.code) >= 4:
            values["identifier"].add(coding.code.lower())
    for contact in patient.telecom:
        found = _span_values(detect_phi(contact, labels=("PHONE", "EMAIL")))
        values["phone"] |= found["phone"]
        values["email"] |= found["email"]
    return values


class _Text:
    """A text, its PHI spans and their normalised values: what the leak check compares against."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.values = _span_values(detect_phi(text, labels=_KIND_OF))

    def has(self, value: str, kind: IdentifierKind) -> bool:
        """Whether the text contains ``value`` of ``kind``: the same calendar date or phone digits; names, ids and
        e-mails as whole words, case-insensitive (a name not where it is a clinical eponym)."""
        if kind in ("date", "phone"):
            return value in self.values[kind]
        return contains_value(self.text, value, as_name=kind == "name")


# ---------------------------------------------------------------------- inputs


class SafetyScreenInput(BaseModel):
    """Evidence to screen before any of it reaches a prompt. ``patient_id`` is the study's patient (recorded)."""

    model_config = ConfigDict(frozen=True)

    step: Literal["screen"] = "screen"
    """Discriminator between the two safety inputs (so a persisted input parses back to the right model)."""
    patient_id: str | None
    evidence: tuple[EvidenceItem, ...]


class SafetyCheckInput(BaseModel):
    """A draft to check for the study's patient, with all the evidence retrieved for it (quarantined included)."""

    model_config = ConfigDict(frozen=True)

    step: Literal["check"] = "check"
    """Discriminator between the two safety inputs."""
    patient_id: str | None
    draft: Draft
    evidence: tuple[EvidenceItem, ...]


# ---------------------------------------------------------------------- the two steps


def screen_evidence(evidence: Sequence[EvidenceItem]) -> EvidenceScreen:
    """Quarantine the items whose text matches an injection pattern; keep the rest in order."""
    kept: list[EvidenceItem] = []
    quarantined: list[str] = []
    violations: list[SafetyViolation] = []
    for item in evidence:
        pattern = find_injection(item.text)
        if pattern is None:
            kept.append(item)
            continue
        quarantined.append(item.id)
        violations.append(
            SafetyViolation(
                kind="prompt_injection",
                detail=f"evidence {item.id} quarantined: prompt-injection pattern {pattern!r}",
                evidence_id=item.id,
                blocking=False,
            )
        )
    return EvidenceScreen(kept=tuple(kept), quarantined=tuple(quarantined), violations=tuple(violations))


def _where(draft: Draft, index: int) -> str:
    sentence = draft.sentences[index]
    position = sum(1 for s in draft.sentences[: index + 1] if s.section == sentence.section)
    return f"{sentence.section} sentence {position}"


def _phi_violations(
    patient_id: str | None, draft: Draft, evidence: Sequence[EvidenceItem], lookup: PatientLookup | None
) -> list[SafetyViolation]:
    others = [item for item in evidence if item.patient_id is not None and item.patient_id != patient_id]
    if not others:
        return []
    target = _Text("\n".join([*(s.text for s in draft.sentences), *draft.notes]))
    # Where the draft may legitimately have a value from: the target's own evidence and record, and evidence of no
    # patient.
    allowed_texts = [item.text for item in evidence if item.patient_id is None or item.patient_id == patient_id]
    allowed = _Text("\n".join(allowed_texts))
    own_record = lookup(patient_id) if lookup is not None and patient_id is not None else None
    own_values = _record_values(own_record) if own_record is not None else None

    records: dict[str, Patient | None] = {}
    violations: list[SafetyViolation] = []
    for item in others:
        values = _span_values(detect_phi(item.text, labels=_KIND_OF))
        if lookup is not None and item.patient_id is not None:
            if item.patient_id not in records:
                records[item.patient_id] = lookup(item.patient_id)
            record = records[item.patient_id]
            if record is not None:
                for kind, found in _record_values(record).items():
                    values[kind] |= found
        for kind in _KINDS:
            leaked = [
                value
                for value in sorted(values[kind])
                if target.has(value, kind)
                and not allowed.has(value, kind)
                and not (own_values is not None and value in own_values[kind])
            ]
            if leaked:
                violations.append(
                    SafetyViolation(
                        kind="phi_leak",
                        detail=f"{kind} from evidence {item.id} (another patient) appears in the draft",
                        evidence_id=item.id,
                    )
                )
    return violations


def _injection_violations(draft: Draft, evidence: Sequence[EvidenceItem]) -> list[SafetyViolation]:
    violations: list[SafetyViolation] = []
    quarantined = [item for item in evidence if find_injection(item.text) is not None]
    quarantined_ids = {item.id for item in quarantined}
    # The injected sentences of each quarantined item (all its sentences when the match spans sentences): a draft
    # may well repeat the item's ordinary sentences ("Heart size is normal.") without having obeyed the injection.
    injected: dict[str, list[str]] = {}
    for item in quarantined:
        parts = split_sentences(item.text) or [item.text]
        injected[item.id] = [part for part in parts if find_injection(part) is not None] or parts
    for index, sentence in enumerate(draft.sentences):
        where = _where(draft, index)
        pattern = find_injection(sentence.text)
        if pattern is not None:
            violations.append(
                SafetyViolation(kind="prompt_injection", detail=f"{where} matches prompt-injection pattern {pattern!r}")
            )
        for cid in sentence.citations:
            if cid in quarantined_ids:
                violations.append(
                    SafetyViolation(
                        kind="prompt_injection",
                        detail=f"{where} cites quarantined evidence {cid}",
                        evidence_id=cid,
                    )
                )
        for item in quarantined:
            overlap = max((support(sentence.text, part) for part in injected[item.id]), default=0.0)
            if overlap >= QUARANTINE_OVERLAP:
                violations.append(
                    SafetyViolation(
                        kind="prompt_injection",
                        detail=(
                            f"{where} copies quarantined evidence {item.id} "
                            f"(overlap {overlap:.2f} >= {QUARANTINE_OVERLAP:.2f})"
                        ),
                        evidence_id=item.id,
                    )
                )
    for number, note in enumerate(draft.notes, start=1):
        pattern = find_injection(note)
        if pattern is not None:
            violations.append(
                SafetyViolation(
                    kind="prompt_injection", detail=f"note {number} matches prompt-injection pattern {pattern!r}"
                )
            )
    return violations


def _policy_violations(draft: Draft) -> list[SafetyViolation]:
    violations: list[SafetyViolation] = []
    for section in ("findings", "impression"):
        if not any(s.section == section for s in draft.sentences):
            # Not blocking: the verifier already flagged the empty section, and the radiologist can complete it (a
            # review of such a draft requires the edited report). Blocking would throw the rest of the draft away.
            violations.append(
                SafetyViolation(
                    kind="policy",
                    detail=f"draft has no {section} sentence; the radiologist must write it before signing",
                    blocking=False,
                )
            )
    for index, sentence in enumerate(draft.sentences):
        if len(sentence.text) > MAX_SENTENCE_CHARS:
            violations.append(
                SafetyViolation(
                    kind="policy",
                    detail=f"{_where(draft, index)} is {len(sentence.text)} characters (limit {MAX_SENTENCE_CHARS})",
                )
            )
    texts = [*(s.text for s in draft.sentences), *draft.notes]
    total = sum(len(s.text) for s in draft.sentences)
    if total > MAX_DRAFT_CHARS:
        violations.append(
            SafetyViolation(kind="policy", detail=f"draft is {total} characters (limit {MAX_DRAFT_CHARS})")
        )
    contacts = {span.label for text in texts for span in detect_phi(text, labels=("URL", "EMAIL"))}
    checks: list[tuple[str, bool]] = [
        ("a URL", "URL" in contacts),
        ("an e-mail address", "EMAIL" in contacts),
        ("a code fence", any(_FENCE.search(text) for text in texts)),
        *(
            (f"chatbot boilerplate ({name})", any(pattern.search(text) for text in texts))
            for name, pattern in BOILERPLATE_PATTERNS.items()
        ),
    ]
    for what, found in checks:
        if found:
            violations.append(SafetyViolation(kind="policy", detail=f"draft contains {what}"))
    if any(_DOSE.search(s.text) for s in draft.sentences):
        violations.append(
            SafetyViolation(
                kind="policy",
                detail="draft states a specific drug dose; dosing is outside a radiology report: confirm or remove it",
                blocking=False,
            )
        )
    return violations


def check_draft(
    patient_id: str | None,
    draft: Draft,
    evidence: Sequence[EvidenceItem],
    *,
    lookup: PatientLookup | None = None,
) -> SafetyReport:
    """Check ``draft`` for ``patient_id`` (module docstring: the rules). ``lookup`` finds Patient records by id."""
    violations = [
        *_phi_violations(patient_id, draft, evidence, lookup),
        *_injection_violations(draft, evidence),
        *_policy_violations(draft),
    ]
    return SafetyReport(blocked=any(v.blocking for v in violations), violations=tuple(violations))


class Safety:
    """Agent ``safety``: ``SafetyScreenInput`` -> ``EvidenceScreen``; ``SafetyCheckInput`` -> ``SafetyReport``.

    The draft check looks up Patient records in ``ctx.store`` (names, birth date, identifiers, contacts of the
    patients whose evidence was retrieved).
    """

    name: ClassVar[str] = "safety"
    input_models: ClassVar[tuple[type[BaseModel], ...]] = (SafetyScreenInput, SafetyCheckInput)

    @overload
    def run(self, payload: SafetyScreenInput, ctx: AgentContext) -> EvidenceScreen: ...
    @overload
    def run(self, payload: SafetyCheckInput, ctx: AgentContext) -> SafetyReport: ...
    def run(self, payload: SafetyScreenInput | SafetyCheckInput, ctx: AgentContext) -> EvidenceScreen | SafetyReport:
        if isinstance(payload, SafetyScreenInput):
            return self.screen(payload, ctx)
        return self.check(payload, ctx)

    def screen(self, payload: SafetyScreenInput, ctx: AgentContext) -> EvidenceScreen:
        """Quarantine prompt-injection evidence (:func:`screen_evidence`)."""
        return screen_evidence(payload.evidence)

    def check(self, payload: SafetyCheckInput, ctx: AgentContext) -> SafetyReport:
        """Check a draft (:func:`check_draft`) with Patient records from ``ctx.store``."""
        return check_draft(payload.patient_id, payload.draft, payload.evidence, lookup=store_lookup(ctx))


def store_lookup(ctx: AgentContext) -> PatientLookup:
    """A :data:`PatientLookup` over ``ctx.store`` (None for unknown ids and for records that are not patients)."""

    def lookup(patient_id: str) -> Patient | None:
        stored = ctx.store.get(patient_id)
        return stored.record if stored is not None and isinstance(stored.record, Patient) else None

    return lookup
