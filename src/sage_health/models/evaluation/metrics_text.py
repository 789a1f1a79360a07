"""Text metrics of report generation (the R2Gen / pycocoevalcap convention): tokenisation, corpus BLEU, ROUGE-L
and the distinct-output ratio, combined by :func:`text_metrics`.
"""

from __future__ import annotations

import math
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from sage_health.core.errors import EvaluationError
from sage_health.models.evaluation.metrics_common import MetricTree, _check_paired, _safe_div

# pycocoevalcap's smoothing constants (bleu_scorer.py): a zero n-gram count gives a tiny, not a zero, score.
_BLEU_TINY = 1e-15
_BLEU_SMALL = 1e-9
_ROUGE_BETA = 1.2
_PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)

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
