"""Clinical efficacy of generated reports: precision / recall / F1 of CheXpert-style observation labels against
those of the reference reports (:func:`ce_metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sage_health.core.errors import EvaluationError
from sage_health.models.evaluation.metrics_common import MetricTree, MetricValue, _check_paired, _f1, _safe_div

# CheXpert label values produced by the labeler.
LABEL_POSITIVE = "positive"
LABEL_NEGATIVE = "negative"
LABEL_UNCERTAIN = "uncertain"
LABEL_BLANK = "blank"
CE_LABELS = frozenset({LABEL_POSITIVE, LABEL_NEGATIVE, LABEL_UNCERTAIN, LABEL_BLANK})

# ---------------------------------------------------------------------- clinical efficacy


@dataclass(frozen=True)
class BinaryScores:
    """Precision, recall and F1 of a micro or macro average."""

    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class ObservationScores:
    """Confusion counts and scores of one CheXpert observation over all reports."""

    observation: str
    tp: int
    fp: int
    fn: int
    tn: int
    precision: float
    recall: float
    f1: float

    @property
    def support(self) -> int:
        """Reference reports positive for this observation."""
        return self.tp + self.fn


@dataclass(frozen=True)
class CEMetrics:
    """Clinical-efficacy metrics (see :func:`ce_metrics`)."""

    n_reports: int
    uncertain_as_positive: bool
    observations: tuple[str, ...]
    common_observations: tuple[str, ...]
    per_observation: tuple[ObservationScores, ...]
    micro: BinaryScores
    """Over all observations: precision and recall from the summed TP / FP / FN, F1 of those."""
    macro: BinaryScores
    """Over all observations: unweighted mean of the per-observation precision, recall and F1."""
    micro_common: BinaryScores
    macro_common: BinaryScores

    def scores_for(self, observation: str) -> ObservationScores:
        """The scores of one observation (by name)."""
        for scores in self.per_observation:
            if scores.observation == observation:
                return scores
        raise EvaluationError(f"unknown observation {observation!r}: expected one of {list(self.observations)}")

    def as_metrics(self) -> MetricTree:
        """``{"ce": {averages}, "ce_per_observation": {observation: {precision, recall, f1, tp, fp, fn, tn}}}``."""
        summary: dict[str, MetricValue | dict[str, MetricValue]] = {}
        for prefix, scores in (
            ("micro", self.micro),
            ("macro", self.macro),
            ("common_micro", self.micro_common),
            ("common_macro", self.macro_common),
        ):
            summary[f"{prefix}_precision"] = scores.precision
            summary[f"{prefix}_recall"] = scores.recall
            summary[f"{prefix}_f1"] = scores.f1
        summary["n_reports"] = self.n_reports
        summary["uncertain_as_positive"] = int(self.uncertain_as_positive)
        per_observation: dict[str, MetricValue | dict[str, MetricValue]] = {
            s.observation: {
                "precision": s.precision,
                "recall": s.recall,
                "f1": s.f1,
                "tp": s.tp,
                "fp": s.fp,
                "fn": s.fn,
                "tn": s.tn,
            }
            for s in self.per_observation
        }
        return {"ce": summary, "ce_per_observation": per_observation}


def _micro(scores: Sequence[ObservationScores]) -> BinaryScores:
    tp = sum(s.tp for s in scores)
    precision = _safe_div(tp, tp + sum(s.fp for s in scores))
    recall = _safe_div(tp, tp + sum(s.fn for s in scores))
    return BinaryScores(precision=precision, recall=recall, f1=_f1(precision, recall))


def _macro(scores: Sequence[ObservationScores]) -> BinaryScores:
    n = len(scores)
    return BinaryScores(
        precision=sum(s.precision for s in scores) / n,
        recall=sum(s.recall for s in scores) / n,
        f1=sum(s.f1 for s in scores) / n,
    )


def _positive_sets(
    name: str, labels: Sequence[Mapping[str, str]], known: frozenset[str], positive_values: frozenset[str]
) -> list[frozenset[str]]:
    result: list[frozenset[str]] = []
    for index, report in enumerate(labels):
        unknown = sorted(set(report) - known)
        if unknown:
            raise EvaluationError(
                f"{name}[{index}] has unknown observations {unknown}: use the names passed as observations"
            )
        for observation, value in report.items():
            if value not in CE_LABELS:
                raise EvaluationError(
                    f"{name}[{index}][{observation!r}] is {value!r}: expected one of {sorted(CE_LABELS)}"
                )
        result.append(frozenset(obs for obs, value in report.items() if value in positive_values))
    return result


def ce_metrics(
    generated_labels: Sequence[Mapping[str, str]],
    reference_labels: Sequence[Mapping[str, str]],
    observations: Sequence[str],
    common_observations: Sequence[str],
    *,
    uncertain_as_positive: bool = False,
) -> CEMetrics:
    """Clinical efficacy: do the generated reports state the same findings as the reference reports?

    ``generated_labels[i]`` and ``reference_labels[i]`` map observation names (CheXpert's 14) to
    ``'positive' | 'negative' | 'uncertain' | 'blank'``, as produced by the labeler for report i; an observation
    missing from a mapping is ``'blank'`` (not mentioned). Convention of R2Gen and the CheXpert-based CE metrics
    (MIMIC-CXR): each (report, observation) is binarised -- ``'positive'`` is 1 and everything else
    (``'negative'``, ``'blank'`` and, by default, ``'uncertain'``) is 0; with ``uncertain_as_positive=True``,
    ``'uncertain'`` is 1 on both sides. Per observation, TP / FP / FN / TN count reports with generated vs
    reference value (1, 1) / (1, 0) / (0, 1) / (0, 0). Micro averages pool the counts of the observations; macro
    averages are the unweighted mean of the per-observation scores (an observation never positive on either
    side has P = R = F1 = 0.0 and still counts in the macro mean). Averages are given over all ``observations``
    and over ``common_observations`` (the five common ones: a subset of ``observations``).
    """
    _check_paired("generated_labels", generated_labels, "reference_labels", reference_labels)
    if not observations:
        raise EvaluationError("observations is empty: pass the observation names (CheXpert's 14)")
    if len(set(observations)) != len(observations):
        raise EvaluationError("observations has duplicate names: pass each observation once")
    if not common_observations:
        raise EvaluationError("common_observations is empty: pass the common subset (e.g. the five common ones)")
    known = frozenset(observations)
    missing = [obs for obs in common_observations if obs not in known]
    if missing:
        raise EvaluationError(f"common_observations {missing} are not in observations: pass a subset")

    positive_values = frozenset({LABEL_POSITIVE, LABEL_UNCERTAIN} if uncertain_as_positive else {LABEL_POSITIVE})
    generated = _positive_sets("generated_labels", generated_labels, known, positive_values)
    reference = _positive_sets("reference_labels", reference_labels, known, positive_values)

    per_observation: list[ObservationScores] = []
    n = len(generated)
    for observation in observations:
        tp = fp = fn = 0
        for gen, ref in zip(generated, reference, strict=True):
            g, r = observation in gen, observation in ref
            tp += int(g and r)
            fp += int(g and not r)
            fn += int(r and not g)
        precision = _safe_div(tp, tp + fp)
        recall = _safe_div(tp, tp + fn)
        per_observation.append(
            ObservationScores(
                observation=observation,
                tp=tp,
                fp=fp,
                fn=fn,
                tn=n - tp - fp - fn,
                precision=precision,
                recall=recall,
                f1=_f1(precision, recall),
            )
        )
    common_set = frozenset(common_observations)
    common = [s for s in per_observation if s.observation in common_set]
    return CEMetrics(
        n_reports=n,
        uncertain_as_positive=uncertain_as_positive,
        observations=tuple(observations),
        common_observations=tuple(s.observation for s in common),
        per_observation=tuple(per_observation),
        micro=_micro(per_observation),
        macro=_macro(per_observation),
        micro_common=_micro(common),
        macro_common=_macro(common),
    )
