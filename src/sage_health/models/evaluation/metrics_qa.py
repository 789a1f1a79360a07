"""Question-answering metrics: accuracy, macro-F1, per-class scores and the confusion matrix (:func:`qa_metrics`),
and the majority / uniform-random baselines (:func:`qa_baselines`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from sage_health.core.errors import EvaluationError
from sage_health.models.evaluation.metrics_common import MetricTree, _check_paired, _f1, _safe_div

# ---------------------------------------------------------------------- question answering


@dataclass(frozen=True)
class ClassScores:
    """One answer class: precision, recall, F1, how often it is the reference (support) and the prediction."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int
    predicted: int


@dataclass(frozen=True)
class QAMetrics:
    """Accuracy and per-class scores of predicted answers (see :func:`qa_metrics`)."""

    n_items: int
    labels: tuple[str, ...]
    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_class: tuple[ClassScores, ...]
    confusion: tuple[tuple[int, ...], ...]
    """``confusion[i][j]``: items whose reference is ``labels[i]`` and prediction ``labels[j]``."""
    invalid_predictions: int
    """Predictions outside ``labels`` (unparseable answers): wrong, and in no column of ``confusion``."""

    def as_metrics(self) -> MetricTree:
        """``{"qa": {...}, "qa_per_class": {label: {...}}, "qa_confusion": {reference: {prediction: count}}}``."""
        return {
            "qa": {
                "accuracy": self.accuracy,
                "macro_precision": self.macro_precision,
                "macro_recall": self.macro_recall,
                "macro_f1": self.macro_f1,
                "invalid_predictions": self.invalid_predictions,
                "n_items": self.n_items,
            },
            "qa_per_class": {
                c.label: {
                    "precision": c.precision,
                    "recall": c.recall,
                    "f1": c.f1,
                    "support": c.support,
                    "predicted": c.predicted,
                }
                for c in self.per_class
            },
            "qa_confusion": {
                ref: dict(zip(self.labels, row, strict=True))
                for ref, row in zip(self.labels, self.confusion, strict=True)
            },
        }


def _check_labels(labels: Sequence[str]) -> None:
    if not labels:
        raise EvaluationError("labels is empty: pass the answer label set (e.g. A/B/C/D or yes/no/maybe)")
    if len(set(labels)) != len(labels):
        raise EvaluationError("labels has duplicates: pass each answer label once")


def _check_references(name: str, references: Sequence[str], labels: Sequence[str]) -> None:
    allowed = set(labels)
    for index, ref in enumerate(references):
        if ref not in allowed:
            raise EvaluationError(f"{name}[{index}] is {ref!r}, not one of the labels {list(labels)}")


def qa_metrics(predictions: Sequence[str], references: Sequence[str], labels: Sequence[str]) -> QAMetrics:
    """Accuracy, macro-F1, per-class precision / recall / F1 and the confusion matrix of answer labels.

    Labels are compared as exact strings (parse and normalise the model's answer first). Every reference must be
    in ``labels``; a prediction outside ``labels`` counts as wrong (a false negative of its reference class, a
    false positive of none). Macro averages are unweighted means over all of ``labels`` -- a class that is
    never the reference nor predicted scores 0.0 -- as ``sklearn.metrics.f1_score(labels=labels,
    average='macro', zero_division=0)``.
    """
    _check_paired("predictions", predictions, "references", references)
    _check_labels(labels)
    _check_references("references", references, labels)
    index = {label: i for i, label in enumerate(labels)}
    k = len(labels)
    confusion = [[0] * k for _ in range(k)]
    invalid = 0
    for pred, ref in zip(predictions, references, strict=True):
        if pred in index:
            confusion[index[ref]][index[pred]] += 1
        else:
            invalid += 1
    support = Counter(references)
    per_class: list[ClassScores] = []
    for i, label in enumerate(labels):
        tp = confusion[i][i]
        predicted = sum(row[i] for row in confusion)
        precision = _safe_div(tp, predicted)
        recall = _safe_div(tp, support[label])
        per_class.append(
            ClassScores(
                label=label,
                precision=precision,
                recall=recall,
                f1=_f1(precision, recall),
                support=support[label],
                predicted=predicted,
            )
        )
    correct = sum(confusion[i][i] for i in range(k))
    return QAMetrics(
        n_items=len(predictions),
        labels=tuple(labels),
        accuracy=correct / len(predictions),
        macro_precision=sum(c.precision for c in per_class) / k,
        macro_recall=sum(c.recall for c in per_class) / k,
        macro_f1=sum(c.f1 for c in per_class) / k,
        per_class=tuple(per_class),
        confusion=tuple(tuple(row) for row in confusion),
        invalid_predictions=invalid,
    )


@dataclass(frozen=True)
class QABaselines:
    """Trivial baselines a QA model must beat (see :func:`qa_baselines`)."""

    majority_label: str
    """Most frequent label in the *training* labels (ties: the first in ``labels`` order)."""
    majority_accuracy: float
    majority_macro_f1: float
    random_accuracy: float
    """Expected accuracy of a uniform random guess: ``1 / len(labels)``."""
    random_macro_f1: float
    """Macro-F1 of the expected confusion matrix of a uniform random guess on the test references."""
    n_train: int

    def as_metrics(self) -> MetricTree:
        """``{"qa_baselines": {...}}`` (the majority label itself is in the run's config, not here)."""
        return {
            "qa_baselines": {
                "majority_accuracy": self.majority_accuracy,
                "majority_macro_f1": self.majority_macro_f1,
                "random_accuracy": self.random_accuracy,
                "random_macro_f1": self.random_macro_f1,
                "n_train": self.n_train,
            }
        }


def qa_baselines(test_references: Sequence[str], train_labels: Sequence[str], labels: Sequence[str]) -> QABaselines:
    """Majority-class and uniform-random baselines on the test references.

    The majority class comes from ``train_labels`` only -- never from the test references, which would leak the
    test distribution into the baseline. Uniform random: expected accuracy ``1 / K`` for ``K = len(labels)``;
    its macro-F1 is that of the expected confusion matrix (class c with test support ``s_c`` of ``N``:
    ``TP = s_c / K``, predicted ``N / K``, so ``P = s_c / N``, ``R = 1 / K``).
    """
    _check_labels(labels)
    if not test_references:
        raise EvaluationError("test_references is empty: pass the test answer labels")
    if not train_labels:
        raise EvaluationError("train_labels is empty: the majority baseline needs the training labels")
    _check_references("test_references", test_references, labels)
    _check_references("train_labels", train_labels, labels)
    train_counts = Counter(train_labels)
    majority = max(labels, key=lambda label: train_counts[label])  # max keeps the first of equal counts
    majority_scores = qa_metrics([majority] * len(test_references), test_references, labels)
    k = len(labels)
    n = len(test_references)
    test_counts = Counter(test_references)
    random_f1 = sum(_f1(test_counts[label] / n, 1 / k) for label in labels) / k
    return QABaselines(
        majority_label=majority,
        majority_accuracy=majority_scores.accuracy,
        majority_macro_f1=majority_scores.macro_f1,
        random_accuracy=1 / k,
        random_macro_f1=random_f1,
        n_train=len(train_labels),
    )
