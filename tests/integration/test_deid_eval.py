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

import re
from pathlib import Path

import pytest

from sage_health.core.errors import DataError
from sage_health.data.governance.deid import PresidioDeidentifier
from sage_health.data.governance.deid.fusion import DEFAULT_FUSION, Fusion, fusion_grid
from sage_health.data.governance.deid.generate import TEMPLATES
from sage_health.data.governance.deid_eval import (
    DEV_FILE,
    TARGET_RECALL,
    CrossValidation,
    DeidEvaluation,
    evaluate,
    evaluate_cv,
    evaluate_spans,
    load_presidio_file,
    template_folds,
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


# ---------------------------------------------------------------------- template-grouped cross-validation (issue 14)


@pytest.fixture(scope="module")
def cross_validation(data_dir: Path) -> CrossValidation:
    return evaluate_cv(PresidioDeidentifier(b"eval-test-key-0123456789abcdefgh"), data_dir / DEV_FILE, folds=5)


def test_template_folds_are_disjoint_and_balanced(data_dir: Path) -> None:
    samples = load_presidio_file(data_dir / DEV_FILE)
    folds = template_folds(samples, 5, seed=1)
    by_template: dict[object, set[int]] = {}
    for sample, fold in zip(samples, folds, strict=True):
        by_template.setdefault(sample["template_id"], set()).add(fold)
    assert all(len(f) == 1 for f in by_template.values()), "a template lies in exactly one fold"
    sizes = [folds.count(f) for f in range(5)]
    assert max(sizes) - min(sizes) <= 20
    assert template_folds(samples, 5, seed=1) == folds
    with pytest.raises(DataError, match="template folds"):
        template_folds(samples[:3], 5, seed=1)


def test_cross_validation_scores_choices_on_unseen_templates(cross_validation: CrossValidation) -> None:
    cv = cross_validation
    assert cv.cv_by == "template"
    assert cv.folds == len(cv.per_fold) == 5
    assert cv.spans.texts == 764
    assert sum(f.texts for f in cv.per_fold) == 764
    assert len(cv.candidates) == len(fusion_grid())
    assert all(f.selected in cv.candidates for f in cv.per_fold)
    assert cv.selected_on_all == DEFAULT_FUSION.name, "the shipped setting is the one the CV rule picks on dev"
    overall = cv.spans.overall
    assert overall.recall_strict is not None
    assert overall.precision_strict is not None
    assert overall.recall_strict >= TARGET_RECALL
    assert overall.precision_strict >= 0.93
    for label, floor in (("NAME", TARGET_RECALL), ("ADDRESS", TARGET_RECALL), ("PHONE", TARGET_RECALL),
                         ("LOCATION", 0.8)):  # fmt: skip
        recall = cv.spans.label(label).recall_strict
        assert recall is not None
        assert recall >= floor, label


def test_cross_validation_of_one_deidentifier_is_its_pooled_figure(data_dir: Path) -> None:
    deid = PresidioDeidentifier(b"eval-test-key-0123456789abcdefgh", fusion=Fusion(learned=False, join=False))
    plain = evaluate_spans(deid, data_dir / DEV_FILE)
    cv = evaluate_cv({"rules": deid}, data_dir / DEV_FILE, folds=4)
    assert cv.candidates == ("rules",)
    assert {f.selected for f in cv.per_fold} == {"rules"}
    assert cv.spans.overall.recall_strict == plain.overall.recall_strict
    assert cv.spans.overall.precision_strict == plain.overall.precision_strict


def test_cross_validation_rejects_bad_settings(data_dir: Path) -> None:
    deid = PresidioDeidentifier(b"eval-test-key-0123456789abcdefgh")
    with pytest.raises(DataError, match="unknown cross-validation grouping 'sentence'"):
        evaluate_cv(deid, data_dir / DEV_FILE, cv_by="sentence")
    with pytest.raises(DataError, match="at least 2 folds"):
        evaluate_cv(deid, data_dir / DEV_FILE, folds=1)
    with pytest.raises(DataError, match="unknown cross-validation grouping"):
        evaluate(deid, data_dir, cv_by="patient", over_redaction=False)


def test_generator_templates_are_not_the_dev_templates(data_dir: Path) -> None:
    """The training text is written for the generator: no template of it is a dev-file template."""
    slot = re.compile(r"\{\{?\s*[A-Za-z_0-9]+\s*\}?\}")

    def shape(template: str) -> str:
        return " ".join(slot.sub("<>", template).lower().split())

    def worded(shapes: set[str]) -> set[str]:  # a bare list of slots ("<> <> <>") is no sentence to copy
        return {x for x in shapes if len(re.findall(r"[a-z]{2,}", x)) >= 2}

    dev = worded({shape(str(s["masked"])) for s in load_presidio_file(data_dir / DEV_FILE) if s.get("spans")})
    ours = worded({shape(t) for items in TEMPLATES.values() for t in items})
    assert len(dev) > 50
    assert len(ours) > 300
    assert not (dev & ours)


def test_cli_rejects_an_unknown_cv_grouping(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sage_health.interfaces.cli import app

    runner = CliRunner(env={"SAGE_PRINCIPAL": "", "SAGE_PURPOSE": ""})
    args = ["eval", "deid", "--cv-by", "sentence", "--store", str(tmp_path / "sage.db"), "--as", "researcher",
            "--purpose", "research"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "unknown --cv-by 'sentence'; use one of template" in result.output
