"""The CheXpert labeler validated on real data: the reference labeler's own output (labeled_reports.csv) and the
IU X-ray expert MeSH annotations (reports.jsonl). Figures measured when written are in the comments."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sage_health.models.evaluation.labeler import NO_FINDING, OBSERVATIONS, CheXpertLabeler
from sage_health.models.evaluation.labeler_validation import (
    LabeledReportsValidation,
    MeshValidation,
    validate_against_iu_mesh,
    validate_against_labeled_reports,
)

pytestmark = [pytest.mark.integration]

F1_TARGET = 0.85

# Observations with >= 50 MeSH-positive reports under MESH_RULES (support measured: No Finding 1056,
# Cardiomegaly 369, Lung Lesion 134, Lung Opacity 694, Edema 91, Atelectasis 293, Pleural Effusion 144,
# Pleural Other 73, Fracture 77, Support Devices 284).
EVALUATED = {
    "No Finding",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Atelectasis",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
}


@pytest.fixture(scope="module")
def labeler(data_dir: Path) -> CheXpertLabeler:
    return CheXpertLabeler.from_data_dir(data_dir)


@pytest.fixture(scope="module")
def mesh(labeler: CheXpertLabeler, data_dir: Path) -> MeshValidation:
    return validate_against_iu_mesh(labeler, data_dir)


@pytest.fixture(scope="module")
def reference(labeler: CheXpertLabeler, data_dir: Path) -> LabeledReportsValidation:
    return validate_against_labeled_reports(labeler, data_dir / "chexpert_labeler")


def test_agrees_with_the_reference_labeler_output(reference: LabeledReportsValidation) -> None:
    # measured: 56/56 cells (4 reports x 14 observations) agree, positive-class micro F1 1.0
    assert reference.n_reports == 4
    assert reference.accuracy >= 0.95
    assert reference.positive_micro_f1 >= 0.9
    for item in reference.per_observation:
        assert sum(sum(row.values()) for row in item.confusion.values()) == 4
    cardiomegaly = reference.observation("Cardiomegaly")
    assert cardiomegaly.confusion["positive"]["positive"] == 2
    assert cardiomegaly.confusion["negative"]["negative"] == 1
    assert re.fullmatch(r"[0-9a-f]{64}", reference.source_sha256)


def test_iu_mesh_population(mesh: MeshValidation) -> None:
    # 3,365 shared reports; 28 without findings/impression and 70 indexed only "No Indexing" are left out
    assert (mesh.n_reports, mesh.excluded_reports) == (3267, 98)
    assert mesh.uncertain_as_positive is True
    assert [o.observation for o in mesh.per_observation] == list(OBSERVATIONS)
    for item in mesh.per_observation:
        assert item.tp + item.fp + item.fn + item.tn == mesh.n_reports
        assert len(mesh.false_positive_uids[item.observation]) == item.fp
        assert len(mesh.false_negative_uids[item.observation]) == item.fn
    assert set(mesh.evaluated) == EVALUATED


def test_iu_mesh_f1_target_on_well_supported_observations(mesh: MeshValidation) -> None:
    # measured F1 (U-Ones): No Finding 0.934, Cardiomegaly 0.974, Lung Lesion 0.858, Lung Opacity 0.921,
    # Edema 0.874, Atelectasis 0.909, Pleural Effusion 0.913, Pleural Other 0.872, Fracture 0.869,
    # Support Devices 0.901
    scores = {name: round(mesh.observation(name).f1, 3) for name in mesh.evaluated}
    assert mesh.below(F1_TARGET) == [], scores
    assert mesh.macro_f1 >= 0.89
    assert mesh.observation(NO_FINDING).f1 >= 0.92
    assert mesh.observation("Cardiomegaly").f1 >= 0.95
