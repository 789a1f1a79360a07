"""The :class:`Hit` every rule-based recognizer returns: one candidate identifier span (no state, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

from sage_health.data.governance.deid.types import EntityLabel


@dataclass(frozen=True)
class Hit:
    start: int
    end: int
    label: EntityLabel
    score: float
    recognizer: str
