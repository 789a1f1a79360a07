"""CheXpert labeler: labels of crafted sentences (negation, uncertainty, No Finding, mention vs unmention), the
public data types, the MeSH -> observation mapping, and the error messages on bad input files.

The phrase lists are the real ones from ``<data_dir>/chexpert_labeler`` (read at run time)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sage_health.core.errors import EvaluationError
from sage_health.models.evaluation.labeler import (
    COMMON_FIVE,
    NO_FINDING,
    OBSERVATIONS,
    CheXpertLabeler,
    Label,
    ReportLabels,
    normalize_report,
)
from sage_health.models.evaluation.labeler_validation import (
    load_iu_reports,
    mesh_to_observations,
    validate_against_iu_mesh,
    validate_against_labeled_reports,
)

P, N, U, B = Label.POSITIVE, Label.NEGATIVE, Label.UNCERTAIN, Label.BLANK


@pytest.fixture(scope="module")
def labeler_dir(data_dir: Path) -> Path:
    return data_dir / "chexpert_labeler"


@pytest.fixture(scope="module")
def labeler(labeler_dir: Path) -> CheXpertLabeler:
    return CheXpertLabeler.from_dir(labeler_dir)


def _mentioned(labels: ReportLabels) -> dict[str, Label]:
    return {name: label for name, label in labels.labels.items() if label is not B}


# ---------------------------------------------------------------------- public constants and types


def test_observations_are_the_14_in_chexpert_order() -> None:
    assert len(OBSERVATIONS) == 14
    assert OBSERVATIONS[0] == "No Finding"
    assert OBSERVATIONS[-1] == "Support Devices"
    assert OBSERVATIONS[2] == "Cardiomegaly"
    assert set(COMMON_FIVE) <= set(OBSERVATIONS)
    assert set(COMMON_FIVE) == {"Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"}


@pytest.mark.parametrize(
    ("cell", "label"),
    [("1.0", P), ("1", P), ("0.0", N), ("-1.0", U), ("-1", U), ("", B), (None, B), (float("nan"), B), (1.0, P)],
)
def test_label_parses_chexpert_cells(cell: str | float | None, label: Label) -> None:
    assert Label.from_chexpert(cell) is label


def test_label_numeric_mapping_and_bad_cell() -> None:
    assert [label.chexpert_value for label in (P, N, U, B)] == [1.0, 0.0, -1.0, None]
    with pytest.raises(ValueError, match="not a CheXpert label value: '2'"):
        Label.from_chexpert("2")


def test_normalize_report_is_the_reference_cleaning() -> None:
    assert normalize_report("Atelectasis and/or  pneumonia.Right-sided\nPICC/port") == (
        "atelectasis or pneumonia. right sided picc or port"
    )


# ---------------------------------------------------------------------- negation


def test_negation_before_a_list(labeler: CheXpertLabeler) -> None:
    labels = labeler.label("No focal consolidation, pneumothorax, or large pleural effusion.")
    assert _mentioned(labels) == {"Consolidation": N, "Pneumothorax": N, "Pleural Effusion": N, NO_FINDING: P}
    evidence = labels.evidence["Pneumothorax"]
    assert evidence.cues == ("no focal",)
    assert labels.text[evidence.start : evidence.end] == "pneumothorax"


@pytest.mark.parametrize(
    ("text", "observation"),
    [
        ("Cardiomegaly without overt edema.", "Edema"),
        ("The lungs are free of infiltrate.", "Lung Opacity"),
        ("Negative for pneumothorax.", "Pneumothorax"),
        ("The pleural effusion has resolved.", "Pleural Effusion"),
        ("The chest tube has been removed.", "Support Devices"),
        ("No evidence of pneumonia.", "Pneumonia"),
        ("There is no focal air space opacity to suggest a pneumonia.", "Pneumonia"),
        ("Pneumothorax is not seen.", "Pneumothorax"),
    ],
)
def test_negation_cues(labeler: CheXpertLabeler, text: str, observation: str) -> None:
    assert labeler.label(text)[observation] is N


def test_negation_ends_at_a_clause_break(labeler: CheXpertLabeler) -> None:
    labels = labeler.label("No pneumothorax, but there is a small left pleural effusion.")
    assert labels["Pneumothorax"] is N
    assert labels["Pleural Effusion"] is P


# ---------------------------------------------------------------------- uncertainty


def test_reference_sample_hedge(labeler: CheXpertLabeler) -> None:
    labels = labeler.label(
        "Minimal patchy airspace disease within the lingula, may reflect atelectasis or consolidation."
    )
    assert _mentioned(labels) == {"Lung Opacity": P, "Atelectasis": U, "Consolidation": U}


@pytest.mark.parametrize(
    ("text", "observation"),
    [
        ("Possible early pneumonia.", "Pneumonia"),
        ("Findings suspicious for pulmonary edema.", "Edema"),
        ("Right basilar opacity, likely atelectasis.", "Atelectasis"),
        ("Small effusion versus pleural thickening.", "Pleural Other"),
        ("Question of a small left pneumothorax.", "Pneumothorax"),
        ("Mild pulmonary vascular congestion.", "Edema"),  # always uncertain in the reference
        ("Borderline heart size.", "Cardiomegaly"),
    ],
)
def test_uncertainty_cues(labeler: CheXpertLabeler, text: str, observation: str) -> None:
    assert labeler.label(text)[observation] is U


@pytest.mark.parametrize(
    "text",
    ["A small pneumothorax cannot be excluded.", "Cannot exclude a small pneumothorax.", "No new pneumothorax."],
)
def test_pre_negation_uncertainty_wins_over_negation(labeler: CheXpertLabeler, text: str) -> None:
    labels = labeler.label(text)
    assert labels["Pneumothorax"] is U
    assert labels[NO_FINDING] is B


def test_negation_wins_over_an_alternative(labeler: CheXpertLabeler) -> None:
    labels = labeler.label("Heart size normal and lungs are clear. No edema or pneumonia. No effusion")
    assert _mentioned(labels) == {"Cardiomegaly": N, "Edema": N, "Pneumonia": N, "Pleural Effusion": N, NO_FINDING: P}


# ---------------------------------------------------------------------- heart and mediastinum


@pytest.mark.parametrize(
    ("text", "observation", "label"),
    [
        ("Heart size is normal.", "Cardiomegaly", N),
        ("Normal heart size.", "Cardiomegaly", N),
        ("The heart is normal in size and contour.", "Cardiomegaly", N),
        ("The heart is not enlarged.", "Cardiomegaly", N),
        ("Normal cardiomediastinal silhouette.", "Enlarged Cardiomediastinum", N),
        ("The mediastinum is unremarkable.", "Enlarged Cardiomediastinum", N),
        ("The heart is mildly enlarged.", "Cardiomegaly", P),
        ("Stable mild cardiomegaly.", "Cardiomegaly", P),
        ("The mediastinum is widened.", "Enlarged Cardiomediastinum", P),
        ("A calcified granuloma projects over the heart.", "Cardiomegaly", B),
        ("Stable cardiomediastinal silhouette.", "Enlarged Cardiomediastinum", B),
    ],
)
def test_anatomy_mentions_need_a_qualifier(labeler: CheXpertLabeler, text: str, observation: str, label: Label) -> None:
    assert labeler.label(text)[observation] is label


def test_reference_stability_rule_can_be_restored(labeler_dir: Path) -> None:
    reference = CheXpertLabeler.from_dir(labeler_dir, stable_anatomy_uncertain=True)
    assert reference.label("Stable cardiomediastinal silhouette.")["Enlarged Cardiomediastinum"] is U
    assert reference.options["stable_anatomy_uncertain"] is True


def test_heart_failure_is_edema_and_uncertain_cardiomegaly(labeler: CheXpertLabeler) -> None:
    labels = labeler.label("Findings consistent with CHF.")
    assert labels["Edema"] is P
    assert labels["Cardiomegaly"] is U


def test_normal_does_not_reach_across_with(labeler: CheXpertLabeler) -> None:
    labels = labeler.label("Cardiomegaly with normal pulmonary vascularity.")
    assert labels["Cardiomegaly"] is P


# ---------------------------------------------------------------------- No Finding


@pytest.mark.parametrize(
    "text",
    [
        "Lungs are clear. No acute cardiopulmonary abnormality.",
        "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.",
        "Right PICC line with tip in the SVC. No acute disease.",  # support devices do not count
    ],
)
def test_no_finding_positive(labeler: CheXpertLabeler, text: str) -> None:
    labels = labeler.label(text)
    assert labels[NO_FINDING] is P
    assert all(labels[name] in (B, N) for name in OBSERVATIONS[1:-1])


@pytest.mark.parametrize(
    ("text", "because"),
    [
        ("Possible early pneumonia.", "pneumonia"),  # an uncertain finding
        ("Lungs consistent with emphysema.", "emphysema"),  # an abnormality outside the 13
        ("Low lung volumes. No effusion.", "low lung volume"),
    ],
)
def test_no_finding_blank_with_evidence(labeler: CheXpertLabeler, text: str, because: str) -> None:
    labels = labeler.label(text)
    assert labels[NO_FINDING] is B
    assert because in labels.evidence[NO_FINDING].mention


def test_no_finding_is_never_negative_and_empty_text_is_all_blank(labeler: CheXpertLabeler) -> None:
    assert labeler.label("Large right pleural effusion.")[NO_FINDING] is B
    empty = labeler.label("   ")
    assert set(empty.labels.values()) == {B}
    assert empty.evidence == {}


# ---------------------------------------------------------------------- mention vs unmention, aggregation


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Small pericardial effusion.", {"Pleural Effusion": B}),
        ("Massive right pleural effusion.", {"Lung Lesion": B, "Pleural Effusion": P}),
        ("Left apical pleural scarring.", {"Lung Opacity": B, "Pleural Other": P}),
        ("Calcified nodule in the left upper lobe.", {"Lung Lesion": B}),
        ("Calcified right upper lobe nodule, unchanged.", {"Lung Lesion": B}),
        ("Non-calcified nodule in the left upper lobe.", {"Lung Lesion": P}),
        ("Degenerative endplate changes of the spine.", {"Support Devices": B}),
        ("Platelike atelectasis at the left base.", {"Support Devices": B, "Atelectasis": P}),
    ],
)
def test_unmention_phrases_take_precedence(labeler: CheXpertLabeler, text: str, expected: dict[str, Label]) -> None:
    labels = labeler.label(text)
    assert {name: labels[name] for name in expected} == expected


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("No left pleural effusion. Small right pleural effusion.", P),  # positive beats negative
        ("No right pleural effusion. Possible small left pleural effusion.", U),  # uncertain beats negative
        ("Possible left pleural effusion. Small right pleural effusion.", P),  # positive beats uncertain
    ],
)
def test_mentions_of_one_observation_combine_like_the_reference(
    labeler: CheXpertLabeler, text: str, label: Label
) -> None:
    assert labeler.label(text)["Pleural Effusion"] is label


def test_label_many_keeps_order_and_matches_label(labeler: CheXpertLabeler) -> None:
    texts = ["No pneumothorax.", "Large left pneumothorax.", "Possible pneumothorax.", ""]
    many = labeler.label_many(texts)
    assert [r["Pneumothorax"] for r in many] == [N, P, U, B]
    assert [r.to_chexpert()["Pneumothorax"] for r in many] == [0.0, 1.0, -1.0, None]
    assert many[1] == labeler.label(texts[1])


def test_report_labels_api(labeler: CheXpertLabeler) -> None:
    labels = labeler.label("Moderate cardiomegaly. Possible small left pleural effusion.")
    row = labels.to_chexpert()
    assert list(row) == list(OBSERVATIONS)
    assert row["Cardiomegaly"] == 1.0
    assert row["Pleural Effusion"] == -1.0
    assert labels.positives() == {"Cardiomegaly", "Pleural Effusion"}
    assert labels.positives(uncertain_as_positive=False) == {"Cardiomegaly"}
    explanation = labels.evidence["Pleural Effusion"].explain()
    assert explanation.startswith("Pleural Effusion: uncertain - 'effusion' in")
    assert "'possible'" in explanation
    with pytest.raises(KeyError, match="unknown observation 'Heart'"):
        labels["Heart"]


# ---------------------------------------------------------------------- MeSH mapping


@pytest.mark.parametrize(
    ("terms", "expected"),
    [
        (["normal"], {"No Finding"}),
        (["Cardiomegaly/borderline"], {"Cardiomegaly"}),
        (["Pleural Effusion/right"], {"Pleural Effusion"}),
        (["Opacity/lung/base/left"], {"Lung Opacity"}),
        (["Opacity/ribs/left/anterior/round"], set()),  # outside the lung
        (["Density/lung/middle lobe/right/round"], {"Lung Opacity", "Lung Lesion"}),
        (["Pulmonary Atelectasis/base/left"], {"Atelectasis"}),
        (["Calcified Granuloma/lung/upper lobe/left"], set()),
        (["Nodule/lung/lingula", "Calcinosis/lung/lingula"], set()),  # a calcified nodule
        (["Nodule/lung/lingula", "Calcinosis/aorta"], {"Lung Lesion"}),
        (["Pulmonary Congestion/mild", "Heart Failure"], {"Edema"}),
        (["Thickening/pleura/apex/bilateral"], {"Pleural Other"}),
        (["Cicatrix/lung/apex/right"], {"Lung Opacity"}),
        (["Surgical Instruments/abdomen/right"], set()),
        (["Catheters, Indwelling/right", "Fractures, Bone/ribs/left/healed"], {"Support Devices", "Fracture"}),
        (["Mediastinum/prominent"], {"Enlarged Cardiomediastinum"}),
        (["Aorta/tortuous", "Lung/hypoinflation"], set()),
    ],
)
def test_mesh_mapping(terms: list[str], expected: set[str]) -> None:
    assert mesh_to_observations(terms) == expected


# ---------------------------------------------------------------------- bad inputs


def test_missing_labeler_dir_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match=r"phrases not found: .*nowhere.*phrases.*mention is missing"):
        CheXpertLabeler.from_dir(tmp_path / "nowhere")


def test_missing_phrase_file_is_named(labeler_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "chexpert_labeler"
    shutil.copytree(labeler_dir / "phrases", copy / "phrases")
    (copy / "phrases" / "mention" / "pleural_effusion.txt").unlink()
    with pytest.raises(EvaluationError, match=r"missing or empty mention phrase file\(s\) in .*: pleural_effusion.txt"):
        CheXpertLabeler.from_dir(copy)


def test_unknown_phrase_file_is_named(labeler_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "chexpert_labeler"
    shutil.copytree(labeler_dir / "phrases", copy / "phrases")
    (copy / "phrases" / "unmention" / "heart_attack.txt").write_text("x\n", encoding="utf-8")
    with pytest.raises(EvaluationError, match=r"heart_attack.txt names no CheXpert observation"):
        CheXpertLabeler.from_dir(copy)


def test_malformed_jsonl_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "reports.jsonl"
    good = {"uid": 1, "findings": "Secret text.", "impression": None, "mesh_major": ["normal"]}
    path.write_text(json.dumps(good) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(EvaluationError, match=r"reports.jsonl:2: not valid JSON") as caught:
        load_iu_reports(path)
    assert "Secret" not in str(caught.value)


def test_bad_mesh_field_names_uid_not_text(tmp_path: Path) -> None:
    path = tmp_path / "reports.jsonl"
    path.write_text(json.dumps({"uid": 7, "findings": "Secret text.", "mesh_major": "normal"}) + "\n", encoding="utf-8")
    with pytest.raises(EvaluationError, match=r"reports.jsonl:1 \(uid 7\): 'mesh_major' must be a list") as caught:
        load_iu_reports(path)
    assert "Secret" not in str(caught.value)


def test_missing_reports_jsonl(labeler: CheXpertLabeler, tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match=r"IU X-ray reports not found: .*iu_xray.*reports.jsonl"):
        validate_against_iu_mesh(labeler, tmp_path)


def test_labeled_reports_csv_errors(labeler: CheXpertLabeler, tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match=r"labeled reports not found: .*labeled_reports.csv"):
        validate_against_labeled_reports(labeler, tmp_path)
    (tmp_path / "labeled_reports.csv").write_text("Reports,No Finding\nNo effusion.,1.0\n", encoding="utf-8")
    with pytest.raises(EvaluationError, match=r"labeled_reports.csv: missing column\(s\) Enlarged Cardiomediastinum"):
        validate_against_labeled_reports(labeler, tmp_path)
    header = ",".join(["Reports", *OBSERVATIONS])
    row = ",".join(["No effusion.", "1.0", *["7"] * 13])
    (tmp_path / "labeled_reports.csv").write_text(f"{header}\n{row}\n", encoding="utf-8")
    with pytest.raises(EvaluationError, match=r"data row 1: not a CheXpert label value: '7'"):
        validate_against_labeled_reports(labeler, tmp_path)
