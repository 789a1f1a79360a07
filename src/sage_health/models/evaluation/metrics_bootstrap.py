"""Bootstrap uncertainty of per-item scores: a percentile interval of a mean (:func:`bootstrap_ci`) and the paired
bootstrap of a difference of means on the same items (:func:`paired_bootstrap`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sage_health.core.errors import EvaluationError
from sage_health.models.evaluation.metrics_common import _check_paired

_BOOTSTRAP_CHUNK = 1_000_000  # resampled items held in memory at once
# Confidence levels are decimal fractions, but 1 - 0.95 is 0.05000000000000004 in binary floating point: the tail
# probability (1 - confidence) / 2 is rounded to this many decimals, so 0.95 takes exactly the 0.025 and 0.975
# quantiles (and confidence=1 - alpha exactly the alpha / 2 and 1 - alpha / 2 quantiles).
_TAIL_DECIMALS = 12

# ---------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class ConfidenceInterval:
    """A bootstrap percentile interval around the mean of per-item scores."""

    estimate: float
    """The mean over the original items (not over the resamples)."""
    low: float
    high: float
    confidence: float
    n_resamples: int
    seed: int


@dataclass(frozen=True)
class PairedBootstrapResult:
    """Candidate A vs B on the same items (see :func:`paired_bootstrap`)."""

    mean_difference: float
    """mean(a) - mean(b) over the original items."""
    ci: ConfidenceInterval
    """Percentile interval of the resampled mean differences."""
    p_value: float
    """Fraction of resamples whose mean difference is <= 0: small when A's advantage is robust (one-sided)."""
    n_items: int
    mean_a: float
    """mean(a) over the original items."""
    mean_b: float
    """mean(b) over the original items."""

    @property
    def a_better(self) -> bool:
        """A measurably beats B: the whole confidence interval of mean(a - b) lies above 0."""
        return self.ci.low > 0


def _as_scores(name: str, values: Sequence[float]) -> npt.NDArray[np.float64]:
    if len(values) == 0:
        raise EvaluationError(f"{name} is empty: pass at least one per-item score")
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise EvaluationError(f"{name} must be a flat sequence of per-item scores")
    if not np.all(np.isfinite(array)):
        raise EvaluationError(f"{name} contains NaN or infinite values: score every item with a finite number")
    return array


def _check_bootstrap_args(n_resamples: int, confidence: float) -> None:
    if n_resamples < 1:
        raise EvaluationError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise EvaluationError(f"confidence must be strictly between 0 and 1, got {confidence}")


def _bootstrap_means(values: npt.NDArray[np.float64], n_resamples: int, seed: int) -> npt.NDArray[np.float64]:
    """Means of ``n_resamples`` resamples (with replacement, same size) of ``values``; bounded memory."""
    rng = np.random.default_rng(seed)
    n = len(values)
    rows = max(1, _BOOTSTRAP_CHUNK // n)
    means = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, rows):
        stop = min(n_resamples, start + rows)
        indices = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[indices].mean(axis=1)
    return means


def _interval(
    estimate: float, means: npt.NDArray[np.float64], confidence: float, n_resamples: int, seed: int
) -> ConfidenceInterval:
    tail = round((1 - confidence) / 2, _TAIL_DECIMALS)
    low, high = np.quantile(means, [tail, 1 - tail])
    return ConfidenceInterval(
        estimate=estimate,
        low=float(low),
        high=float(high),
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
    )


def bootstrap_ci(
    values: Sequence[float], seed: int, *, n_resamples: int = 1000, confidence: float = 0.95
) -> ConfidenceInterval:
    """Percentile bootstrap interval of the mean of per-item scores (e.g. ROUGE-L per report, 0/1 correctness).

    ``n_resamples`` resamples of the items with replacement, drawn by ``numpy.random.default_rng(seed)``; the
    interval is the ``(1 - confidence) / 2`` and ``1 - (1 - confidence) / 2`` quantiles (linear interpolation; the
    tail rounded to 12 decimals, so 0.95 gives exactly the 0.025 and 0.975 quantiles) of the resampled means. Same
    inputs and seed, same interval.
    """
    _check_bootstrap_args(n_resamples, confidence)
    array = _as_scores("values", values)
    means = _bootstrap_means(array, n_resamples, seed)
    return _interval(float(array.mean()), means, confidence, n_resamples, seed)


def paired_bootstrap(
    a_scores: Sequence[float],
    b_scores: Sequence[float],
    seed: int,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
) -> PairedBootstrapResult:
    """Paired bootstrap of mean(a) - mean(b), where ``a_scores[i]`` and ``b_scores[i]`` score the same item i.

    The items are resampled together (Koehn 2004): the interval is :func:`bootstrap_ci` of the per-item
    differences ``a - b``, and ``p_value`` is the fraction of resamples whose mean difference is <= 0. Say that
    A (a candidate) measurably beats B (production) only when :attr:`PairedBootstrapResult.a_better`, i.e. the
    interval excludes 0. ``p_value`` is a one-sided bootstrap fraction, not a calibrated test statistic. The result
    also carries both means (``mean_a``, ``mean_b``), so that a caller reporting them needs no second pass.
    """
    _check_bootstrap_args(n_resamples, confidence)
    _check_paired("a_scores", a_scores, "b_scores", b_scores)
    a = _as_scores("a_scores", a_scores)
    b = _as_scores("b_scores", b_scores)
    diff = a - b
    means = _bootstrap_means(diff, n_resamples, seed)
    estimate = float(diff.mean())
    return PairedBootstrapResult(
        mean_difference=estimate,
        ci=_interval(estimate, means, confidence, n_resamples, seed),
        p_value=float(np.mean(means <= 0)),
        n_items=len(diff),
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
    )
