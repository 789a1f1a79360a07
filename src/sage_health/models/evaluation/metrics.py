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

The metrics live in :mod:`.metrics_text`, :mod:`.metrics_ce`, :mod:`.metrics_qa` and :mod:`.metrics_bootstrap`
(shared pieces in :mod:`.metrics_common`); this module is their single import path.

Zero division is defined as 0.0 everywhere (a precision with no predicted positives, a recall with no actual
positives, an F1 whose precision and recall are both 0). Metrics are fractions in [0, 1], not percentages.
"""

from sage_health.models.evaluation.metrics_bootstrap import (
    ConfidenceInterval,
    PairedBootstrapResult,
    bootstrap_ci,
    paired_bootstrap,
)
from sage_health.models.evaluation.metrics_ce import (
    CE_LABELS,
    LABEL_BLANK,
    LABEL_NEGATIVE,
    LABEL_POSITIVE,
    LABEL_UNCERTAIN,
    BinaryScores,
    CEMetrics,
    ObservationScores,
    ce_metrics,
)
from sage_health.models.evaluation.metrics_common import MetricTree, MetricValue
from sage_health.models.evaluation.metrics_qa import ClassScores, QABaselines, QAMetrics, qa_baselines, qa_metrics
from sage_health.models.evaluation.metrics_text import (
    BleuScore,
    RougeLScore,
    TextMetrics,
    corpus_bleu,
    distinct_output_ratio,
    lcs_length,
    normalize_report,
    rouge_l,
    text_metrics,
    tokenize_report,
)

__all__ = [
    "CE_LABELS",
    "LABEL_BLANK",
    "LABEL_NEGATIVE",
    "LABEL_POSITIVE",
    "LABEL_UNCERTAIN",
    "BinaryScores",
    "BleuScore",
    "CEMetrics",
    "ClassScores",
    "ConfidenceInterval",
    "MetricTree",
    "MetricValue",
    "ObservationScores",
    "PairedBootstrapResult",
    "QABaselines",
    "QAMetrics",
    "RougeLScore",
    "TextMetrics",
    "bootstrap_ci",
    "ce_metrics",
    "corpus_bleu",
    "distinct_output_ratio",
    "lcs_length",
    "normalize_report",
    "paired_bootstrap",
    "qa_baselines",
    "qa_metrics",
    "rouge_l",
    "text_metrics",
    "tokenize_report",
]
