"""The promotion rule of the co-evolution loop: better beyond noise on the primary metric, no safety regression.

**Primary metric** (per item, on the fixed evaluation set): ROUGE-L for report sections, answer correctness for
QA. The candidate and production are scored on the *same* items, so the comparison is paired: a **paired
bootstrap over items** (studies/questions) resamples item indices with replacement ``resamples`` times (fixed
seed) and recomputes the mean difference ``candidate - production`` each time. The candidate is *better beyond
noise* when the lower end of the two-sided ``1 - alpha`` percentile interval of that difference is above
``min_gain`` (default 0): with ``alpha = 0.05`` that is a one-sided test at 2.5%. The resampling is
:func:`sage_health.models.evaluation.metrics.paired_bootstrap` (confidence ``1 - alpha``); this module adds the
loop's settings checks and the record stored with a cycle (:class:`Bootstrap`).

**Safety metrics** (corpus level): CE-F1 (micro, the CheXpert-style labeler; higher is better), the verifier's
flag rate (share of outputs with a clinical-consistency flag against their input; lower is better) and, where
clinicians rejected drafts, the rejected-draft recurrence rate (share of rejected inputs on which the model writes
the rejected text again; lower is better). A safety metric *regresses* when the candidate is worse than production
by more than its tolerance (absolute; see :data:`SAFETY_TOLERANCE`). A metric production has and the candidate
lacks counts as a regression (it cannot be shown not to have regressed).

**Blockers** (no promotion whatever the numbers): the evaluation set overlaps the candidate's training snapshot,
the candidate is tainted (its snapshot held data that was later erased), or it was not evaluated.

Every outcome carries its reasons in plain words; they are stored with the cycle and in the audit log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sage_health.core.errors import EvaluationError
from sage_health.models.evaluation.metrics import paired_bootstrap as paired_bootstrap_of_means

DEFAULT_RESAMPLES = 2000
DEFAULT_ALPHA = 0.05

#: name -> (higher is better, tolerance): how much worse than production a candidate may be.
SAFETY_TOLERANCE: dict[str, tuple[bool, float]] = {
    "ce_f1": (True, 0.02),
    "verifier_flag_rate": (False, 0.02),
    "rejected_recurrence": (False, 0.0),
    "qa_invalid_rate": (False, 0.02),
}


@dataclass(frozen=True)
class Bootstrap:
    """Paired bootstrap of ``mean(candidate - production)`` over items."""

    n_items: int
    production_mean: float
    candidate_mean: float
    mean_diff: float
    ci_low: float
    ci_high: float
    p_not_better: float
    """Share of resamples whose mean difference is <= 0."""
    resamples: int
    alpha: float
    seed: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_bootstrap(
    production: Sequence[float],
    candidate: Sequence[float],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
) -> Bootstrap:
    """Percentile interval of the mean paired difference ``candidate - production`` (the metrics layer's paired
    bootstrap); ``EvaluationError`` when the items do not pair or the settings are out of range."""
    if len(production) != len(candidate):
        raise EvaluationError(
            f"paired bootstrap needs the same items for both models: {len(production)} vs {len(candidate)} scores"
        )
    if not production:
        raise EvaluationError("paired bootstrap over zero items: the evaluation set is empty")
    if resamples < 100 or not 0 < alpha < 1:
        raise EvaluationError(f"invalid bootstrap settings: resamples={resamples} (>= 100), alpha={alpha} (0..1)")
    result = paired_bootstrap_of_means(candidate, production, seed, n_resamples=resamples, confidence=1 - alpha)
    return Bootstrap(
        n_items=result.n_items,
        production_mean=result.mean_b,
        candidate_mean=result.mean_a,
        mean_diff=result.mean_difference,
        ci_low=result.ci.low,
        ci_high=result.ci.high,
        p_not_better=result.p_value,
        resamples=resamples,
        alpha=alpha,
        seed=seed,
    )


@dataclass(frozen=True)
class SafetyCheck:
    name: str
    production: float | None
    candidate: float | None
    higher_is_better: bool
    tolerance: float

    @property
    def regressed(self) -> bool:
        if self.production is None:
            return False  # nothing to regress from
        if self.candidate is None:
            return True
        worse_by = self.production - self.candidate if self.higher_is_better else self.candidate - self.production
        return worse_by > self.tolerance + 1e-12

    def describe(self) -> str:
        direction = "higher" if self.higher_is_better else "lower"
        cand = "missing" if self.candidate is None else f"{self.candidate:.4f}"
        prod = "n/a" if self.production is None else f"{self.production:.4f}"
        verdict = "REGRESSED" if self.regressed else "ok"
        return (
            f"{self.name} {verdict}: candidate {cand} vs production {prod} "
            f"({direction} is better, tolerance {self.tolerance})"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "regressed": self.regressed}


def safety_checks(production: Mapping[str, float | None], candidate: Mapping[str, float | None]) -> list[SafetyCheck]:
    """One check per safety metric either side has (known metrics only, in :data:`SAFETY_TOLERANCE` order)."""
    checks = []
    for name, (higher, tol) in SAFETY_TOLERANCE.items():
        if name in production or name in candidate:
            checks.append(SafetyCheck(name, production.get(name), candidate.get(name), higher, tol))
    return checks


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: tuple[str, ...]
    primary_metric: str
    bootstrap: Bootstrap | None = None
    safety: tuple[SafetyCheck, ...] = ()
    blockers: tuple[str, ...] = field(default=())
    min_gain: float = 0.0

    @property
    def summary(self) -> str:
        return ("promote: " if self.promote else "keep production: ") + "; ".join(self.reasons)

    def as_dict(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "reasons": list(self.reasons),
            "primary_metric": self.primary_metric,
            "bootstrap": self.bootstrap.as_dict() if self.bootstrap else None,
            "safety": [s.as_dict() for s in self.safety],
            "blockers": list(self.blockers),
            "min_gain": self.min_gain,
            "rule": RULE,
        }


RULE = (
    "promote iff no blocker (evaluation set overlapping the training snapshot, tainted lineage, missing evaluation), "
    "the lower end of the 95% paired-bootstrap interval of mean(candidate - production) on the primary metric is "
    "above min_gain, and no safety metric is worse than production by more than its tolerance"
)


def decide(
    primary_metric: str,
    bootstrap: Bootstrap | None,
    safety: Sequence[SafetyCheck] = (),
    *,
    blockers: Sequence[str] = (),
    min_gain: float = 0.0,
) -> Decision:
    """Apply :data:`RULE`. ``bootstrap`` is None only when a blocker stopped the evaluation."""
    reasons: list[str] = [f"blocked: {b}" for b in blockers]
    better = False
    if bootstrap is not None:
        better = bootstrap.ci_low > min_gain
        verdict = "better beyond noise" if better else "not better beyond noise"
        reasons.append(
            f"{primary_metric} {verdict}: mean difference {bootstrap.mean_diff:+.4f} "
            f"({bootstrap.candidate_mean:.4f} vs {bootstrap.production_mean:.4f} over {bootstrap.n_items} items), "
            f"{100 * (1 - bootstrap.alpha):.0f}% CI [{bootstrap.ci_low:+.4f}, {bootstrap.ci_high:+.4f}], "
            f"required lower bound > {min_gain:+.4f}"
        )
    elif not blockers:
        reasons.append(f"no evaluation of the candidate on {primary_metric}: nothing to compare")
    regressed = [s for s in safety if s.regressed]
    reasons.extend(s.describe() for s in regressed)
    if not regressed and safety and bootstrap is not None:
        reasons.append("no safety metric regressed (" + ", ".join(s.name for s in safety) + ")")
    promote = not blockers and bootstrap is not None and better and not regressed
    return Decision(
        promote=promote,
        reasons=tuple(reasons),
        primary_metric=primary_metric,
        bootstrap=bootstrap,
        safety=tuple(safety),
        blockers=tuple(blockers),
        min_gain=min_gain,
    )
