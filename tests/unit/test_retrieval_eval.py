"""Retrieval evaluation: metric functions on constructed rankings and the input checks (the embedding cache and a
small real evaluation on the shared data are integration tests: tests/integration/test_retrieval_eval_real.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sage_health.core.errors import DataError, IngestionError
from sage_health.data.retrieval_eval import (
    evaluate_retrieval,
    first_relevant_rank,
    mean_reciprocal_rank,
    ndcg_at_k,
    ranking_metrics,
    recall_at_k,
)

# ---------------------------------------------------------------------- metrics

# four queries: relevant record at rank 1, rank 3, rank 10, and not retrieved
RANKED = [
    ["a", "b", "c"],
    ["x", "y", "a", "z"],
    [f"d{i}" for i in range(9)] + ["a"],
    ["p", "q", "r"],
]
RELEVANT = ["a", "a", "a", "a"]


def test_first_relevant_rank() -> None:
    assert [first_relevant_rank(r, "a") for r in RANKED] == [1, 3, 10, None]


def test_ranking_metrics_exact_values() -> None:
    m = ranking_metrics(RANKED, RELEVANT, (1, 5, 10))
    assert m.n_queries == 4
    assert m.found == 3
    assert m.recall == {1: 0.25, 5: 0.5, 10: 0.75}
    assert m.mrr == pytest.approx((1 + 1 / 3 + 1 / 10) / 4)
    assert m.ndcg_at_10 == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(11)) / 4)
    assert m.ndcg_at_10 == pytest.approx((1 + 0.5 + 0.28906482631788793) / 4)


def test_rankings_are_cut_at_the_largest_k() -> None:
    # relevant at rank 11: outside the top 10, so it counts for nothing
    ranked = [[f"d{i}" for i in range(10)] + ["a"]]
    m = ranking_metrics(ranked, ["a"], (1, 5, 10))
    assert (m.recall, m.mrr, m.ndcg_at_10, m.found) == ({1: 0.0, 5: 0.0, 10: 0.0}, 0.0, 0.0, 0)
    # with k up to 20 it is found at rank 11: MRR 1/11, nDCG@10 still 0
    m20 = ranking_metrics(ranked, ["a"], (1, 20))
    assert m20.recall == {1: 0.0, 20: 1.0}
    assert m20.mrr == pytest.approx(1 / 11)
    assert m20.ndcg_at_10 == 0.0


def test_perfect_ranking_scores_one() -> None:
    m = ranking_metrics([["a"], ["b", "a"]], ["a", "b"])
    assert m.recall == {1: 1.0, 5: 1.0, 10: 1.0}
    assert m.mrr == 1.0
    assert m.ndcg_at_10 == 1.0


def test_metric_functions_on_ranks() -> None:
    ranks: list[int | None] = [2, None, 5]
    assert recall_at_k(ranks, 1) == 0.0
    assert recall_at_k(ranks, 2) == pytest.approx(1 / 3)
    assert mean_reciprocal_rank(ranks) == pytest.approx((0.5 + 0.2) / 3)
    assert mean_reciprocal_rank(ranks, depth=4) == pytest.approx(0.5 / 3)
    assert ndcg_at_k(ranks, 10) == pytest.approx((1 / math.log2(3) + 1 / math.log2(6)) / 3)
    assert (recall_at_k([], 10), mean_reciprocal_rank([]), ndcg_at_k([], 10)) == (0.0, 0.0, 0.0)


def test_ranking_metrics_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2 rankings for 1 relevant ids"):
        ranking_metrics([["a"], ["b"]], ["a"])
    with pytest.raises(ValueError, match="positive"):
        ranking_metrics([["a"]], ["a"], (0, 5))


# ---------------------------------------------------------------------- input checks


def test_eval_rejects_missing_and_wrong_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        evaluate_retrieval(tmp_path / "absent.json", None)
    wrong = tmp_path / "wrong.json"
    wrong.write_text("[1, 2, 3]", encoding="utf-8")
    with pytest.raises(IngestionError, match="not a PubMedQA ori_pqal file"):
        evaluate_retrieval(wrong, None)
    wrong.write_text("{}", encoding="utf-8")
    with pytest.raises(IngestionError, match="no PubMedQA question with an abstract"):
        evaluate_retrieval(wrong, None)
