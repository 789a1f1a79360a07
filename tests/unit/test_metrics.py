"""Evaluation metrics: hand-computed figures, and cross-checks of BLEU against sacrebleu and of ROUGE-L against
Google's rouge_score on the same tokens."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer
from sacrebleu import BLEU

from sage_health.core.errors import EvaluationError
from sage_health.models.evaluation.metrics import (
    bootstrap_ci,
    ce_metrics,
    corpus_bleu,
    distinct_output_ratio,
    lcs_length,
    normalize_report,
    paired_bootstrap,
    qa_baselines,
    qa_metrics,
    rouge_l,
    text_metrics,
    tokenize_report,
)

# ---------------------------------------------------------------------- tokenisation


def test_tokenize_lowercases_deletes_punctuation_and_splits_on_whitespace() -> None:
    text = "Heart size is NORMAL.  No pleural effusion,\tpneumothorax or x-ray (1.5 cm) findings!\n"
    assert tokenize_report(text) == [
        "heart",
        "size",
        "is",
        "normal",
        "no",
        "pleural",
        "effusion",
        "pneumothorax",
        "or",
        "xray",
        "15",
        "cm",
        "findings",
    ]
    assert normalize_report("  The lungs... are CLEAR  ") == "the lungs are clear"
    assert tokenize_report(" .,; ") == []


# ---------------------------------------------------------------------- BLEU


def _toks(*texts: str) -> list[list[str]]:
    return [t.split() for t in texts]


# Two items. Item 1: hypothesis "no acute cardiopulmonary abnormality" vs "no acute cardiopulmonary process":
# 1-grams 3/4, 2-grams 2/3, 3-grams 1/2, 4-grams 0/1. Item 2: "the lungs are clear" vs
# "the lungs are clear bilaterally": 4/4, 3/3, 2/2, 1/1. Corpus: 7/8, 5/6, 3/4, 1/2; lengths c = 8, r = 9.
HYPS = _toks("no acute cardiopulmonary abnormality", "the lungs are clear")
REFS = [_toks("no acute cardiopulmonary process"), _toks("the lungs are clear bilaterally")]


def test_corpus_bleu_hand_computed() -> None:
    score = corpus_bleu(HYPS, REFS)
    bp = math.exp(1 - 9 / 8)
    assert score.matches == (7, 5, 3, 1)
    assert score.totals == (8, 6, 4, 2)
    assert score.precisions == (7 / 8, 5 / 6, 3 / 4, 1 / 2)
    assert (score.hypothesis_length, score.reference_length) == (8, 9)
    assert score.brevity_penalty == pytest.approx(bp, rel=1e-9)
    # pycocoevalcap's 1e-15 / 1e-9 smoothing constants move the result by ~1e-10 relative
    assert score.bleu[0] == pytest.approx(bp * 7 / 8, rel=1e-9)
    assert score.bleu[1] == pytest.approx(bp * (7 / 8 * 5 / 6) ** (1 / 2), rel=1e-9)
    assert score.bleu[2] == pytest.approx(bp * (7 / 8 * 5 / 6 * 3 / 4) ** (1 / 3), rel=1e-9)
    assert score.bleu[3] == pytest.approx(bp * (105 / 384) ** (1 / 4), rel=1e-9)
    assert score.bleu[3] == pytest.approx(0.6382, abs=1e-4)


def test_corpus_bleu_is_not_the_mean_of_sentence_scores() -> None:
    # item 2 alone has BLEU-1 = exp(1 - 5/4); item 1 alone exp(0) * 3/4; the corpus score pools the counts
    first = corpus_bleu(HYPS[:1], REFS[:1]).bleu[0]
    second = corpus_bleu(HYPS[1:], REFS[1:]).bleu[0]
    assert first == pytest.approx(3 / 4, rel=1e-9)
    assert second == pytest.approx(math.exp(1 - 5 / 4), rel=1e-9)
    assert corpus_bleu(HYPS, REFS).bleu[0] != pytest.approx((first + second) / 2, rel=1e-3)


def test_corpus_bleu_clips_repeated_ngrams() -> None:
    score = corpus_bleu(_toks("the the the the"), [_toks("the heart")], max_n=1)
    assert score.matches == (1,)
    assert score.precisions == (1 / 4,)
    assert score.brevity_penalty == 1.0


def test_corpus_bleu_closest_reference_length_ties_take_the_shorter() -> None:
    hyp = _toks("a b c d")
    assert corpus_bleu(hyp, [_toks("a b c", "a b c d e")]).reference_length == 3
    assert corpus_bleu(hyp, [_toks("a b c d e", "a b c d e f g")]).reference_length == 5
    # the closest reference is longer than the hypothesis: brevity penalty exp(1 - 5/4)
    assert corpus_bleu(hyp, [_toks("a b c d e f g", "a b c d e")]).brevity_penalty == pytest.approx(
        math.exp(1 - 5 / 4), rel=1e-9
    )


def test_corpus_bleu_without_matches_is_tiny_not_an_error() -> None:
    score = corpus_bleu(_toks("x y z"), [_toks("a b c")])
    assert score.matches == (0, 0, 0, 0)
    assert all(0.0 <= b < 1e-9 for b in score.bleu)
    assert corpus_bleu([[]], [_toks("a b")]).bleu == (0.0, 0.0, 0.0, 0.0)


def _random_corpus(seed: int, n: int, refs_per_item: int) -> tuple[list[list[str]], list[list[list[str]]]]:
    rng = random.Random(seed)
    vocab = [
        "the",
        "heart",
        "size",
        "is",
        "normal",
        "lungs",
        "are",
        "clear",
        "no",
        "pleural",
        "effusion",
        "or",
        "pneumothorax",
        "mild",
        "cardiomegaly",
    ]
    phrases = ["the heart size is normal", "the lungs are clear", "no pleural effusion or pneumothorax"]

    def report() -> list[str]:
        words: list[str] = []
        for _ in range(rng.randint(1, 4)):
            words += rng.choice(phrases).split() if rng.random() < 0.6 else rng.choices(vocab, k=rng.randint(1, 6))
        return words

    return [report() for _ in range(n)], [[report() for _ in range(refs_per_item)] for _ in range(n)]


@pytest.mark.parametrize(("seed", "refs_per_item"), [(0, 1), (1, 1), (2, 2), (3, 3)])
def test_corpus_bleu_matches_sacrebleu(seed: int, refs_per_item: int) -> None:
    hyps, refs = _random_corpus(seed, 60, refs_per_item)
    ours = corpus_bleu(hyps, refs)
    assert all(m > 0 for m in ours.matches)  # sacrebleu smooths zero counts differently; keep every order matched
    hyp_text = [" ".join(h) for h in hyps]
    ref_streams = [[" ".join(r[k]) for r in refs] for k in range(refs_per_item)]
    for n in range(1, 5):
        theirs = BLEU(tokenize="none", force=True, max_ngram_order=n).corpus_score(hyp_text, ref_streams)
        assert theirs.sys_len == ours.hypothesis_length
        assert theirs.ref_len == ours.reference_length
        # observed relative difference ~2e-12 (pycocoevalcap's smoothing constants); 1e-9 is the asserted bound
        assert ours.bleu[n - 1] == pytest.approx(theirs.score / 100, rel=1e-9)


def test_corpus_bleu_4_matches_sacrebleu_corpus_bleu_on_tokenised_reports() -> None:
    generated = ["Heart size is normal. The lungs are clear.", "No pleural effusion or pneumothorax."] * 3
    references = ["The heart size is normal. Lungs are clear.", "No effusion or pneumothorax seen."] * 3
    metrics = text_metrics(generated, references)
    theirs = sacrebleu.corpus_bleu(
        [normalize_report(g) for g in generated],
        [[normalize_report(r) for r in references]],
        tokenize="none",
        force=True,
    )
    assert metrics.bleu_4 == pytest.approx(theirs.score / 100, rel=1e-9)


# ---------------------------------------------------------------------- ROUGE-L


def _lcs_dp(a: Sequence[str], b: Sequence[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a, 1):
        for j, y in enumerate(b, 1):
            table[i][j] = table[i - 1][j - 1] + 1 if x == y else max(table[i - 1][j], table[i][j - 1])
    return table[len(a)][len(b)]


def test_lcs_length_known_pair_and_against_dynamic_programming() -> None:
    assert (
        lcs_length(
            ["heart", "size", "is", "normal", "lungs", "are", "clear"], ["the", "heart", "is", "normal", "and", "clear"]
        )
        == 4
    )
    assert lcs_length([], ["a"]) == 0
    rng = random.Random(7)
    for _ in range(300):
        a = rng.choices("abcde", k=rng.randint(0, 70))
        b = rng.choices("abcde", k=rng.randint(0, 70))
        assert lcs_length(a, b) == _lcs_dp(a, b)


def test_rouge_l_hand_computed() -> None:
    # LCS("heart is normal clear") = 4; P = 4/6, R = 4/7
    hyp = [["the", "heart", "is", "normal", "and", "clear"]]
    ref = [[["heart", "size", "is", "normal", "lungs", "are", "clear"]]]
    p, r = 4 / 6, 4 / 7
    assert rouge_l(hyp, ref, beta=1.0).score == pytest.approx(8 / 13, rel=1e-12)
    assert rouge_l(hyp, ref).score == pytest.approx((1 + 1.44) * p * r / (r + 1.44 * p), rel=1e-12)
    assert rouge_l(hyp, ref).score == pytest.approx(0.6070, abs=1e-4)


def test_rouge_l_multi_reference_takes_max_precision_and_max_recall_separately() -> None:
    hyp = [["a", "b", "c", "d"]]
    # ref 1: LCS 2 of 2 tokens (P 2/4, R 1); ref 2: LCS 3 of 8 tokens (P 3/4, R 3/8); pycocoevalcap: P 3/4, R 1
    refs = [[["a", "b"], ["a", "b", "c", "x", "x", "x", "x", "x"]]]
    assert rouge_l(hyp, refs, beta=1.0).score == pytest.approx(2 * 0.75 / 1.75, rel=1e-12)


def test_rouge_l_empty_text_scores_zero_and_mean_is_over_items() -> None:
    score = rouge_l([[], ["a"]], [[["a"]], [["a"]]])
    assert score.per_item == (0.0, 1.0)
    assert score.score == 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rouge_l_matches_rouge_score(seed: int) -> None:
    hyps, refs = _random_corpus(seed, 60, 1)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    theirs = [scorer.score(" ".join(r[0]), " ".join(h))["rougeL"] for h, r in zip(hyps, refs, strict=True)]
    # beta = 1: rouge_score's F-measure, item by item (observed: equal to the last bit or ~1e-16)
    ours_f1 = rouge_l(hyps, refs, beta=1.0)
    for mine, other in zip(ours_f1.per_item, theirs, strict=True):
        assert mine == pytest.approx(other.fmeasure, abs=1e-12)
    assert ours_f1.score == pytest.approx(float(np.mean([t.fmeasure for t in theirs])), abs=1e-12)
    # beta = 1.2 (pycocoevalcap, our default) from rouge_score's LCS precision and recall
    b2 = 1.2**2
    expected = [
        (1 + b2) * t.precision * t.recall / (t.recall + b2 * t.precision) if t.precision and t.recall else 0.0
        for t in theirs
    ]
    assert rouge_l(hyps, refs).per_item == pytest.approx(expected, abs=1e-12)
    # and the two betas really differ on this corpus
    assert abs(rouge_l(hyps, refs).score - ours_f1.score) > 1e-4


# ---------------------------------------------------------------------- text metrics, distinct outputs


def test_text_metrics_tokenises_raw_reports_like_the_token_functions() -> None:
    generated = ["No acute cardiopulmonary abnormality.", "The lungs are CLEAR."]
    references = ["No acute, cardiopulmonary process.", ["The lungs are clear bilaterally.", "Clear lungs."]]
    metrics = text_metrics(generated, references)
    by_tokens = corpus_bleu(HYPS, [REFS[0], [*REFS[1], ["clear", "lungs"]]])
    assert metrics.n_items == 2
    assert (metrics.bleu_1, metrics.bleu_2, metrics.bleu_3, metrics.bleu_4) == by_tokens.bleu
    # closest reference length for item 2 is now 5 vs 2: |4-5| = 1 < |4-2| = 2, so the numbers are unchanged
    assert metrics.bleu_4 == pytest.approx(math.exp(1 - 9 / 8) * (105 / 384) ** 0.25, rel=1e-9)
    assert metrics.distinct_output_ratio == 1.0
    assert metrics.as_metrics()["text"] == {
        "bleu_1": metrics.bleu_1,
        "bleu_2": metrics.bleu_2,
        "bleu_3": metrics.bleu_3,
        "bleu_4": metrics.bleu_4,
        "rouge_l": metrics.rouge_l,
        "distinct_output_ratio": 1.0,
        "n_items": 2,
    }


def test_distinct_output_ratio_exposes_template_collapse() -> None:
    assert distinct_output_ratio(["No acute findings.", "no acute  findings", "Cardiomegaly."]) == 2 / 3
    assert distinct_output_ratio(["The heart is normal."] * 10) == 0.1
    assert distinct_output_ratio(["a", "b"]) == 1.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: text_metrics([], []), "generated is empty"),
        (lambda: text_metrics(["a", "b"], ["a"]), "generated has 2 items but references has 1"),
        (lambda: corpus_bleu([["a"]], [[]]), "item 0 has no reference"),
        (lambda: rouge_l([["a"]], [[["a"]]], beta=0), "beta must be positive"),
        (lambda: distinct_output_ratio([]), "generated is empty"),
    ],
)
def test_text_metric_input_errors(call: Callable[[], object], message: str) -> None:
    with pytest.raises(EvaluationError, match=message):
        call()


# ---------------------------------------------------------------------- clinical efficacy

OBSERVATIONS = [
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
    "No Finding",
]
COMMON_FIVE = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]

GENERATED: list[Mapping[str, str]] = [
    {"Cardiomegaly": "positive", "Edema": "uncertain", "Pleural Effusion": "negative"},
    {"No Finding": "positive"},
    {"Cardiomegaly": "positive", "Pleural Effusion": "positive", "Support Devices": "positive"},
]
REFERENCE: list[Mapping[str, str]] = [
    {"Cardiomegaly": "positive", "Edema": "positive", "Pleural Effusion": "positive"},
    {"No Finding": "positive", "Cardiomegaly": "blank"},
    {"Cardiomegaly": "negative", "Pleural Effusion": "positive", "Support Devices": "uncertain"},
]


def test_ce_metrics_three_reports_uncertain_is_negative() -> None:
    ce = ce_metrics(GENERATED, REFERENCE, OBSERVATIONS, COMMON_FIVE)
    counts = {s.observation: (s.tp, s.fp, s.fn, s.tn) for s in ce.per_observation}
    assert counts["Cardiomegaly"] == (1, 1, 0, 1)
    assert counts["Edema"] == (0, 0, 1, 2)  # generated 'uncertain' is not positive
    assert counts["Pleural Effusion"] == (1, 0, 1, 1)
    assert counts["No Finding"] == (1, 0, 0, 2)
    assert counts["Support Devices"] == (0, 1, 0, 2)  # reference 'uncertain' is not positive
    assert counts["Fracture"] == (0, 0, 0, 3)
    assert [s.observation for s in ce.per_observation] == OBSERVATIONS
    cardio = ce.scores_for("Cardiomegaly")
    assert (cardio.precision, cardio.recall, cardio.f1, cardio.support) == pytest.approx((0.5, 1.0, 2 / 3, 1))
    assert ce.scores_for("Fracture").f1 == 0.0  # zero division is 0.0
    # micro over 14: TP 3, FP 2, FN 2
    assert (ce.micro.precision, ce.micro.recall, ce.micro.f1) == pytest.approx((3 / 5, 3 / 5, 3 / 5))
    # macro over 14: F1s 2/3, 0, 2/3, 1, 0 and nine zeros
    assert ce.macro.f1 == pytest.approx((2 / 3 + 2 / 3 + 1) / 14)
    assert ce.macro.precision == pytest.approx(2.5 / 14)
    assert ce.macro.recall == pytest.approx(2.5 / 14)
    # common five: TP 2, FP 1, FN 2
    assert ce.micro_common.precision == pytest.approx(2 / 3)
    assert ce.micro_common.recall == pytest.approx(1 / 2)
    assert ce.micro_common.f1 == pytest.approx(4 / 7)
    assert ce.macro_common.f1 == pytest.approx(4 / 15)
    assert ce.n_reports == 3


def test_ce_metrics_uncertain_as_positive() -> None:
    ce = ce_metrics(GENERATED, REFERENCE, OBSERVATIONS, COMMON_FIVE, uncertain_as_positive=True)
    assert (ce.scores_for("Edema").tp, ce.scores_for("Support Devices").tp) == (1, 1)
    # TP 5, FP 1 (Cardiomegaly), FN 1 (Pleural Effusion)
    assert (ce.micro.precision, ce.micro.recall) == pytest.approx((5 / 6, 5 / 6))
    assert ce.macro.f1 == pytest.approx((2 / 3 + 1 + 2 / 3 + 1 + 1) / 14)
    assert ce.micro_common.f1 == pytest.approx(2 * (3 / 4) * (3 / 4) / (3 / 4 + 3 / 4))


def test_ce_metrics_as_metrics_tree() -> None:
    tree = ce_metrics(GENERATED, REFERENCE, OBSERVATIONS, COMMON_FIVE).as_metrics()
    summary = tree["ce"]
    assert isinstance(summary, dict)
    assert summary["micro_f1"] == pytest.approx(0.6)
    assert summary["common_macro_f1"] == pytest.approx(4 / 15)
    assert summary["n_reports"] == 3
    per_observation = tree["ce_per_observation"]
    assert isinstance(per_observation, dict)
    assert per_observation["Cardiomegaly"] == {
        "precision": 0.5,
        "recall": 1.0,
        "f1": pytest.approx(2 / 3),
        "tp": 1,
        "fp": 1,
        "fn": 0,
        "tn": 1,
    }


@pytest.mark.parametrize(
    ("generated", "reference", "observations", "common", "message"),
    [
        ([], [], OBSERVATIONS, COMMON_FIVE, "generated_labels is empty"),
        (GENERATED, REFERENCE[:2], OBSERVATIONS, COMMON_FIVE, "generated_labels has 3 items but reference_labels"),
        ([{"Edema": "present"}], [{}], OBSERVATIONS, COMMON_FIVE, r"generated_labels\[0\]\['Edema'\] is 'present'"),
        ([{}], [{"Oedema": "positive"}], OBSERVATIONS, COMMON_FIVE, r"reference_labels\[0\] has unknown observations"),
        ([{}], [{}], OBSERVATIONS, ["Edema", "Mass"], r"common_observations \['Mass'\] are not in observations"),
        ([{}], [{}], [], COMMON_FIVE, "observations is empty"),
        ([{}], [{}], ["Edema", "Edema"], ["Edema"], "duplicate"),
    ],
)
def test_ce_metrics_input_errors(
    generated: list[Mapping[str, str]],
    reference: list[Mapping[str, str]],
    observations: list[str],
    common: list[str],
    message: str,
) -> None:
    with pytest.raises(EvaluationError, match=message):
        ce_metrics(generated, reference, observations, common)


# ---------------------------------------------------------------------- question answering


def test_qa_metrics_hand_computed_with_an_invalid_prediction() -> None:
    references = ["A", "A", "B", "C", "D", "A"]
    predictions = ["A", "B", "B", "C", "?", "C"]
    qa = qa_metrics(predictions, references, ["A", "B", "C", "D"])
    assert qa.accuracy == 0.5
    per_class = {c.label: (c.precision, c.recall, c.f1, c.support, c.predicted) for c in qa.per_class}
    assert per_class["A"] == pytest.approx((1.0, 1 / 3, 0.5, 3, 1))
    assert per_class["B"] == pytest.approx((0.5, 1.0, 2 / 3, 1, 2))
    assert per_class["C"] == pytest.approx((0.5, 1.0, 2 / 3, 1, 2))
    assert per_class["D"] == (0.0, 0.0, 0.0, 1, 0)
    assert qa.macro_f1 == pytest.approx(11 / 24)
    assert qa.macro_precision == pytest.approx(2 / 4)
    assert qa.macro_recall == pytest.approx((1 / 3 + 1 + 1) / 4)
    assert qa.confusion == ((1, 1, 1, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 0))
    assert qa.invalid_predictions == 1
    tree = qa.as_metrics()
    assert tree["qa"] == {
        "accuracy": 0.5,
        "macro_precision": 0.5,
        "macro_recall": pytest.approx(7 / 12),
        "macro_f1": pytest.approx(11 / 24),
        "invalid_predictions": 1,
        "n_items": 6,
    }
    assert tree["qa_confusion"] == {
        "A": {"A": 1, "B": 1, "C": 1, "D": 0},
        "B": {"A": 0, "B": 1, "C": 0, "D": 0},
        "C": {"A": 0, "B": 0, "C": 1, "D": 0},
        "D": {"A": 0, "B": 0, "C": 0, "D": 0},
    }


def test_qa_metrics_yes_no_maybe_perfect_and_label_never_seen() -> None:
    qa = qa_metrics(["yes", "no"], ["yes", "no"], ["yes", "no", "maybe"])
    assert qa.accuracy == 1.0
    # 'maybe' is neither a reference nor predicted: F1 0.0 and it still counts in the macro mean
    assert qa.macro_f1 == pytest.approx(2 / 3)


def test_qa_baselines_majority_comes_from_train_labels_only() -> None:
    train = ["yes"] * 5 + ["no"] * 3 + ["maybe"] * 2
    test = ["no", "no", "yes", "maybe"]  # the test majority would be 'no' (accuracy 0.5)
    base = qa_baselines(test, train, ["yes", "no", "maybe"])
    assert base.majority_label == "yes"
    assert base.majority_accuracy == 0.25
    assert base.majority_macro_f1 == pytest.approx(0.4 / 3)  # yes: P 1/4, R 1, F1 0.4
    assert base.random_accuracy == pytest.approx(1 / 3)
    # expected confusion of a uniform guess: F1(yes) = F1(maybe) = 2/7, F1(no) = 2/5
    assert base.random_macro_f1 == pytest.approx(34 / 105)
    assert base.n_train == 10
    assert qa_baselines(["A"], ["B"], ["A", "B", "C", "D"]).random_accuracy == 0.25


def test_qa_baselines_ties_take_the_first_label() -> None:
    assert qa_baselines(["yes"], ["no", "yes"], ["yes", "no", "maybe"]).majority_label == "yes"
    assert qa_baselines(["yes"], ["no", "yes"], ["no", "yes", "maybe"]).majority_label == "no"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: qa_metrics(["A"], ["E"], ["A", "B"]), r"references\[0\] is 'E', not one of the labels"),
        (lambda: qa_metrics(["A"], ["A", "B"], ["A", "B"]), "predictions has 1 items but references has 2"),
        (lambda: qa_metrics(["A"], ["A"], []), "labels is empty"),
        (lambda: qa_metrics(["A"], ["A"], ["A", "A"]), "labels has duplicates"),
        (lambda: qa_baselines(["A"], [], ["A"]), "train_labels is empty"),
        (lambda: qa_baselines(["A"], ["Z"], ["A"]), r"train_labels\[0\] is 'Z'"),
    ],
)
def test_qa_input_errors(call: Callable[[], object], message: str) -> None:
    with pytest.raises(EvaluationError, match=message):
        call()


# ---------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_follows_the_documented_procedure() -> None:
    values = [0.2, 0.9, 0.4, 0.7, 0.1, 0.5, 0.8]
    ci = bootstrap_ci(values, seed=11, n_resamples=500)
    rng = np.random.default_rng(11)
    means = np.asarray(values)[rng.integers(0, len(values), size=(500, len(values)))].mean(axis=1)
    assert ci.estimate == pytest.approx(sum(values) / len(values))
    assert (ci.low, ci.high) == (float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975)))
    assert (ci.confidence, ci.n_resamples, ci.seed) == (0.95, 500, 11)


def test_bootstrap_ci_is_seeded_and_has_the_binomial_width() -> None:
    values = [1.0] * 280 + [0.0] * 120  # accuracy 0.7 on 400 items
    ci = bootstrap_ci(values, seed=0, n_resamples=2000)
    assert ci == bootstrap_ci(values, seed=0, n_resamples=2000)
    assert ci != bootstrap_ci(values, seed=1, n_resamples=2000)
    assert ci.estimate == 0.7
    assert ci.low < 0.7 < ci.high
    normal_width = 2 * 1.96 * math.sqrt(0.7 * 0.3 / 400)  # 0.0898
    assert ci.high - ci.low == pytest.approx(normal_width, abs=0.01)
    constant = bootstrap_ci([0.3] * 5, seed=0)
    assert (constant.low, constant.high) == pytest.approx((0.3, 0.3))


def test_paired_bootstrap() -> None:
    base = [0.1, 0.5, 0.3, 0.9, 0.4, 0.6, 0.2, 0.8]
    better = paired_bootstrap([b + 0.1 for b in base], base, seed=3)
    assert better.mean_difference == pytest.approx(0.1)
    assert (better.ci.low, better.ci.high) == pytest.approx((0.1, 0.1))
    assert better.p_value == 0.0
    assert better.a_better
    same = paired_bootstrap(base, base, seed=3)
    assert (same.mean_difference, same.p_value, same.a_better) == (0.0, 1.0, False)
    # wins and losses cancel out: the interval straddles 0, about half the resamples favour each side
    noisy = paired_bootstrap([1.0, 0.0] * 50, [0.0, 1.0] * 50, seed=3, n_resamples=2000)
    assert noisy.mean_difference == 0.0
    assert noisy.ci.low < 0 < noisy.ci.high
    assert 0.4 < noisy.p_value < 0.7
    assert not noisy.a_better
    assert noisy.n_items == 100


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: bootstrap_ci([], seed=0), "values is empty"),
        (lambda: bootstrap_ci([1.0, float("nan")], seed=0), "NaN or infinite"),
        (lambda: bootstrap_ci([1.0], seed=0, confidence=1.0), "confidence must be strictly between 0 and 1"),
        (lambda: bootstrap_ci([1.0], seed=0, n_resamples=0), "n_resamples must be at least 1"),
        (lambda: paired_bootstrap([1.0], [1.0, 2.0], seed=0), "a_scores has 1 items but b_scores has 2"),
    ],
)
def test_bootstrap_input_errors(call: Callable[[], object], message: str) -> None:
    with pytest.raises(EvaluationError, match=message):
        call()
