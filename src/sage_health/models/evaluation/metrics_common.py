"""What every metric module shares: the :data:`MetricTree` an evaluation run stores, zero-safe division, F1 and the
check that two inputs pair up item by item.
"""

from __future__ import annotations

from collections.abc import Sequence

from sage_health.core.errors import EvaluationError

MetricValue = int | float
"""A count (``int``, shown without decimals) or a score (``float``, shown with four decimals)."""
MetricTree = dict[str, MetricValue | dict[str, MetricValue | dict[str, MetricValue]]]
"""What an evaluation run stores: ``section -> metric -> value`` or ``section -> row -> column -> value``.

A section whose values are numbers is a two-column table (metric, value); a section whose values are dicts is a
table with one row per key (an observation, a class) and one column per inner key.
"""

# ---------------------------------------------------------------------- helpers


def _safe_div(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _f1(precision: float, recall: float) -> float:
    return _safe_div(2 * precision * recall, precision + recall)


def _check_paired(name_a: str, a: Sequence[object], name_b: str, b: Sequence[object]) -> None:
    if len(a) == 0:
        raise EvaluationError(f"{name_a} is empty: pass at least one item to evaluate")
    if len(a) != len(b):
        raise EvaluationError(
            f"{name_a} has {len(a)} items but {name_b} has {len(b)}: pass exactly one {name_b} entry per {name_a} entry"
        )
