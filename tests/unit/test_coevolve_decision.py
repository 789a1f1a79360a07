"""The co-evolution promotion rule on constructed metric differences."""

from __future__ import annotations

import numpy as np
import pytest

from sage_health.apps.coevolve.decision import SafetyCheck, decide, paired_bootstrap, safety_checks
from sage_health.core.errors import EvaluationError


def _scores(n: int, seed: int, mean: float = 0.3, sd: float = 0.15) -> list[float]:
    rng = np.random.default_rng(seed)
    return [float(x) for x in np.clip(rng.normal(mean, sd, n), 0, 1)]


def test_clear_gain_is_promoted() -> None:
    prod = _scores(200, 1)
    cand = [min(1.0, p + 0.08) for p in prod]
    boot = paired_bootstrap(prod, cand, seed=0)
    assert boot.ci_low > 0.05
    assert boot.mean_diff == pytest.approx(np.mean(cand) - np.mean(prod))
    d = decide("rouge_l", boot, safety_checks({"ce_f1": 0.4}, {"ce_f1": 0.41}))
    assert d.promote
    assert "better beyond noise" in d.summary
    assert "no safety metric regressed" in d.summary


def test_gain_within_noise_keeps_production() -> None:
    prod = _scores(60, 2)
    noise = np.random.default_rng(3).normal(0.0, 0.2, 60)
    cand = [float(np.clip(p + 0.01 + e, 0, 1)) for p, e in zip(prod, noise, strict=True)]
    boot = paired_bootstrap(prod, cand, seed=0)
    assert boot.ci_low <= 0 < boot.ci_high
    d = decide("rouge_l", boot)
    assert not d.promote
    assert "not better beyond noise" in d.reasons[0]


def test_worse_candidate_is_kept_out() -> None:
    prod = _scores(100, 4)
    cand = [max(0.0, p - 0.05) for p in prod]
    d = decide("rouge_l", paired_bootstrap(prod, cand))
    assert not d.promote
    assert d.bootstrap is not None
    assert d.bootstrap.ci_high < 0


def test_safety_regression_blocks_a_better_candidate() -> None:
    prod = _scores(200, 5)
    cand = [min(1.0, p + 0.1) for p in prod]
    checks = safety_checks({"ce_f1": 0.40, "verifier_flag_rate": 0.05}, {"ce_f1": 0.35, "verifier_flag_rate": 0.06})
    d = decide("rouge_l", paired_bootstrap(prod, cand), checks)
    assert not d.promote
    assert any("ce_f1 REGRESSED" in r for r in d.reasons)
    assert not any("verifier_flag_rate REGRESSED" in r for r in d.reasons)  # +0.01 is within its tolerance


def test_safety_tolerances_and_missing_metrics() -> None:
    assert SafetyCheck("verifier_flag_rate", 0.05, 0.08, False, 0.02).regressed
    assert not SafetyCheck("verifier_flag_rate", 0.05, 0.07, False, 0.02).regressed
    assert SafetyCheck("rejected_recurrence", 0.0, 0.1, False, 0.0).regressed
    assert SafetyCheck("ce_f1", 0.4, None, True, 0.02).regressed  # cannot show it did not regress
    assert not SafetyCheck("ce_f1", None, 0.1, True, 0.02).regressed


def test_blockers_win_over_numbers() -> None:
    prod = _scores(100, 6)
    cand = [min(1.0, p + 0.2) for p in prod]
    d = decide("rouge_l", paired_bootstrap(prod, cand), blockers=["the evaluation set overlaps the training snapshot"])
    assert not d.promote
    assert d.reasons[0].startswith("blocked: the evaluation set overlaps")
    assert not decide("rouge_l", None).promote


def test_min_gain_and_non_inferiority() -> None:
    prod = _scores(300, 7)
    cand = [min(1.0, p + 0.02) for p in prod]
    boot = paired_bootstrap(prod, cand)
    assert decide("rouge_l", boot).promote
    assert not decide("rouge_l", boot, min_gain=0.05).promote
    equal = paired_bootstrap(prod, list(prod))
    assert not decide("rouge_l", equal).promote
    assert decide("rouge_l", equal, min_gain=-0.02).promote  # the tainted-production rule


def test_bootstrap_is_deterministic_and_checks_pairing() -> None:
    prod, cand = _scores(50, 8), _scores(50, 9)
    assert paired_bootstrap(prod, cand, seed=3) == paired_bootstrap(prod, cand, seed=3)
    with pytest.raises(EvaluationError, match="same items"):
        paired_bootstrap(prod, cand[:-1])
    with pytest.raises(EvaluationError, match="zero items"):
        paired_bootstrap([], [])
