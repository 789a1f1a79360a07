"""Value types and the ``Deidentifier`` protocol of the de-identification component.

Entity labels (what :meth:`Deidentifier.detect` reports; the HIPAA Safe Harbor identifier each covers):

========== ==============================================================================================
NAME       person names (patients, relatives, clinicians), with digits Synthea appends ("Abe604")
DATE       dates in any common format ("2019-03-03", "3/3/19", "March 3, 2019", "03 Mar 2019", "March 2019",
           years next to a date cue, ISO timestamps) and clock times
AGE        ages stated with an age cue ("93-year-old", "aged 93", "93 y/o", "turned 93"); only ages over 89 are
           PHI under Safe Harbor: :meth:`Deidentifier.deidentify` keeps ages <= 89 and writes "90+" for the rest
ADDRESS    street addresses (number + street words + suffix, European "Street 12" forms, PO boxes, military
           PSC/APO boxes, Suite/Apt/Unit) and the city/state/ZIP lines of an address block
LOCATION   cities and other places below the state level (from an address or a place cue)
ZIP        postal codes next to a state or a ZIP cue
PHONE      telephone and fax numbers (US and international layouts, extensions)
EMAIL      e-mail addresses
SSN        US social security numbers
ID         record, account, device, licence, health-plan and card numbers: MRN/ID-keyword values, UUIDs, IBANs,
           card numbers, long digit runs and long letter+digit codes
URL        web addresses (http(s)://, www., bare domains with a common top-level domain)
IP         IPv4 and IPv6 addresses
========== ==============================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal, Protocol, runtime_checkable

from sage_health.core.errors import DataError


class DeidentificationError(DataError):
    """De-identification could not run: bad input (not text, unknown mode) or an unusable key. Never quotes PHI."""


EntityLabel = Literal["NAME", "DATE", "AGE", "ADDRESS", "LOCATION", "ZIP", "PHONE", "EMAIL", "SSN", "ID", "URL", "IP"]
ENTITY_LABELS: Final[tuple[EntityLabel, ...]] = (
    "NAME",
    "DATE",
    "AGE",
    "ADDRESS",
    "LOCATION",
    "ZIP",
    "PHONE",
    "EMAIL",
    "SSN",
    "ID",
    "URL",
    "IP",
)

DeidMode = Literal["tag", "surrogate", "shift"]
"""``tag``: every identifier becomes ``[LABEL]``. ``surrogate``: consistent fake values per patient (names, addresses,
numbers...) and dates shifted by the patient's secret offset. ``shift``: dates shifted, everything else tagged.
In every mode ages over 89 become ``90+`` (``[AGE]`` in tag mode) and ages <= 89 are kept."""
DEID_MODES: Final[tuple[DeidMode, ...]] = ("tag", "surrogate", "shift")


@dataclass(frozen=True)
class PhiSpan:
    """One detected identifier: character offsets into the analysed text (end exclusive).

    ``text`` is the PHI itself; it is left out of ``repr`` so that a span printed in a log or an error message
    carries no PHI.
    """

    start: int
    end: int
    label: EntityLabel
    score: float
    recognizer: str
    text: str = field(repr=False, default="")


@dataclass(frozen=True)
class Replacement:
    """Where a span went: ``start``/``end`` in the input, ``out_start``/``out_end`` in the output text."""

    start: int
    end: int
    label: EntityLabel
    out_start: int
    out_end: int


@dataclass(frozen=True)
class DeidResult:
    """A de-identified text and what was replaced (offsets only; no original values)."""

    text: str
    mode: DeidMode
    replacements: tuple[Replacement, ...]

    def counts(self) -> dict[str, int]:
        """Replacements per label."""
        out: dict[str, int] = {}
        for rep in self.replacements:
            out[rep.label] = out.get(rep.label, 0) + 1
        return out


@runtime_checkable
class Deidentifier(Protocol):
    """Finds identifiers in free text and replaces them.

    Contract:

    * ``detect(text)`` returns non-overlapping spans sorted by ``start``; an empty text gives ``[]``; a non-``str``
      input raises :class:`~sage_health.core.errors.DeidentificationError` (a ``DataError``).
    * ``deidentify(text, patient_key=..., mode=...)`` replaces every detected span (ages <= 89 excepted, see
      :data:`DeidMode`). Surrogates and date shifts are deterministic functions of the secret key and
      ``patient_key``: the same original value in the same patient always gets the same surrogate, different
      patients get different ones, and all dates of one patient move by the same number of days (intervals are
      preserved). ``patient_key`` None means "no patient" (one shared bucket).
    * Neither method logs or raises with the text or any part of it.
    """

    name: str
    version: str

    def detect(self, text: str) -> list[PhiSpan]:
        """Identifier spans in ``text`` (sorted, non-overlapping)."""
        ...

    def deidentify(self, text: str, *, patient_key: str | None, mode: DeidMode = "tag") -> DeidResult:
        """``text`` with every identifier replaced according to ``mode``."""
        ...
