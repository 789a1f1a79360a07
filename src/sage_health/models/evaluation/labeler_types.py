"""What the CheXpert labeler returns: the 14 observations, the :class:`Label` of each, and the :class:`Evidence`
behind it in :class:`ReportLabels`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final

NO_FINDING: Final = "No Finding"
SUPPORT_DEVICES: Final = "Support Devices"

#: The 14 CheXpert observations, in the column order of the reference labeler's output.
OBSERVATIONS: Final[tuple[str, ...]] = (
    NO_FINDING,
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    SUPPORT_DEVICES,
)

#: The five observations of the CheXpert competition (the usual clinical-efficacy subset).
COMMON_FIVE: Final[tuple[str, ...]] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")


class Label(StrEnum):
    """One observation's label; :attr:`chexpert_value` gives the reference labeler's number (blank is ``None``)."""

    POSITIVE = "positive"
    NEGATIVE = "negative"
    UNCERTAIN = "uncertain"
    BLANK = "blank"

    @property
    def chexpert_value(self) -> float | None:
        """1.0 positive, 0.0 negative, -1.0 uncertain, ``None`` blank (CheXpert's empty cell)."""
        return _CHEXPERT_VALUES[self]

    @classmethod
    def from_chexpert(cls, value: float | str | None) -> Label:
        """Parse a CheXpert cell: ``1``/``1.0``, ``0``/``0.0``, ``-1``/``-1.0``, or empty / ``None`` / NaN."""
        text = "" if value is None else str(value).strip().lower()
        if text in {"", "nan", "none"}:
            return cls.BLANK
        try:
            number = float(text)
        except ValueError:
            number = None
        for label, chexpert in _CHEXPERT_VALUES.items():
            if chexpert is not None and number == chexpert:
                return label
        raise ValueError(f"not a CheXpert label value: {text!r} (expected 1, 0, -1 or empty)")


_CHEXPERT_VALUES: Final[Mapping[Label, float | None]] = MappingProxyType(
    {Label.POSITIVE: 1.0, Label.NEGATIVE: 0.0, Label.UNCERTAIN: -1.0, Label.BLANK: None}
)

# The reference aggregation: a positive mention beats an uncertain one, which beats a negative one.
_PRECEDENCE: Final[Mapping[Label, int]] = MappingProxyType(
    {Label.POSITIVE: 3, Label.UNCERTAIN: 2, Label.NEGATIVE: 1, Label.BLANK: 0}
)


@dataclass(frozen=True, slots=True)
class Evidence:
    """Why an observation got its label: the deciding mention, its sentence and the ConText cues that modified it.

    ``phrase`` is the labeler phrase that matched (a stem such as ``atelecta``), ``mention`` the whole words it
    matched in :attr:`ReportLabels.text` (the normalised report) at ``start``/``end``.
    For a blank No Finding the evidence is the first positive or uncertain abnormality (``label`` is blank).
    """

    observation: str
    label: Label
    phrase: str
    mention: str
    start: int
    end: int
    sentence: str
    cues: tuple[str, ...] = ()

    def explain(self) -> str:
        """One line for a human: ``"Edema: negative - 'edema' in 'no edema.' (cue: 'no')"``."""
        cue = f" (cue: {', '.join(repr(c) for c in self.cues)})" if self.cues else ""
        return f"{self.observation}: {self.label.value} - {self.mention!r} in {self.sentence!r}{cue}"


@dataclass(frozen=True, slots=True)
class ReportLabels:
    """The 14 labels of one report (every observation present, blank when not mentioned) and their evidence.

    ``text`` is the normalised report that ``evidence`` offsets point into.
    """

    text: str
    labels: Mapping[str, Label]
    evidence: Mapping[str, Evidence] = field(default_factory=lambda: MappingProxyType({}))

    def __getitem__(self, observation: str) -> Label:
        try:
            return self.labels[observation]
        except KeyError:
            raise KeyError(f"unknown observation {observation!r}; expected one of {', '.join(OBSERVATIONS)}") from None

    def to_chexpert(self) -> dict[str, float | None]:
        """The reference labeler's row: observation -> 1.0 / 0.0 / -1.0 / None."""
        return {name: self.labels[name].chexpert_value for name in OBSERVATIONS}

    def positives(self, *, uncertain_as_positive: bool = True) -> frozenset[str]:
        """Observations labelled positive (and uncertain, under the U-Ones convention, by default)."""
        wanted = {Label.POSITIVE, Label.UNCERTAIN} if uncertain_as_positive else {Label.POSITIVE}
        return frozenset(name for name, label in self.labels.items() if label in wanted)


# -- ConText rules ----------------------------------------------------------------------------------------------
