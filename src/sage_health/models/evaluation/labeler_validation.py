"""Validation of the CheXpert labeler against two references.

1. :func:`validate_against_labeled_reports`: the reference labeler's own output on its sample reports
   (``chexpert_labeler/labeled_reports.csv``). Per observation: 4-class agreement (positive / negative / uncertain /
   blank) with the full confusion table, and precision / recall / F1 of the positive class.
2. :func:`validate_against_iu_mesh`: the IU X-ray expert MeSH major terms (``iu_xray/reports.jsonl``,
   ``mesh_major``). The terms are mapped to observations by :data:`MESH_RULES`, the report text (findings +
   impression) is labelled, and each observation gets TP / FP / FN / TN, precision, recall and F1.

MeSH-derived gold. A term is ``head/qualifier/...``; a report's gold set is the union of what its terms map to.

* ``normal`` is No Finding. No other term maps to No Finding, so any indexed abnormality, including terms outside
  the 14 observations ("Aorta/tortuous", "Lung/hypoinflation", "Calcified Granuloma"), makes it negative.
* Where the CheXpert phrase lists place a concept, gold follows them, so that gold and labeler share one definition:
  lung scarring ("scar", "parenchymal scarring") is Lung Opacity; pleural thickening, pleural scarring and fibrosis
  ("pleural thickening", "pleural scar", "fibrosis", so also Pulmonary Fibrosis) are Pleural Other; heart failure
  and pulmonary congestion are Edema ("heart failure", "chf", "pulmonary congestion"); interstitial markings and
  interstitial lung disease are Lung Opacity; a round opacity / density is a nodular one, i.e. Lung Lesion as well
  as Lung Opacity ("nodular opacity", "nodular density"); calcified nodules are not Lung Lesion (the labeler's
  "calcified nodul" unmention): "Calcified Granuloma", "Granuloma", "Granulomatous Disease" and "Calcinosis" map to
  nothing, and a Nodule (or round Opacity / Density) indexed at exactly the site of a lung Calcinosis / Calcified
  Granuloma term of the same report (MeSH's way to write "calcified nodule") is not a Lung Lesion either.
* Lung Opacity takes Opacity, Density, Airspace Disease and Infiltrate unless a qualifier places them outside the
  lung parenchyma (ribs, spine, mediastinum, pleura, breast, soft tissue, ...). Lung Lesion takes Nodule, Mass and
  Cavitation outside the breast. Enlarged Cardiomediastinum takes an enlarged / prominent / widened Mediastinum;
  Cardiomegaly takes Cardiomegaly (borderline included) and an enlarged / borderline / prominent Cardiac Shadow,
  atrium or ventricle. Pneumothorax includes hydro- and hemopneumothorax; Pleural Other includes "Pleura/...".
* Support Devices takes indwelling catheters, inserted tubes, implanted and other medical devices (not the breast
  markers), stents and spinal fusion hardware. Surgical clips, sutures and sternotomy wires ("Surgical
  Instruments", "Sutures") are not CheXpert support devices and map to nothing, as do Foreign Bodies, Contrast Media
  and Breast Implants.
* Everything else (Costophrenic Angle, Diaphragm, Aorta, Lung/hyperdistention, bones other than fractures,
  Emphysema, COPD, hernias, lymph nodes, ...) is outside the 14 observations and maps to nothing.
* Reports with neither findings nor impression, and reports indexed only "No Indexing", carry no gold and are left
  out (``excluded_reports``).

Uncertain labels count as positive (the U-Ones convention): MeSH indexes hedged findings ("Cardiomegaly/borderline";
"likely atelectasis" is indexed Pulmonary Atelectasis). ``uncertain_as_positive=False`` gives the U-Zeros view.
Blank and negative are both "not positive"; No Finding is positive or blank by construction.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from pydantic import BaseModel, ConfigDict, Field, computed_field

from sage_health.core.config import Settings
from sage_health.core.errors import EvaluationError
from sage_health.core.hashing import sha256_file, sha256_json
from sage_health.models.evaluation.labeler import OBSERVATIONS, CheXpertLabeler, Label

__all__ = [
    "DEFAULT_MIN_SUPPORT",
    "MESH_RULES",
    "IUReport",
    "LabeledReportsValidation",
    "MeshRule",
    "MeshValidation",
    "ObservationAgreement",
    "ObservationMetrics",
    "load_iu_reports",
    "mesh_to_observations",
    "validate_against_iu_mesh",
    "validate_against_labeled_reports",
]

#: Observations with at least this many MeSH-positive reports are the ones the F1 target applies to.
DEFAULT_MIN_SUPPORT: Final = 50


@dataclass(frozen=True, slots=True)
class MeshRule:
    """Maps a MeSH major term (``head/qualifier/...``) to an observation.

    The rule matches when the head equals :attr:`head` (case-insensitive), at least one qualifier is in
    :attr:`any_of` (when given) and none is in :attr:`none_of`.
    """

    head: str
    observation: str
    any_of: frozenset[str] = frozenset()
    none_of: frozenset[str] = frozenset()
    note: str = ""

    def as_json(self) -> dict[str, str | list[str]]:
        """A deterministic JSON form (sorted qualifier lists), hashed into validation results."""
        return {
            "head": self.head,
            "observation": self.observation,
            "any_of": sorted(self.any_of),
            "none_of": sorted(self.none_of),
            "note": self.note,
        }

    def matches(self, head: str, qualifiers: frozenset[str]) -> bool:
        if head != self.head.lower():
            return False
        if self.any_of and not (qualifiers & self.any_of):
            return False
        return not (qualifiers & self.none_of)


# Qualifiers that place an Opacity / Density outside the lung parenchyma.
def _words(text: str) -> frozenset[str]:
    return frozenset(word.strip() for word in text.split("|"))


_OUTSIDE_LUNG: Final = _words(
    "ribs|thoracic vertebrae|lumbar vertebrae|cervical vertebrae|spine|clavicle|sternum|humerus|shoulder|scapula"
    "|breast|adipose tissue|mediastinum|heart|supracardiac|paratracheal|abdomen|neck|pleura|pleural sinus"
    "|mitral valve|aorta"
)
_ENLARGED: Final = frozenset({"enlarged", "prominent", "widened", "borderline"})


def _rule(
    head: str, observation: str, note: str, *, any_of: Iterable[str] = (), none_of: Iterable[str] = ()
) -> MeshRule:
    return MeshRule(head, observation, frozenset(any_of), frozenset(none_of), note)


#: The MeSH major term -> CheXpert observation mapping (see the module docstring for the reasoning).
MESH_RULES: Final[tuple[MeshRule, ...]] = (
    _rule("normal", "No Finding", "the annotators found nothing abnormal"),
    _rule("Cardiomegaly", "Cardiomegaly", "any degree, borderline included"),
    _rule("Cardiac Shadow", "Cardiomegaly", "an enlarged / borderline / prominent heart shadow", any_of=_ENLARGED),
    _rule("Heart Ventricles", "Cardiomegaly", "chamber enlargement", any_of=_ENLARGED),
    _rule("Heart Atria", "Cardiomegaly", "chamber enlargement", any_of=_ENLARGED),
    _rule("Mediastinum", "Enlarged Cardiomediastinum", "a widened / prominent mediastinum", any_of=_ENLARGED),
    _rule("Nodule", "Lung Lesion", "nodules (calcified granulomas have their own terms)", none_of={"breast"}),
    _rule("Mass", "Lung Lesion", "masses outside the breast", none_of={"breast"}),
    _rule("Cavitation", "Lung Lesion", "cavitary lesion (a CheXpert lung-lesion phrase)"),
    _rule("Opacity", "Lung Lesion", "a round opacity is a nodular opacity", any_of={"round"}, none_of=_OUTSIDE_LUNG),
    _rule("Density", "Lung Lesion", "a round density is a nodular density", any_of={"round"}, none_of=_OUTSIDE_LUNG),
    _rule("Opacity", "Lung Opacity", "opacities not placed outside the lung", none_of=_OUTSIDE_LUNG),
    _rule("Density", "Lung Opacity", "densities not placed outside the lung", none_of=_OUTSIDE_LUNG),
    _rule("Airspace Disease", "Lung Opacity", "airspace disease (a CheXpert lung-opacity phrase)"),
    _rule("Infiltrate", "Lung Opacity", "infiltrate (a CheXpert lung-opacity phrase)"),
    _rule("Cicatrix", "Lung Opacity", "lung scarring ('scar' is a CheXpert lung-opacity phrase)", any_of={"lung"}),
    _rule("Markings", "Lung Opacity", "interstitial markings, a CheXpert lung-opacity phrase", any_of={"interstitial"}),
    _rule("Lung", "Lung Opacity", "interstitial prominence of the lung", any_of={"interstitial"}),
    _rule("Lung Diseases, Interstitial", "Lung Opacity", "'interstitial lung' is a CheXpert lung-opacity phrase"),
    _rule("Pulmonary Edema", "Edema", "pulmonary edema"),
    _rule("Pulmonary Congestion", "Edema", "'pulmonary/vascular congestion' are CheXpert edema phrases"),
    _rule("Heart Failure", "Edema", "'heart failure' and 'chf' are CheXpert edema phrases"),
    _rule("Consolidation", "Consolidation", "consolidation"),
    _rule("Pneumonia", "Pneumonia", "pneumonia"),
    _rule("Pulmonary Atelectasis", "Atelectasis", "atelectasis"),
    _rule("Pneumothorax", "Pneumothorax", "pneumothorax"),
    _rule("Hydropneumothorax", "Pneumothorax", "contains a pneumothorax"),
    _rule("Hemopneumothorax", "Pneumothorax", "contains a pneumothorax"),
    _rule("Pleural Effusion", "Pleural Effusion", "pleural effusion (pericardial effusion is not)"),
    _rule("Thickening", "Pleural Other", "pleural thickening (a CheXpert pleural-other phrase)", any_of={"pleura"}),
    _rule("Cicatrix", "Pleural Other", "pleural scarring (a CheXpert pleural-other phrase)", any_of={"pleura"}),
    _rule("Pleura", "Pleural Other", "other pleural abnormality"),
    _rule("Pulmonary Fibrosis", "Pleural Other", "'fibrosis' is a CheXpert pleural-other phrase"),
    _rule("Fibrosis", "Pleural Other", "'fibrosis' is a CheXpert pleural-other phrase"),
    _rule("Fractures, Bone", "Fracture", "any fracture, healed ones included (as the labeler does)"),
    _rule("Catheters, Indwelling", "Support Devices", "lines, ports, catheters"),
    _rule("Tube, Inserted", "Support Devices", "tracheostomy / endotracheal / other tubes"),
    _rule("Implanted Medical Device", "Support Devices", "pacemakers, defibrillators, valves"),
    _rule("Medical Device", "Support Devices", "monitor leads and other devices", none_of={"breast"}),
    _rule("Stents", "Support Devices", "vascular stents"),
    _rule("Spinal Fusion", "Support Devices", "spinal fusion hardware"),
)


_CALCIFIED_HEADS: Final = frozenset({"calcinosis", "calcified granuloma"})
_LESION_HEADS: Final = frozenset({"nodule", "opacity", "density"})
_NOT_A_SITE: Final = frozenset({"lung", "round", "small", "large", "multiple", "scattered", "focal", "mild"})
_NOT_PARENCHYMA: Final = _OUTSIDE_LUNG | _words(
    "aorta, thoracic|lymph nodes|blood vessels|coronary vessels|pulmonary artery|trachea, carina|bronchi"
    "|breast implants"
)


def _split_term(term: str) -> tuple[str, frozenset[str]]:
    parts = [p.strip().lower() for p in term.split("/")]
    return parts[0], frozenset(p for p in parts[1:] if p)


def _calcified(head: str, qualifiers: frozenset[str], calcified_sites: Sequence[frozenset[str]]) -> bool:
    """A nodule (or round opacity / density) indexed at the site of a lung calcification is a calcified nodule."""
    site = qualifiers - _NOT_A_SITE
    return head in _LESION_HEADS and any(not site or site == other for other in calcified_sites)


def mesh_to_observations(terms: Iterable[str], rules: Sequence[MeshRule] = MESH_RULES) -> frozenset[str]:
    """The CheXpert observations that a report's MeSH major terms name (see :data:`MESH_RULES`).

    MeSH writes a calcified nodule as a Nodule (or a round Opacity/Density) plus a Calcinosis term at the same
    site; like the labeler's "calcified nodul" unmention, such a nodule is not a Lung Lesion.
    """
    split = [_split_term(term) for term in terms]
    calcified_sites = [q - _NOT_A_SITE for h, q in split if h in _CALCIFIED_HEADS and not q & _NOT_PARENCHYMA]
    found: set[str] = set()
    for head, qualifiers in split:
        calcified = _calcified(head, qualifiers, calcified_sites)
        for rule in rules:
            if rule.matches(head, qualifiers) and not (calcified and rule.observation == "Lung Lesion"):
                found.add(rule.observation)
    return frozenset(found)


# -- result models ------------------------------------------------------------------------------------------


class ObservationMetrics(BaseModel):
    """Binary agreement on one observation: positive class = gold positive vs labeller positive."""

    model_config = ConfigDict(frozen=True)

    observation: str
    tp: int = Field(ge=0)
    fp: int = Field(ge=0)
    fn: int = Field(ge=0)
    tn: int = Field(ge=0)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def support(self) -> int:
        """Gold-positive reports."""
        return self.tp + self.fn

    @computed_field  # type: ignore[prop-decorator]
    @property
    def predicted(self) -> int:
        """Reports the labeller calls positive."""
        return self.tp + self.fp

    @computed_field  # type: ignore[prop-decorator]
    @property
    def precision(self) -> float:
        return self.tp / self.predicted if self.predicted else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def recall(self) -> float:
        return self.tp / self.support if self.support else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def f1(self) -> float:
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def accuracy(self) -> float:
        total = self.tp + self.fp + self.fn + self.tn
        return (self.tp + self.tn) / total if total else 0.0


class ObservationAgreement(BaseModel):
    """4-class agreement on one observation with a reference labeller; ``confusion[gold][predicted]`` counts."""

    model_config = ConfigDict(frozen=True)

    observation: str
    n: int = Field(ge=0)
    agree: int = Field(ge=0)
    confusion: dict[str, dict[str, int]]
    positive: ObservationMetrics

    @computed_field  # type: ignore[prop-decorator]
    @property
    def accuracy(self) -> float:
        return self.agree / self.n if self.n else 0.0


_Item = TypeVar("_Item", ObservationMetrics, ObservationAgreement)


def _find(items: Sequence[_Item], name: str) -> _Item:
    for item in items:
        if item.observation == name:
            return item
    raise KeyError(f"unknown observation {name!r}; expected one of {', '.join(OBSERVATIONS)}")


class LabeledReportsValidation(BaseModel):
    """Agreement with the reference labeler's output (``labeled_reports.csv``)."""

    model_config = ConfigDict(frozen=True)

    source: str
    source_sha256: str
    labeler_options: dict[str, bool | int]
    n_reports: int
    per_observation: list[ObservationAgreement]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def accuracy(self) -> float:
        """4-class agreement over all report x observation cells."""
        cells = sum(o.n for o in self.per_observation)
        return sum(o.agree for o in self.per_observation) / cells if cells else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def positive_micro_f1(self) -> float:
        tp = sum(o.positive.tp for o in self.per_observation)
        fp = sum(o.positive.fp for o in self.per_observation)
        fn = sum(o.positive.fn for o in self.per_observation)
        return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0

    def observation(self, name: str) -> ObservationAgreement:
        return _find(self.per_observation, name)


class MeshValidation(BaseModel):
    """Agreement with the IU X-ray MeSH-derived gold labels."""

    model_config = ConfigDict(frozen=True)

    source: str
    source_sha256: str
    mesh_rules_sha256: str
    labeler_options: dict[str, bool | int]
    n_reports: int
    excluded_reports: int
    uncertain_as_positive: bool
    min_support: int
    per_observation: list[ObservationMetrics]
    false_positive_uids: dict[str, list[int]] = Field(default_factory=dict, description="Per observation, for review.")
    false_negative_uids: dict[str, list[int]] = Field(default_factory=dict, description="Per observation, for review.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def evaluated(self) -> list[str]:
        """Observations with at least ``min_support`` MeSH-positive reports (the ones a target applies to)."""
        return [o.observation for o in self.per_observation if o.support >= self.min_support]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def macro_f1(self) -> float:
        """Mean F1 over :attr:`evaluated`."""
        chosen = [o.f1 for o in self.per_observation if o.support >= self.min_support]
        return sum(chosen) / len(chosen) if chosen else 0.0

    def observation(self, name: str) -> ObservationMetrics:
        return _find(self.per_observation, name)

    def below(self, f1_target: float) -> list[str]:
        """Evaluated observations whose F1 is under ``f1_target``."""
        return [o.observation for o in self.per_observation if o.support >= self.min_support and o.f1 < f1_target]


# -- data loading -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IUReport:
    """One IU X-ray report: its uid, the findings + impression text, and the MeSH major terms."""

    uid: int
    text: str
    mesh_major: tuple[str, ...]


def load_iu_reports(path: Path) -> list[IUReport]:
    """Read ``reports.jsonl``; errors name the file and line, never report text."""
    if not path.is_file():
        raise EvaluationError(f"IU X-ray reports not found: {path}; set SAGE_DATA_DIR to the shared data folder")
    reports: list[IUReport] = []
    try:
        with path.open(encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                reports.append(_parse_iu_line(path, lineno, line))
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"cannot read {path}: {exc.__class__.__name__}; check the file") from exc
    if not reports:
        raise EvaluationError(f"{path} holds no reports; expected one JSON object per line")
    return reports


def _parse_iu_line(path: Path, lineno: int, line: str) -> IUReport:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise EvaluationError(f"{path}:{lineno}: not valid JSON ({exc.msg}); expected one object per line") from exc
    if not isinstance(obj, dict):
        raise EvaluationError(f"{path}:{lineno}: expected a JSON object")
    uid = obj.get("uid")
    mesh = obj.get("mesh_major")
    if not isinstance(uid, int) or isinstance(uid, bool):
        raise EvaluationError(f"{path}:{lineno}: missing or non-integer 'uid'")
    if not isinstance(mesh, list) or not all(isinstance(m, str) for m in mesh):
        raise EvaluationError(f"{path}:{lineno} (uid {uid}): 'mesh_major' must be a list of strings")
    sections = []
    for key in ("findings", "impression"):
        value = obj.get(key)
        if value is not None and not isinstance(value, str):
            raise EvaluationError(f"{path}:{lineno} (uid {uid}): '{key}' must be a string or null")
        if value and value.strip():
            sections.append(value.strip())
    return IUReport(uid=uid, text=" ".join(sections), mesh_major=tuple(mesh))


def _read_labeled_reports(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise EvaluationError(f"labeled reports not found: {path}; pass the 'chexpert_labeler' folder")
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise EvaluationError(f"cannot read {path}: {exc.__class__.__name__}; check the file") from exc
    missing = [column for column in ("Reports", *OBSERVATIONS) if column not in header]
    if missing:
        raise EvaluationError(
            f"{path}: missing column(s) {', '.join(missing)}; expected 'Reports' + the 14 observations"
        )
    if not rows:
        raise EvaluationError(f"{path} has no data rows")
    return rows


# -- validations --------------------------------------------------------------------------------------------


def validate_against_labeled_reports(labeler: CheXpertLabeler, labeler_dir: Path | str) -> LabeledReportsValidation:
    """Compare with the reference labeler's output in ``<labeler_dir>/labeled_reports.csv``."""
    path = Path(labeler_dir) / "labeled_reports.csv"
    rows = _read_labeled_reports(path)
    gold: list[dict[str, Label]] = []
    for number, row in enumerate(rows, start=1):
        try:
            gold.append({name: Label.from_chexpert(row[name]) for name in OBSERVATIONS})
        except ValueError as exc:
            raise EvaluationError(f"{path}: data row {number}: {exc}") from exc
    predicted = labeler.label_many(row["Reports"] or "" for row in rows)
    per_observation = []
    for name in OBSERVATIONS:
        confusion = {g.value: {p.value: 0 for p in Label} for g in Label}
        tp = fp = fn = tn = 0
        for g_row, p_row in zip(gold, predicted, strict=True):
            g, p = g_row[name], p_row[name]
            confusion[g.value][p.value] += 1
            g_pos, p_pos = g is Label.POSITIVE, p is Label.POSITIVE
            tp += g_pos and p_pos
            fp += p_pos and not g_pos
            fn += g_pos and not p_pos
            tn += not g_pos and not p_pos
        agree = sum(confusion[label.value][label.value] for label in Label)
        per_observation.append(
            ObservationAgreement(
                observation=name,
                n=len(rows),
                agree=agree,
                confusion=confusion,
                positive=ObservationMetrics(observation=name, tp=tp, fp=fp, fn=fn, tn=tn),
            )
        )
    return LabeledReportsValidation(
        source=str(path),
        source_sha256=sha256_file(path),
        labeler_options=labeler.options,
        n_reports=len(rows),
        per_observation=per_observation,
    )


def validate_against_iu_mesh(
    labeler: CheXpertLabeler,
    data_dir: Path | str | None = None,
    *,
    uncertain_as_positive: bool = True,
    min_support: int = DEFAULT_MIN_SUPPORT,
    rules: Sequence[MeshRule] = MESH_RULES,
) -> MeshValidation:
    """Label ``<data_dir>/iu_xray/reports.jsonl`` (findings + impression) and score it against the MeSH gold.

    ``data_dir`` defaults to ``Settings().data_dir`` (the ``SAGE_DATA_DIR`` environment variable).
    """
    root = Path(data_dir) if data_dir is not None else Settings().data_dir
    path = root / "iu_xray" / "reports.jsonl"
    reports = load_iu_reports(path)
    kept = [r for r in reports if r.text and any(m.strip().lower() != "no indexing" for m in r.mesh_major)]
    predicted = labeler.label_many(r.text for r in kept)
    counts = {name: [0, 0, 0, 0] for name in OBSERVATIONS}  # tp, fp, fn, tn
    false_positives: dict[str, list[int]] = {name: [] for name in OBSERVATIONS}
    false_negatives: dict[str, list[int]] = {name: [] for name in OBSERVATIONS}
    for report, labels in zip(kept, predicted, strict=True):
        gold = mesh_to_observations(report.mesh_major, rules)
        positive = labels.positives(uncertain_as_positive=uncertain_as_positive)
        for name in OBSERVATIONS:
            g, p = name in gold, name in positive
            counts[name][0 if g and p else 1 if p else 2 if g else 3] += 1
            if p != g:
                (false_positives if p else false_negatives)[name].append(report.uid)
    return MeshValidation(
        source=str(path),
        source_sha256=sha256_file(path),
        mesh_rules_sha256=sha256_json([rule.as_json() for rule in rules]),
        labeler_options=labeler.options,
        n_reports=len(kept),
        excluded_reports=len(reports) - len(kept),
        uncertain_as_positive=uncertain_as_positive,
        min_support=min_support,
        per_observation=[
            ObservationMetrics(observation=name, tp=c[0], fp=c[1], fn=c[2], tn=c[3]) for name, c in counts.items()
        ],
        false_positive_uids=false_positives,
        false_negative_uids=false_negatives,
    )
