"""The registry of the rule-based recognizers: each is a function ``text -> list[Hit]`` (no state, no I/O).

They live in :mod:`.dates` (dates, times, ages), :mod:`.contacts` (contact details and numbers), :mod:`.places`
(addresses and places) and :mod:`.names` (person names); this module lists them in :data:`RECOGNIZERS` and
re-exports them, with the learned NER of :mod:`.learned` (trained on generated text only) as the last one.
``engine.py`` wraps each one as a presidio ``EntityRecognizer``; :mod:`.fusion` says how their hits combine.
Patterns are general (formats, keywords, word lists from :mod:`.lexicon`); none is fitted to an evaluation
sentence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final, cast

from sage_health.data.governance.deid.contacts import find_contacts
from sage_health.data.governance.deid.dates import DATE_PATTERNS, MONTHS, calendar_date, find_ages, find_dates
from sage_health.data.governance.deid.fusion import LEARNED_SOURCE
from sage_health.data.governance.deid.generate import MODEL_LABELS
from sage_health.data.governance.deid.hit import Hit
from sage_health.data.governance.deid.learned import find_learned
from sage_health.data.governance.deid.names import find_names
from sage_health.data.governance.deid.places import find_addresses, find_places
from sage_health.data.governance.deid.types import EntityLabel

__all__ = [
    "DATE_PATTERNS",
    "MONTHS",
    "RECOGNIZERS",
    "Hit",
    "all_hits",
    "calendar_date",
    "find_addresses",
    "find_ages",
    "find_contacts",
    "find_dates",
    "find_learned",
    "find_names",
    "find_places",
]

RECOGNIZERS: Final[tuple[tuple[str, tuple[EntityLabel, ...], Callable[[str], list[Hit]]], ...]] = (
    ("SageNameRecognizer", ("NAME",), find_names),
    ("SageDateRecognizer", ("DATE",), find_dates),
    ("SageAgeRecognizer", ("AGE",), find_ages),
    ("SageAddressRecognizer", ("ADDRESS", "LOCATION", "ZIP"), find_addresses),
    ("SagePlaceRecognizer", ("LOCATION",), find_places),
    ("SageContactRecognizer", ("PHONE", "EMAIL", "SSN", "ID", "URL", "IP"), find_contacts),
    (LEARNED_SOURCE, cast(tuple[EntityLabel, ...], MODEL_LABELS), find_learned),
)
"""(presidio recognizer name, labels it emits, function): every built-in recognizer, in one place."""


RULE_RECOGNIZERS: Final = tuple(r for r in RECOGNIZERS if r[0] != LEARNED_SOURCE)
"""The rule-based recognizers only (no model)."""


def all_hits(text: str) -> Iterable[Hit]:
    for _, _, fn in RECOGNIZERS:
        yield from fn(text)
