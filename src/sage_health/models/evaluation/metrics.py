"""Metrics for radiology report generation and medical question answering.

Pure functions over already-computed outputs; every result is a frozen dataclass with an ``as_metrics()`` method
that returns the :data:`MetricTree` stored in an evaluation run (see :mod:`.reporting`).

Report generation (the R2Gen / pycocoevalcap convention used by report-generation papers):

* :func:`tokenize_report` -- lower-case, delete ASCII punctuation, split on whitespace.
* :func:`corpus_bleu` -- pycocoevalcap's ``Bleu(4)`` (corpus-level; checked against ``sacrebleu``).
* :func:`rouge_l` -- pycocoevalcap's ``Rouge`` (LCS F-measure with beta 1.2, averaged over reports; checked
  against Google's ``rouge_score``).
* :func:`distinct_output_ratio` -- share of distinct generated reports (exposes template collapse).
* :func:`ce_metrics` -- clinical efficacy: precision / recall / F1 of CheXpert-style observation labels of the
  generated reports against those of the reference reports.

Question answering: :func:`qa_metrics` (accuracy, macro-F1, per-class scores, confusion matrix) and
:func:`qa_baselines` (majority class from the *training* labels, uniform random).

Uncertainty: :func:`bootstrap_ci` (percentile interval of a mean of per-item scores) and :func:`paired_bootstrap`
(does a candidate measurably beat production on the same items).

Zero division is defined as 0.0 everywhere (a precision with no predicted positives, a recall with no actual
positives, an F1 whose precision and recall are both 0). Metrics are fractions in [0, 1], not percentages.
"""

from __future__ import annotations

import math
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sage_health.core.errors import EvaluationError

MetricValue = int | float
"""A count (``int``, shown without decimals) or a score (``float``, shown with four decimals)."""
MetricTree = dict[str, MetricValue | dict[str, MetricValue | dict[str, MetricValue]]]
"""What an evaluation run stores: ``section -> metric -> value`` or ``section -> row -> column -> value``.

A section whose values are numbers is a two-column table (metric, value); a section whose values are dicts is a
table with one row per key (an observation, a class) and one column per inner key.
"""

# CheXpert label values produced by the labeler.
LABEL_POSITIVE = "positive"
LABEL_NEGATIVE = "negative"
LABEL_UNCERTAIN = "uncertain"
LABEL_BLANK = "blank"
CE_LABELS = frozenset({LABEL_POSITIVE, LABEL_NEGATIVE, LABEL_UNCERTAIN, LABEL_BLANK})

# pycocoevalcap's smoothing constants (bleu_scorer.py): a zero n-gram count gives a tiny, not a zero, score.
_BLEU_TINY = 1e-15
_BLEU_SMALL = 1e-9
_ROUGE_BETA = 1.2
_PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)
_BOOTSTRAP_CHUNK = 1_000_000  # resampled items held in memory at once

# ---------------------------------------------------------------------- helpers


def _safe_div(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _f1(precision: float, recall: float) -> float:
    return _safe_div(2 * precision * recall, precision + recall)


def _check_paired(name_a: str, a: Sequence[object], name_b: str, b: Sequence[object]) -> None:
    if not a:
        raise EvaluationError(f"{name_a} is empty: pass at least one item to evaluate")
    if len(a) != len(b):
        raise EvaluationError(
            f"{name_a} has {len(a)} items but {name_b} has {len(b)}: pass exactly one {name_b} entry per {name_a} entry"
        )


# ---------------------------------------------------------------------- tokenisation


def tokenize_report(text: str) -> list[str]:
    """Tokens of a report as the text metrics see them.

    Exactly: ``text.lower()``, then every ASCII punctuation character (``string.punctuation``:
    ``!"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~``) is *deleted* (not replaced by a space, as R2Gen's ``clean_report_iu``
    does: ``x-ray`` becomes ``xray``, ``1.5`` becomes ``15``), then ``str.split()`` (any run of Unicode
    whitespace). Unlike R2Gen we do not keep ``.`` as a sentence-separator token, so sentence boundaries earn
    no n-gram credit; absolute numbers are therefore slightly lower than R2Gen's on the same outputs.
    """
    return text.lower().translate(_PUNCTUATION_TABLE).split()


def normalize_report(text: str) -> str:
    """The tokens of :func:`tokenize_report` joined by single spaces (the form two reports are compared in)."""
    return " ".join(tokenize_report(text))


# ---------------------------------------------------------------------- BLEU


@dataclass(frozen=True)
class BleuScore:
    """Corpus BLEU-1..max_n (pycocoevalcap ``Bleu``) and its sufficient statistics."""

    bleu: tuple[float, ...]
    """``bleu[n - 1]`` is BLEU-n: brevity penalty times the geometric mean of the precisions of orders 1..n."""
    precisions: tuple[float, ...]
    """Clipped n-gram precision per order (matched / hypothesis n-grams, 0.0 when there are none)."""
    matches: tuple[int, ...]
    """Clipped n-gram matches per order, summed over the corpus."""
    totals: tuple[int, ...]
    """Hypothesis n-grams per order, summed over the corpus."""
    brevity_penalty: float
    hypothesis_length: int
    reference_length: int
    """Sum over items of the reference length closest to the hypothesis length (ties: the shorter one)."""


def _ngram_counts(tokens: Sequence[str], max_n: int) -> Counter[tuple[str, ...]]:
    counts: Counter[tuple[str, ...]] = Counter()
    for n in range(1, max_n + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i : i + n])] += 1
    return counts


def corpus_bleu(
    hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]], max_n: int = 4
) -> BleuScore:
    """Corpus-level BLEU exactly as pycocoevalcap's ``Bleu(n).compute_score`` (the number papers report).

    ``hypotheses[i]`` is the token list of item i; ``references[i]`` its one or more reference token lists.
    Per order k: clipped matches (each hypothesis n-gram counted at most as often as in the reference that
    contains it most often) and hypothesis n-gram counts are summed over the corpus; precision
    ``p_k = (matches_k + 1e-15) / (total_k + 1e-9)`` (pycocoevalcap's smoothing constants, so a zero count gives
    a tiny score instead of a zero or an error). Reference length per item: the one closest to the hypothesis
    length (ties: the shorter). Brevity penalty ``exp(1 - r / c)`` when ``c < r`` over the corpus totals,
    else 1. BLEU-n = BP * (p_1 * ... * p_n) ** (1 / n).

    Checked in tests against ``sacrebleu.corpus_bleu(..., tokenize='none', force=True)`` on the same
    space-joined tokens (sacrebleu scales by 100): equal to about 1e-9 relative whenever every order has at
    least one match (sacrebleu smooths zero counts differently).
    """
    _check_paired("hypotheses", hypotheses, "references", references)
    if max_n < 1:
        raise EvaluationError(f"max_n must be at least 1, got {max_n}")
    matches = [0] * max_n
    totals = [0] * max_n
    hyp_len = 0
    ref_len = 0
    for index, (hyp, refs) in enumerate(zip(hypotheses, references, strict=True)):
        if not refs:
            raise EvaluationError(f"item {index} has no reference: pass at least one reference per hypothesis")
        max_ref_counts: dict[tuple[str, ...], int] = {}
        for ref in refs:
            for ngram, count in _ngram_counts(ref, max_n).items():
                max_ref_counts[ngram] = max(max_ref_counts.get(ngram, 0), count)
        for ngram, count in _ngram_counts(hyp, max_n).items():
            matches[len(ngram) - 1] += min(count, max_ref_counts.get(ngram, 0))
        for k in range(1, max_n + 1):
            totals[k - 1] += max(0, len(hyp) - k + 1)
        hyp_len += len(hyp)
        ref_len += min((abs(len(ref) - len(hyp)), len(ref)) for ref in refs)[1]

    ratio = (hyp_len + _BLEU_TINY) / (ref_len + _BLEU_SMALL)
    brevity_penalty = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    bleu: list[float] = []
    product = 1.0
    for k in range(max_n):
        product *= (matches[k] + _BLEU_TINY) / (totals[k] + _BLEU_SMALL)
        bleu.append(brevity_penalty * product ** (1 / (k + 1)))
    return BleuScore(
        bleu=tuple(bleu),
        precisions=tuple(_safe_div(m, t) for m, t in zip(matches, totals, strict=True)),
        matches=tuple(matches),
        totals=tuple(totals),
        brevity_penalty=brevity_penalty,
        hypothesis_length=hyp_len,
        reference_length=ref_len,
    )


# ---------------------------------------------------------------------- ROUGE-L


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences.

    Bit-parallel (Allison-Dix / Hyyrö): one big-integer update per token of ``b``, so long reports stay fast.
    """
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


@dataclass(frozen=True)
class RougeLScore:
    """ROUGE-L (pycocoevalcap ``Rouge``): mean over items of the per-item LCS F-measure."""

    score: float
    per_item: tuple[float, ...]
    beta: float


def rouge_l(
    hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]], beta: float = _ROUGE_BETA
) -> RougeLScore:
    """ROUGE-L as pycocoevalcap's ``Rouge().compute_score`` (what report-generation papers report).

    Per item: for each reference, ``P = LCS / len(hypothesis)`` and ``R = LCS / len(reference)``; take the
    maximum P and the maximum R over the references (independently); score
    ``(1 + beta**2) * P * R / (R + beta**2 * P)``, 0.0 when P or R is 0 (an empty text scores 0). The corpus
    score is the plain mean over items. pycocoevalcap uses ``beta = 1.2`` (recall weighted more).

    Google's ``rouge_score`` (``RougeScorer(['rougeL'])``) computes the balanced F-measure, i.e. ``beta = 1``;
    tests check that ``rouge_l(..., beta=1.0)`` equals its mean ``fmeasure`` and that the per-item P and R
    combined with beta 1.2 give our default score (agreement to floating-point precision, 1e-12).
    """
    _check_paired("hypotheses", hypotheses, "references", references)
    if beta <= 0:
        raise EvaluationError(f"beta must be positive, got {beta}")
    beta2 = beta * beta
    scores: list[float] = []
    for index, (hyp, refs) in enumerate(zip(hypotheses, references, strict=True)):
        if not refs:
            raise EvaluationError(f"item {index} has no reference: pass at least one reference per hypothesis")
        lcs = [lcs_length(ref, hyp) for ref in refs]
        precision = max(_safe_div(n, len(hyp)) for n in lcs)
        recall = max(_safe_div(n, len(ref)) for n, ref in zip(lcs, refs, strict=True))
        if precision and recall:
            scores.append((1 + beta2) * precision * recall / (recall + beta2 * precision))
        else:
            scores.append(0.0)
    return RougeLScore(score=float(sum(scores) / len(scores)), per_item=tuple(scores), beta=beta)


# ---------------------------------------------------------------------- text metrics


def distinct_output_ratio(generated: Sequence[str]) -> float:
    """Distinct generated reports (after :func:`normalize_report`) divided by the number of reports.

    1.0: every report differs; ``1 / n``: the model wrote one template for everything (template collapse, which
    BLEU hides because templates of normal findings score well).
    """
    if not generated:
        raise EvaluationError("generated is empty: pass at least one generated report")
    return len({normalize_report(text) for text in generated}) / len(generated)


@dataclass(frozen=True)
class TextMetrics:
    """Natural-language-generation metrics of a set of generated reports (see :func:`text_metrics`)."""

    n_items: int
    bleu_1: float
    bleu_2: float
    bleu_3: float
    bleu_4: float
    rouge_l: float
    distinct_output_ratio: float
    rouge_l_per_item: tuple[float, ...]

    def as_metrics(self) -> MetricTree:
        """``{"text": {...}}`` for an evaluation run."""
        return {
            "text": {
                "bleu_1": self.bleu_1,
                "bleu_2": self.bleu_2,
                "bleu_3": self.bleu_3,
                "bleu_4": self.bleu_4,
                "rouge_l": self.rouge_l,
                "distinct_output_ratio": self.distinct_output_ratio,
                "n_items": self.n_items,
            }
        }


def text_metrics(generated: Sequence[str], references: Sequence[str | Sequence[str]]) -> TextMetrics:
    """BLEU-1..4, ROUGE-L and the distinct-output ratio of raw generated reports against raw references.

    ``references[i]`` is one reference string or a sequence of them. Both sides go through
    :func:`tokenize_report`; BLEU is :func:`corpus_bleu`, ROUGE-L is :func:`rouge_l` (beta 1.2).
    """
    _check_paired("generated", generated, "references", references)
    hyps = [tokenize_report(text) for text in generated]
    refs = [[tokenize_report(ref)] if isinstance(ref, str) else [tokenize_report(r) for r in ref] for ref in references]
    bleu = corpus_bleu(hyps, refs, max_n=4)
    rouge = rouge_l(hyps, refs)
    return TextMetrics(
        n_items=len(generated),
        bleu_1=bleu.bleu[0],
        bleu_2=bleu.bleu[1],
        bleu_3=bleu.bleu[2],
        bleu_4=bleu.bleu[3],
        rouge_l=rouge.score,
        distinct_output_ratio=distinct_output_ratio(generated),
        rouge_l_per_item=rouge.per_item,
    )


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

    @property
    def a_better(self) -> bool:
        """A measurably beats B: the whole confidence interval of mean(a - b) lies above 0."""
        return self.ci.low > 0


def _as_scores(name: str, values: Sequence[float]) -> npt.NDArray[np.float64]:
    if not values:
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
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
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
    interval is the ``(1 - confidence) / 2`` and ``1 - (1 - confidence) / 2`` quantiles (linear interpolation) of
    the resampled means. Same inputs and seed, same interval.
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
    interval excludes 0. ``p_value`` is a one-sided bootstrap fraction, not a calibrated test statistic.
    """
    _check_bootstrap_args(n_resamples, confidence)
    _check_paired("a_scores", a_scores, "b_scores", b_scores)
    diff = _as_scores("a_scores", a_scores) - _as_scores("b_scores", b_scores)
    means = _bootstrap_means(diff, n_resamples, seed)
    estimate = float(diff.mean())
    return PairedBootstrapResult(
        mean_difference=estimate,
        ci=_interval(estimate, means, confidence, n_resamples, seed),
        p_value=float(np.mean(means <= 0)),
        n_items=len(diff),
    )
