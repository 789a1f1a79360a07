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
  the target's) appears in the draft (sentences and notes): person names (the other patient's ``Patient`` record
  names when the store has it, and titled names in the evidence text: ``Mr./Mrs./Ms./Dr./Prof. Smith``,
  ``Patient John Doe``, ``Name: John Doe``), dates (ISO, US ``m/d/yyyy``, ``March 3, 2015``, ``3 March 2015``;
  compared as calendar dates, so a reformatted date still matches), numbers of 6 or more digits, ``MRN: …``-style
  identifiers and the record's identifiers, phone numbers (compared by digits) and e-mail addresses. Matching is
  case-insensitive on word boundaries. A value is *not* a leak when it also occurs in the target patient's own
  evidence or record, or in evidence of no patient (knowledge, de-identified corpora): the draft can have it from
  there. Name tokens in :data:`NAME_ALLOWLIST` (eponyms and common words that are also surnames) are never
  matched. The detail names the evidence id and the kind, never the value.
* ``prompt_injection`` (blocking) — the draft contains an injection pattern, cites a quarantined item, or a draft
  sentence copies the injected text of a quarantined item (lexical support >= :data:`QUARANTINE_OVERLAP` against a
  sentence of the item that matches an injection pattern; the item's ordinary sentences do not count).
* ``policy`` — **non-blocking** when the draft has no findings or no impression sentence (the verifier flagged it;
  sign-off then requires the radiologist's edited report); **blocking** for a sentence over :data:`MAX_SENTENCE_CHARS`
  characters; a draft over :data:`MAX_DRAFT_CHARS`; a URL, e-mail address or code fence; chatbot boilerplate
  (:data:`BOILERPLATE_PATTERNS`). **Non-blocking** policy note: a specific drug dose (``40 mg``, ``2.5 mcg``,
  ``1 mg/kg``) — dosing is outside a radiology report's scope, so the radiologist is told to confirm or remove it,
  but a dose copied from the history ("on warfarin 5 mg") is not by itself unsafe to sign.

Details name sentence positions (``impression sentence 2``) and evidence ids, never patient values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date
from typing import ClassVar, Final, Literal, overload

from pydantic import BaseModel, ConfigDict

from sage_health.agents.base import AgentContext
from sage_health.agents.support import split_sentences, support
from sage_health.agents.types import (
    Draft,
    EvidenceItem,
    EvidenceScreen,
    SafetyReport,
    SafetyViolation,
)
from sage_health.data.schema import Patient

__all__ = [
    "BOILERPLATE_PATTERNS",
    "INJECTION_PATTERNS",
    "MAX_DRAFT_CHARS",
    "MAX_SENTENCE_CHARS",
    "NAME_ALLOWLIST",
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

MAX_SENTENCE_CHARS: Final = 400
MAX_DRAFT_CHARS: Final = 4000
#: Lexical support of a draft sentence against a quarantined evidence sentence at which it counts as copied.
QUARANTINE_OVERLAP: Final = 0.6

#: Name tokens never matched as names: clinical eponyms and common words that are also surnames or given names.
NAME_ALLOWLIST: Final[frozenset[str]] = frozenset(
    {
        # eponyms of diseases, signs and devices seen in chest imaging and history
        "addison", "alzheimer", "barrett", "bell", "crohn", "cushing", "down", "foley", "ganz", "graves",
        "hickman", "hodgkin", "kerley", "paget", "parkinson", "swan", "wilson", "hampton", "westermark",
        "pancoast", "kaposi", "marfan", "raynaud", "sjogren", "wegener", "whipple", "bochdalek", "morgagni",
        # common words that are also names
        "black", "brown", "green", "gray", "grey", "white", "young", "small", "long", "short", "little", "large",
        "hill", "wells", "may", "june", "august", "will", "mark", "hope", "grace", "rose", "stable", "clear",
        "normal", "chest", "heart", "patient", "doctor", "left", "right", "xxxx",
    }
)  # fmt: skip

# ---------------------------------------------------------------------- identifier extraction

_TITLE_NAME = re.compile(
    r"\b(?:[Mm]r|[Mm]rs|[Mm]s|[Mm]iss|[Mm]x|[Dd]r|[Pp]rof)\.?\s+([A-Z][A-Za-z'\-]*[0-9]*(?:\s+[A-Z][A-Za-z'\-]*[0-9]*)?)"
    r"|\b(?:[Pp]atient|[Pp]t\.?)\s+([A-Z][A-Za-z'\-]*[0-9]*\s+[A-Z][A-Za-z'\-]*[0-9]*)"
    r"|\b[Nn]ame\s*:\s*([A-Z][A-Za-z'\-]*[0-9]*(?:\s+[A-Z][A-Za-z'\-]*[0-9]*)?)"
)
_MONTHS: Final[Mapping[str, int]] = {
    name: number
    for number, names in enumerate(
        (
            ("jan", "january"), ("feb", "february"), ("mar", "march"), ("apr", "april"), ("may",),
            ("jun", "june"), ("jul", "july"), ("aug", "august"), ("sep", "sept", "september"),
            ("oct", "october"), ("nov", "november"), ("dec", "december"),
        ),
        start=1,
    )
    for name in names
}  # fmt: skip
_MONTH = r"(?P<mon>" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DATE_PATTERNS: Final[tuple[re.Pattern[str], ...]] = (
    re.compile(r"(?<!\d)(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})(?!\d)"),  # also the date of 2015-03-04T10:00
    re.compile(r"(?<![\d/])(?P<m>\d{1,2})/(?P<d>\d{1,2})/(?P<y>\d{4}|\d{2})(?![\d/])"),
    re.compile(rf"\b{_MONTH}\s+(?P<d>\d{{1,2}})(?:st|nd|rd|th)?,?\s+(?P<y>\d{{4}})\b", _I),
    re.compile(rf"\b(?P<d>\d{{1,2}})(?:st|nd|rd|th)?\s+{_MONTH},?\s+(?P<y>\d{{4}})\b", _I),
)
_LONG_NUMBER = re.compile(r"(?<![\w.])\d{6,}(?![\w.])")
_MRN = re.compile(
    r"\b(?:mrn|medical\s+record\s+(?:number|no\.?|#)|record\s+(?:number|no\.?)|acct|account\s+(?:number|no\.?)"
    r"|ssn|patient\s+id)\s*[:#]?\s*(?P<value>[A-Za-z0-9][A-Za-z0-9\-]{3,})",
    _I,
)
_PHONE = re.compile(r"(?<!\d)(?:\+?1[\s.\-]?)?\(?\d{3}\)?[\s.\-]\d{3}[\s.\-]\d{4}(?!\d)")
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+\b")
_URL = re.compile(r"\bhttps?://\S+|\bwww\.[a-z0-9\-]+\.[a-z]{2,}\S*", _I)
_FENCE = re.compile(r"```|~~~")
_DOSE = re.compile(r"\b\d+(?:\.\d+)?\s?(?:mg|mcg|µg|ug|micrograms?|milligrams?)(?:/kg)?\b", _I)
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'\-]*")

IdentifierKind = Literal["name", "date", "identifier", "phone", "email"]
_KINDS: Final[tuple[IdentifierKind, ...]] = ("name", "date", "identifier", "phone", "email")

#: Looks up a patient's record by id (``None`` when the store does not have it).
PatientLookup = Callable[[str], Patient | None]


def find_injection(text: str) -> str | None:
    """The name of the first :data:`INJECTION_PATTERNS` entry that matches ``text``, or None."""
    for name, pattern in INJECTION_PATTERNS.items():
        if pattern.search(text):
            return name
    return None


def _dates(text: str) -> set[str]:
    found: set[str] = set()
    for pattern in _DATE_PATTERNS:
        for m in pattern.finditer(text):
            groups = m.groupdict()
            year = int(groups["y"])
            if year < 100:
                year += 2000 if year < 50 else 1900
            month = _MONTHS[groups["mon"].lower()] if groups.get("mon") else int(groups["m"])
            try:
                found.add(date(year, month, int(groups["d"])).isoformat())
            except ValueError:
                found.add(m.group(0).lower())  # not a calendar date: compare the literal text
    return found


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)[-10:]


def _name_tokens(names: Iterable[str]) -> set[str]:
    tokens: set[str] = set()
    for name in names:
        for word in _WORD.findall(name):
            word = word.strip("'-").lower()
            if len(word) >= 2 and word not in NAME_ALLOWLIST and not set(word) <= {"x"}:
                tokens.add(word)
    return tokens


def _record_values(patient: Patient) -> dict[IdentifierKind, set[str]]:
    values: dict[IdentifierKind, set[str]] = {kind: set() for kind in _KINDS}
    values["name"] |= _name_tokens([*patient.given_names, patient.family_name or ""])
    if patient.birth_date is not None:
        values["date"].add(patient.birth_date.isoformat())
    for coding in patient.identifiers:
        if coding.code and len(coding.code) >= 4:
            values["identifier"].add(coding.code.lower())
    for contact in patient.telecom:
        values["email"] |= {e.lower() for e in _EMAIL.findall(contact)}
        values["phone"] |= {_digits(p) for p in _PHONE.findall(contact)}
    return values


def _text_values(text: str) -> dict[IdentifierKind, set[str]]:
    """Identifiers of a piece of evidence text (names only where a title or label marks them)."""
    names = [g for m in _TITLE_NAME.finditer(text) for g in m.groups() if g]
    return {
        "name": _name_tokens(names),
        "date": _dates(text),
        "identifier": set(_LONG_NUMBER.findall(text)) | {m["value"].lower() for m in _MRN.finditer(text)},
        "phone": {_digits(p) for p in _PHONE.findall(text)},
        "email": {e.lower() for e in _EMAIL.findall(text)},
    }


class _Text:
    """A text and the normalised dates and phone numbers in it: what the PHI matcher compares against."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.dates = _dates(text)
        self.phones = {_digits(p) for p in _PHONE.findall(text)}

    def has(self, value: str, kind: IdentifierKind) -> bool:
        """Whether the text contains ``value`` of ``kind`` (names, ids, e-mails: case-insensitive whole words)."""
        if kind == "date":
            return value in self.dates
        if kind == "phone":
            return value in self.phones
        return re.search(rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])", self.text, _I) is not None


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
        values = _text_values(item.text)
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
    checks: list[tuple[str, re.Pattern[str]]] = [
        ("a URL", _URL),
        ("an e-mail address", _EMAIL),
        ("a code fence", _FENCE),
        *((f"chatbot boilerplate ({name})", pattern) for name, pattern in BOILERPLATE_PATTERNS.items()),
    ]
    for what, pattern in checks:
        if any(pattern.search(text) for text in texts):
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
