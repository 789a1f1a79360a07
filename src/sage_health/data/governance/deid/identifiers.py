"""Detected identifiers as comparable values: does one text repeat an identifier of another (the safety agent's
check that a draft carries no other patient's PHI)?

Detection is the de-identifier's own: :func:`detect_phi` runs the built-in recognizers (the learned NER included),
the engine's fusion, overlap resolution and eponym allow-list, without the presidio orchestration (nothing loads but
the word lists and the shipped NER model). The values
are normalised so that differently written forms compare equal: calendar dates (:func:`.dates.calendar_date`),
phone numbers by their digits (:func:`phone_digits`), names by their identifying words (:func:`name_tokens`).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from typing import Final

from sage_health.data.governance.deid.engine import resolve
from sage_health.data.governance.deid.fusion import DEFAULT_FUSION, LEARNED_SOURCE, Fusion, gate, join_addresses
from sage_health.data.governance.deid.lexicon import common_words, eponym_spans
from sage_health.data.governance.deid.names import is_title, never_a_name
from sage_health.data.governance.deid.recognizers import RECOGNIZERS, calendar_date
from sage_health.data.governance.deid.types import EntityLabel, PhiSpan

__all__ = ["calendar_date", "contains_value", "detect_phi", "name_tokens", "phone_digits"]

_NAME_WORD: Final = re.compile(r"[^\W\d_][\w'\u2019\-]*")
_PHONE_DIGITS: Final = 10
"""Phone numbers compare by their last ten digits (a country or trunk prefix written or not)."""


def detect_phi(
    text: str, labels: Collection[EntityLabel] | None = None, *, fusion: Fusion = DEFAULT_FUSION
) -> list[PhiSpan]:
    """The identifier spans :meth:`~.engine.PresidioDeidentifier.detect` finds in ``text`` (same recognizers, same
    fusion, allow-list and overlap resolution; sorted, non-overlapping), computed without presidio.

    ``labels`` restricts detection as presidio's ``entities`` does: only the recognizers that emit one of them run,
    and only their hits with those labels are resolved.
    """
    wanted = None if labels is None else frozenset(labels)
    hits: list[tuple[int, int, EntityLabel, float, str]] = []
    for name, emits, find in RECOGNIZERS:
        if wanted is not None and wanted.isdisjoint(emits):
            continue
        if name == LEARNED_SOURCE and not fusion.learned:
            continue
        hits += [
            (h.start, h.end, h.label, h.score, f"{name}:{h.recognizer}")
            for h in find(text)
            if h.end > h.start and (wanted is None or h.label in wanted)
        ]
    spans = resolve(text, gate(hits, fusion))
    return join_addresses(text, spans) if fusion.join else spans


def phone_digits(text: str) -> str:
    """The last ten digits of a phone number: ``(617) 555-0199``, ``617.555.0199`` and ``+1 617 555 0199`` agree."""
    return re.sub(r"\D", "", text)[-_PHONE_DIGITS:]


def name_tokens(names: Iterable[str]) -> set[str]:
    """The lower-cased words of ``names`` that can identify a person: at least two characters; not a person title
    ("DR" of "DR. SMITH"), a word the name recognizer never reads as a name ("June", "Patient"), a common English
    word of the lexicon ("May", "White", "Hope") or a de-identification placeholder ("XXXX"). Digits Synthea
    appends to a name stay part of it ("adolfo931")."""
    common = common_words()
    tokens: set[str] = set()
    for name in names:
        for word in _NAME_WORD.findall(name):
            if is_title(word) or never_a_name(word):
                continue
            token = word.strip("'\u2019-").lower()
            if len(token) >= 2 and token not in common and not set(token) <= {"x"}:
                tokens.add(token)
    return tokens


def contains_value(text: str, value: str, *, as_name: bool = False) -> bool:
    """Whether ``value`` occurs in ``text`` as a whole word (case-insensitive; no letter or digit on either side).

    ``as_name``: an occurrence that is a clinical eponym there (:func:`.lexicon.eponym_spans`: "Graves disease",
    "Parkinson's") does not count, one that names a person ("Dr. Graves") does.
    """
    found = [m.span() for m in re.finditer(rf"(?<![^\W_]){re.escape(value)}(?![^\W_])", text, re.IGNORECASE)]
    if not as_name or not found:
        return bool(found)
    eponyms = eponym_spans(text)
    return any(not any(s < end and start < e for s, e in eponyms) for start, end in found)
