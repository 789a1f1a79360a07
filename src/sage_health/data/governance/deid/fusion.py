"""How the rule-based recognizers and the learned model are combined (:class:`Fusion`), and address blocks joined.

The choices here (use the model or not, how much a weak rule hit needs the model's agreement, join address blocks
or not) are the de-identifier's tuned settings. They are chosen by template-grouped cross-validation on the dev file
(``sage-health eval deid --cv-by template``, :func:`~sage_health.data.governance.deid_eval.evaluate_cv`), never by
the plain dev figure: :data:`DEFAULT_FUSION` is the setting the cross-validation selects on the whole dev file, and
:func:`fusion_grid` lists the candidates it chooses from.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final

from sage_health.data.governance.deid.types import EntityLabel, PhiSpan

RawHit = tuple[int, int, EntityLabel, float, str]
"""(start, end, label, score, source): one recognizer result before overlap resolution."""

LEARNED_SOURCE: Final = "SageLearnedRecognizer"


@dataclass(frozen=True)
class Fusion:
    """The combination of rules and model.

    * ``learned``: run the learned NER (:mod:`.learned`) beside the rules;
    * ``gate``: a rule hit labelled NAME or LOCATION with a score below ``gate`` is kept only where the learned model
      also found an identifier overlapping it (0: every rule hit is kept);
    * ``join``: an ADDRESS span and the LOCATION / ZIP / ADDRESS spans that continue it on the same line or the next
      lines (separated by commas, spaces or line breaks only) become one ADDRESS span, as an address is one
      identifier ("12 Main St, Springfield, IL 62704").
    """

    learned: bool = True
    gate: float = 0.0
    join: bool = True

    @property
    def name(self) -> str:
        if not self.learned:
            return f"rules{'+join' if self.join else ''}"
        return f"rules+learned(gate={self.gate:g}){'+join' if self.join else ''}"


DEFAULT_FUSION: Final = Fusion(learned=True, gate=0.0, join=True)


def fusion_grid() -> tuple[Fusion, ...]:
    """The candidate settings the template cross-validation chooses among: rules alone, or rules and model with a
    gate on weak rule hits. Address blocks are always joined: an address is one identifier (issue 14), so that is a
    requirement, not a tuned choice."""
    out = [Fusion(learned=False, join=True)]
    out += [Fusion(learned=True, gate=gate, join=True) for gate in (0.0, 0.45, 0.65, 0.9)]
    return tuple(out)


_GATED: Final[frozenset[str]] = frozenset({"NAME", "LOCATION"})


def gate(hits: Sequence[RawHit], fusion: Fusion) -> list[RawHit]:
    """Drop weak rule NAME/LOCATION hits the learned model does not support (``fusion.gate``)."""
    if not fusion.learned or fusion.gate <= 0.0:
        return list(hits)
    learned = [(s, e) for s, e, _, _, source in hits if source.startswith(LEARNED_SOURCE)]
    out: list[RawHit] = []
    for hit in hits:
        start, end, label, score, source = hit
        weak = label in _GATED and score < fusion.gate and not source.startswith((LEARNED_SOURCE, "known"))
        if weak and not any(s < end and start < e for s, e in learned):
            continue
        out.append(hit)
    return out


_BLOCK_GAP: Final = re.compile(r"[ \t]*(?:,[ \t]*)?(?:\n[ \t]*)?")
_JOINABLE: Final[frozenset[str]] = frozenset({"ADDRESS", "LOCATION", "ZIP"})


def join_addresses(text: str, spans: Sequence[PhiSpan]) -> list[PhiSpan]:
    """Merge an ADDRESS span with the LOCATION/ZIP/ADDRESS spans that directly continue it (see :class:`Fusion`)."""
    out: list[PhiSpan] = []
    for span in spans:
        prev = out[-1] if out else None
        if (
            prev is not None
            and prev.label == "ADDRESS"
            and span.label in _JOINABLE
            and _BLOCK_GAP.fullmatch(text, prev.end, span.start) is not None
        ):
            out[-1] = replace(
                prev,
                end=span.end,
                score=max(prev.score, span.score),
                text=text[prev.start : span.end],
            )
            continue
        out.append(span)
    return out
