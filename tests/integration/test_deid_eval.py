"""The de-identification evaluation on the shared data: span recall/precision on the Presidio synthetic PII dev file
and eponym over-redaction on IU X-ray + MedQuAD sentences. Targets (issue 5): strict recall >= 0.95 on NAME, DATE,
PHONE, EMAIL, SSN, ADDRESS; over-redaction of eponyms <= 5 %; overall precision >= 0.8.

The dev file has no US_SSN span (stated by the evaluation as ``missing_target_labels``). NAME and ADDRESS (the file is
general-domain and international: lower-case names, enumerations of names, European address blocks) reach 0.95 with
general rules (name lists and name lines, sentence-initial names before person verbs, address blocks with unit and
country lines, "the corner of ... and ...", Hungarian/Polish street types); the relaxed recall and precision floors
guard the rest.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sage_health.data.governance.deid import PresidioDeidentifier
from sage_health.data.governance.deid_eval import (
    DEV_FILE,
    TARGET_RECALL,
    DeidEvaluation,
    evaluate,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def evaluation(data_dir: Path) -> DeidEvaluation:
    return evaluate(PresidioDeidentifier(b"eval-test-key-0123456789abcdefgh"), data_dir, mode="surrogate")


@pytest.mark.parametrize("label", ["NAME", "ADDRESS", "DATE", "PHONE", "EMAIL"])
def test_strict_recall_target_met(evaluation: DeidEvaluation, label: str) -> None:
    metrics = evaluation.spans.label(label)
    assert metrics.support > 0
    assert metrics.recall_strict is not None
    assert metrics.recall_strict >= TARGET_RECALL
    assert metrics.meets_target is True


@pytest.mark.parametrize(("label", "floor"), [("NAME", 0.95), ("ADDRESS", 0.95), ("ID", 0.95), ("URL", 0.95)])
def test_recall_floor(evaluation: DeidEvaluation, label: str, floor: float) -> None:
    metrics = evaluation.spans.label(label)
    assert metrics.recall_strict is not None
    assert metrics.recall_strict >= floor
    assert metrics.recall_relaxed is not None
    assert metrics.recall_relaxed >= metrics.recall_strict


def test_ssn_has_no_gold_span_in_dev(evaluation: DeidEvaluation) -> None:
    assert evaluation.spans.missing_target_labels == ("SSN",)


def test_precision_and_rule_are_reported(evaluation: DeidEvaluation, data_dir: Path) -> None:
    spans = evaluation.spans
    assert spans.file == str(data_dir / DEV_FILE)
    assert spans.texts == 764
    assert spans.gold_spans > 1000
    assert spans.neutral_gold_spans > 0
    assert spans.overall.precision_strict is not None
    assert spans.overall.precision_strict >= 0.9
    name_precision = spans.label("NAME").precision_strict
    assert name_precision is not None
    assert name_precision >= 0.8
    assert "every alphanumeric character" in spans.matching_rule
    assert spans.texts_per_second > 10


def test_eponym_over_redaction(evaluation: DeidEvaluation) -> None:
    over = evaluation.over_redaction
    assert over is not None
    assert over.eponym_occurrences >= 1000
    assert over.other_sentences == 1000
    assert set(over.sources) == {"iu_xray", "medquad"}
    assert over.eponym_redaction_rate <= 0.05
    assert over.meets_target is True
    assert over.other_sentences_with_any_redaction < 0.2


def test_surrogate_mode_leaves_few_gold_values(evaluation: DeidEvaluation) -> None:
    check = evaluation.mode_check
    assert check is not None
    assert check["gold_values"] > 1000
    assert check["survival_rate"] < 0.2
