"""Evaluation of a :class:`~sage_health.data.governance.deid.Deidentifier`.

**Span recall/precision** on the Presidio synthetic PII dev set (``presidio_synthetic_pii/synth_dataset_v2_dev.json``;
general-domain synthetic sentences, not clinical notes — a limitation stated in every report). Gold types map to
ours with :data:`TYPE_MAP`; ``ORGANIZATION``, ``TITLE`` and ``NRP`` are not PHI: they are left out of recall, and a
predicted span overlapping one of them (and no PHI gold span) counts neither as a true nor as a false positive.

Matching rule (stated in every report, :data:`MATCHING_RULE`):

* **strict** recall: a gold span is recalled when predicted spans (of *any* label: for de-identification a leak
  matters, not the label) cover **every alphanumeric character** of it (punctuation and spaces may stay);
* **relaxed** recall: predicted spans overlap the gold span at all;
* **type-aware** strict recall: as strict, counting only predicted spans of the gold span's mapped label;
* precision: a predicted span is correct (**strict**) when at least half of its alphanumeric characters lie inside
  gold PHI spans, (**relaxed**) when it overlaps a gold PHI span at all. Per-label precision counts a predicted span
  of label L as correct only against gold spans mapped to L; the overall line is type-agnostic.

**Template-grouped cross-validation** (:func:`evaluate_cv`, ``eval deid --cv-by template``): the dev file's
templates are dealt into k folds; each fold is scored by the setting (:meth:`Tunable.variants`, e.g. how the rules
and the learned model combine) chosen on the other folds, so a choice is always scored on templates it was not made
from. This is the figure to tune against; the plain dev figure measures the tuning as well.

**Eponym over-redaction** on clinical text: sentences of IU X-ray reports and MedQuAD answers that contain a medical
eponym of :data:`~sage_health.data.governance.deid.lexicon.MEDICAL_EPONYMS` (capitalised, as a whole word), plus a
seeded sample of other sentences. Reported: the share of eponym occurrences that a predicted span overlaps (target
<= 5 %) and the share of sentences with any redaction. IU reports were de-identified at source with ``XXXX``; a
predicted span that covers nothing but ``XXXX`` placeholders is not counted as a redaction.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from sage_health.core.errors import DataError
from sage_health.data.governance.deid.lexicon import MEDICAL_EPONYMS
from sage_health.data.governance.deid.types import ENTITY_LABELS, Deidentifier, DeidMode, PhiSpan

TYPE_MAP: Final[dict[str, str]] = {
    "PERSON": "NAME",
    "STREET_ADDRESS": "ADDRESS",
    "GPE": "LOCATION",
    "ZIP_CODE": "ZIP",
    "DATE_TIME": "DATE",
    "AGE": "AGE",
    "PHONE_NUMBER": "PHONE",
    "EMAIL_ADDRESS": "EMAIL",
    "US_SSN": "SSN",
    "CREDIT_CARD": "ID",
    "IBAN_CODE": "ID",
    "US_DRIVER_LICENSE": "ID",
    "IP_ADDRESS": "IP",
    "DOMAIN_NAME": "URL",
}
NOT_PHI: Final[frozenset[str]] = frozenset({"ORGANIZATION", "TITLE", "NRP"})
TARGET_LABELS: Final[tuple[str, ...]] = ("NAME", "DATE", "PHONE", "EMAIL", "SSN", "ADDRESS")
TARGET_RECALL: Final = 0.95
TARGET_OVER_REDACTION: Final = 0.05
PRECISION_SHARE: Final = 0.5
MATCHING_RULE: Final = (
    "strict recall: predicted spans of any label cover every alphanumeric character of the gold span; relaxed "
    "recall: any overlap; type-aware: only predicted spans of the gold span's mapped label count; precision: a "
    "predicted span is correct when >= 50% of its alphanumeric characters lie inside gold PHI spans (strict) or it "
    "overlaps one (relaxed); predictions overlapping only ORGANIZATION/TITLE/NRP gold spans are ignored"
)
DEV_FILE: Final = Path("presidio_synthetic_pii") / "synth_dataset_v2_dev.json"


class LabelMetrics(BaseModel):
    """Figures for one of our labels (recall over gold spans mapped to it, precision over our spans of it)."""

    model_config = ConfigDict(frozen=True)

    label: str
    support: int
    """Gold spans mapped to this label."""
    predicted: int
    """Predicted spans with this label (neutral ones excluded)."""
    recall_strict: float | None
    recall_relaxed: float | None
    recall_strict_typed: float | None
    precision_strict: float | None
    precision_relaxed: float | None
    f1_strict: float | None
    f1_relaxed: float | None
    target: float | None = None
    meets_target: bool | None = None


class SpanEvaluation(BaseModel):
    model_config = ConfigDict(frozen=True)

    file: str
    texts: int
    gold_spans: int
    neutral_gold_spans: int
    matching_rule: str
    per_label: tuple[LabelMetrics, ...]
    overall: LabelMetrics
    seconds: float
    texts_per_second: float
    missing_target_labels: tuple[str, ...]
    """Target labels with no gold span in the file (no figure can be given)."""

    def label(self, name: str) -> LabelMetrics:
        return next(m for m in self.per_label if m.label == name)


class OverRedaction(BaseModel):
    model_config = ConfigDict(frozen=True)

    eponym_sentences: int
    eponym_occurrences: int
    eponym_occurrences_redacted: int
    eponym_redaction_rate: float
    eponym_sentences_with_any_redaction: float
    other_sentences: int
    other_sentences_with_any_redaction: float
    redactions_by_label: dict[str, int]
    sources: dict[str, int]
    """Sentences per source (iu_xray, medquad)."""
    target: float = TARGET_OVER_REDACTION
    meets_target: bool


class DeidEvaluation(BaseModel):
    model_config = ConfigDict(frozen=True)

    deidentifier: str
    spans: SpanEvaluation
    over_redaction: OverRedaction | None
    mode_check: dict[str, float] | None = None
    """When a mode is given: share of gold PHI spans whose exact text survives de-identification in that mode."""
    cross_validation: CrossValidation | None = None
    """With ``cv_by``: the template-grouped k-fold figures (:func:`evaluate_cv`)."""


# ---------------------------------------------------------------------- span metrics


def load_presidio_file(path: Path) -> list[dict[str, object]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the evaluation file ({type(exc).__name__}); check --file") from exc
    if not isinstance(data, list) or not all(isinstance(x, dict) and "full_text" in x for x in data):
        raise DataError(f"{path}: expected a JSON list of objects with 'full_text' and 'spans'")
    return data


def _alnum_positions(text: str, start: int, end: int) -> set[int]:
    return {i for i in range(start, end) if text[i].isalnum()}


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _f1(p: float | None, r: float | None) -> float | None:
    if p is None or r is None:
        return None
    return 2 * p * r / (p + r) if p + r else 0.0


@dataclass
class _Counts:
    """Span-metric counts of some sentences (added up over sentences, folds)."""

    texts: int = 0
    gold_total: int = 0
    neutral_total: int = 0
    all_pred: int = 0
    all_strict: int = 0
    all_relaxed: int = 0
    support: dict[str, int] = dc_field(default_factory=dict)
    rec_strict: dict[str, int] = dc_field(default_factory=dict)
    rec_relaxed: dict[str, int] = dc_field(default_factory=dict)
    rec_typed: dict[str, int] = dc_field(default_factory=dict)
    pred_n: dict[str, int] = dc_field(default_factory=dict)
    prec_strict: dict[str, int] = dc_field(default_factory=dict)
    prec_relaxed: dict[str, int] = dc_field(default_factory=dict)

    def add(self, other: _Counts) -> None:
        for name in ("texts", "gold_total", "neutral_total", "all_pred", "all_strict", "all_relaxed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("support", "rec_strict", "rec_relaxed", "rec_typed", "pred_n", "prec_strict", "prec_relaxed"):
            mine: dict[str, int] = getattr(self, name)
            for label, n in getattr(other, name).items():
                mine[label] = mine.get(label, 0) + n


def _bump(counter: dict[str, int], label: str, n: int = 1) -> None:
    counter[label] = counter.get(label, 0) + n


def _count(sample: dict[str, object], predicted: Sequence[PhiSpan]) -> _Counts:
    """The counts of one sentence (module docstring: the matching rule)."""
    c = _Counts(texts=1)
    text = str(sample["full_text"])
    raw_spans = sample.get("spans") or []
    assert isinstance(raw_spans, list)  # noqa: S101 - checked shape in load_presidio_file
    gold: list[tuple[int, int, str]] = []
    neutral: list[tuple[int, int]] = []
    for s in raw_spans:
        etype = str(s["entity_type"])
        start, end = int(s["start_position"]), int(s["end_position"])
        if etype in NOT_PHI:
            neutral.append((start, end))
            c.neutral_total += 1
        elif etype in TYPE_MAP:
            gold.append((start, end, TYPE_MAP[etype]))
    covered = {i for p in predicted for i in range(p.start, p.end)}
    for start, end, label in gold:
        c.gold_total += 1
        _bump(c.support, label)
        chars = _alnum_positions(text, start, end) or set(range(start, end))
        if chars <= covered:
            _bump(c.rec_strict, label)
        if any(p.start < end and start < p.end for p in predicted):
            _bump(c.rec_relaxed, label)
        typed = {i for p in predicted if p.label == label for i in range(p.start, p.end)}
        if chars <= typed:
            _bump(c.rec_typed, label)
    gold_chars = {i for start, end, _ in gold for i in range(start, end)}
    for p in predicted:
        in_phi = any(p.start < e and s < p.end for s, e, _ in gold)
        if not in_phi and any(p.start < e and s < p.end for s, e in neutral):
            continue
        chars = _alnum_positions(text, p.start, p.end) or set(range(p.start, p.end))
        share = len(chars & gold_chars) / len(chars)
        c.all_pred += 1
        _bump(c.pred_n, p.label)
        if share >= PRECISION_SHARE:
            c.all_strict += 1
        if in_phi:
            c.all_relaxed += 1
        same = {i for s, e, lab in gold if lab == p.label for i in range(s, e)}
        if len(chars & same) / len(chars) >= PRECISION_SHARE:
            _bump(c.prec_strict, p.label)
        if any(p.start < e and s < p.end for s, e, lab in gold if lab == p.label):
            _bump(c.prec_relaxed, p.label)
    return c


def _metrics(label: str, support: int, predicted: int, counts: tuple[int, int, int, int, int]) -> LabelMetrics:
    rec_s, rec_r, rec_t, prec_s, prec_r = counts
    r_s, r_r = _ratio(rec_s, support), _ratio(rec_r, support)
    p_s, p_r = _ratio(prec_s, predicted), _ratio(prec_r, predicted)
    target = TARGET_RECALL if label in TARGET_LABELS and support else None
    return LabelMetrics(
        label=label,
        support=support,
        predicted=predicted,
        recall_strict=r_s,
        recall_relaxed=r_r,
        recall_strict_typed=_ratio(rec_t, support),
        precision_strict=p_s,
        precision_relaxed=p_r,
        f1_strict=_f1(p_s, r_s),
        f1_relaxed=_f1(p_r, r_r),
        target=target,
        meets_target=(r_s is not None and r_s >= TARGET_RECALL) if target is not None else None,
    )


def _evaluation(c: _Counts, file: str, seconds: float) -> SpanEvaluation:
    per_label: list[LabelMetrics] = []
    for label in ENTITY_LABELS:
        support, predicted = c.support.get(label, 0), c.pred_n.get(label, 0)
        if not support and not predicted:
            continue
        per_label.append(
            _metrics(
                label,
                support,
                predicted,
                (
                    c.rec_strict.get(label, 0),
                    c.rec_relaxed.get(label, 0),
                    c.rec_typed.get(label, 0),
                    c.prec_strict.get(label, 0),
                    c.prec_relaxed.get(label, 0),
                ),
            )
        )
    overall = _metrics(
        "ALL",
        c.gold_total,
        c.all_pred,
        (sum(c.rec_strict.values()), sum(c.rec_relaxed.values()), sum(c.rec_typed.values()), c.all_strict,
         c.all_relaxed),
    )  # fmt: skip
    return SpanEvaluation(
        file=file,
        texts=c.texts,
        gold_spans=c.gold_total,
        neutral_gold_spans=c.neutral_total,
        matching_rule=MATCHING_RULE,
        per_label=tuple(per_label),
        overall=overall,
        seconds=round(seconds, 2),
        texts_per_second=round(c.texts / seconds, 1) if seconds else 0.0,
        missing_target_labels=tuple(label for label in TARGET_LABELS if not c.support.get(label)),
    )


def _detect_all(deidentifier: Deidentifier, samples: Sequence[dict[str, object]]) -> tuple[list[list[PhiSpan]], float]:
    started = time.perf_counter()
    predicted = [deidentifier.detect(str(sample["full_text"])) for sample in samples]
    return predicted, time.perf_counter() - started


def evaluate_spans(deidentifier: Deidentifier, path: Path) -> SpanEvaluation:
    """Span-level precision/recall per label and overall (module docstring: the matching rule)."""
    samples = load_presidio_file(path)
    predicted, seconds = _detect_all(deidentifier, samples)
    total = _Counts()
    for sample, spans in zip(samples, predicted, strict=True):
        total.add(_count(sample, spans))
    return _evaluation(total, str(path), seconds)


# ---------------------------------------------------------------------- template-grouped cross-validation


@runtime_checkable
class Tunable(Protocol):
    """A de-identifier with tuned settings: :meth:`variants` gives one de-identifier per candidate setting."""

    def variants(self) -> Mapping[str, Deidentifier]: ...


class FoldResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    fold: int
    templates: int
    texts: int
    selected: str
    """The candidate chosen on the other folds (the only one scored on this fold)."""
    recall_strict: float | None
    precision_strict: float | None


class CrossValidation(BaseModel):
    """Group k-fold figures on the dev file: every sentence is scored by the candidate setting chosen on folds that
    hold none of its template's sentences (the figure to tune against and to report beside the plain dev figure)."""

    model_config = ConfigDict(frozen=True)

    cv_by: str
    folds: int
    seed: int
    candidates: tuple[str, ...]
    selection_rule: str
    spans: SpanEvaluation
    """Pooled over the held-out folds."""
    per_fold: tuple[FoldResult, ...]
    selected_on_all: str
    """The candidate the same rule chooses on the whole dev file (the setting to ship)."""


DeidEvaluation.model_rebuild()

CV_BY: Final[tuple[str, ...]] = ("template",)
SELECTION_RULE: Final = (
    "highest strict recall among candidates with strict precision >= 0.90 on the training folds (none: highest "
    "strict F1); ties: higher precision, then the earlier candidate"
)
_PRECISION_FLOOR: Final = 0.90


def _select(names: Sequence[str], counts: Mapping[str, _Counts]) -> str:
    def key(name: str) -> tuple[int, float, float, int]:
        c = counts[name]
        r = sum(c.rec_strict.values()) / c.gold_total if c.gold_total else 0.0
        p = c.all_strict / c.all_pred if c.all_pred else 0.0
        ok = p >= _PRECISION_FLOOR
        f = 2 * p * r / (p + r) if p + r else 0.0
        return (int(ok), r if ok else f, p, -names.index(name))

    return max(names, key=key)


def template_folds(samples: Sequence[dict[str, object]], k: int, seed: int) -> list[int]:
    """The fold of each sample: templates shuffled with ``seed``, then dealt to the fold with the fewest sentences
    so far (largest templates first), so that folds are template-disjoint and of similar size."""
    by_template: dict[str, list[int]] = {}
    for i, sample in enumerate(samples):
        by_template.setdefault(str(sample.get("template_id")), []).append(i)
    if len(by_template) < k:
        raise DataError(f"cannot make {k} template folds from {len(by_template)} templates; use fewer folds")
    templates = sorted(by_template)
    random.Random(seed).shuffle(templates)  # noqa: S311 - a seeded, reproducible split
    templates.sort(key=lambda t: -len(by_template[t]))
    sizes = [0] * k
    fold_of = [0] * len(samples)
    for template in templates:
        fold = min(range(k), key=lambda f: (sizes[f], f))
        sizes[fold] += len(by_template[template])
        for i in by_template[template]:
            fold_of[i] = fold
    return fold_of


def evaluate_cv(
    deidentifier: Deidentifier | Mapping[str, Deidentifier],
    path: Path,
    *,
    cv_by: str = "template",
    folds: int = 5,
    seed: int = 20261128,
) -> CrossValidation:
    """Group k-fold cross-validation on a Presidio-format file, grouped by ``template_id``.

    ``deidentifier``: a mapping of candidate settings, a :class:`Tunable` (its :meth:`~Tunable.variants`), or one
    de-identifier (then the figure is its pooled held-out-fold figure: nothing is chosen). For each fold the
    candidate is chosen on the other folds by :data:`SELECTION_RULE` and scored on the fold.
    """
    if cv_by not in CV_BY:
        raise DataError(f"unknown cross-validation grouping {cv_by!r}; use one of {', '.join(CV_BY)}")
    if folds < 2:
        raise DataError(f"cross-validation needs at least 2 folds, got {folds}")
    if isinstance(deidentifier, Mapping):
        candidates = dict(deidentifier)
    elif isinstance(deidentifier, Tunable):
        candidates = dict(deidentifier.variants())
    else:
        candidates = {deidentifier.name: deidentifier}
    if not candidates:
        raise DataError("cross-validation needs at least one candidate de-identifier")
    samples = load_presidio_file(path)
    fold_of = template_folds(samples, folds, seed)
    names = list(candidates)
    per_sample: dict[str, list[_Counts]] = {}
    seconds: dict[str, float] = {}
    for name, candidate in candidates.items():
        predicted, seconds[name] = _detect_all(candidate, samples)
        per_sample[name] = [_count(s, p) for s, p in zip(samples, predicted, strict=True)]

    def pooled(name: str, in_folds: set[int]) -> _Counts:
        total = _Counts()
        for i, c in enumerate(per_sample[name]):
            if fold_of[i] in in_folds:
                total.add(c)
        return total

    every = set(range(folds))

    held_out = _Counts()
    results: list[FoldResult] = []
    for fold in range(folds):
        train = {name: pooled(name, every - {fold}) for name in names}
        chosen = _select(names, train)
        test = pooled(chosen, {fold})
        held_out.add(test)
        results.append(
            FoldResult(
                fold=fold,
                templates=len({str(samples[i].get("template_id")) for i in range(len(samples)) if fold_of[i] == fold}),
                texts=test.texts,
                selected=chosen,
                recall_strict=_ratio(sum(test.rec_strict.values()), test.gold_total),
                precision_strict=_ratio(test.all_strict, test.all_pred),
            )
        )
    on_all = _select(names, {name: pooled(name, every) for name in names})
    return CrossValidation(
        cv_by=cv_by,
        folds=folds,
        seed=seed,
        candidates=tuple(names),
        selection_rule=SELECTION_RULE,
        spans=_evaluation(held_out, str(path), sum(seconds.values()) / len(seconds)),
        per_fold=tuple(results),
        selected_on_all=on_all,
    )


def surviving_gold(deidentifier: Deidentifier, path: Path, mode: DeidMode) -> dict[str, float]:
    """Share of gold PHI values (>= 4 characters) still present verbatim after ``deidentify`` in ``mode``."""
    samples = load_presidio_file(path)
    total = survived = 0
    for i, sample in enumerate(samples):
        text = str(sample["full_text"])
        out = deidentifier.deidentify(text, patient_key=f"eval-{i}", mode=mode).text
        raw = sample.get("spans") or []
        for s in raw if isinstance(raw, list) else []:
            if s["entity_type"] in TYPE_MAP:
                value = text[int(s["start_position"]) : int(s["end_position"])].strip()
                if len(value) >= 4:
                    total += 1
                    survived += value.lower() in out.lower()
    return {
        "gold_values": float(total),
        "survived": float(survived),
        "survival_rate": survived / total if total else 0.0,
    }


# ---------------------------------------------------------------------- eponym over-redaction

_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|$)")
_XXXX = re.compile(r"X{2,}", re.IGNORECASE)
_EPONYM_TOKEN = re.compile(r"(?<![\w-])([A-Z][a-zà-ÿ]+(?:-[A-Z][a-zà-ÿ]+)*)(?:['\u2019]s)?(?![\w-])")


def _sentences(text: str) -> Iterator[str]:
    for m in _SENTENCE.finditer(text):
        sentence = " ".join(m.group().split())
        if len(sentence) >= 12:
            yield sentence


def _iu_sentences(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            report = json.loads(line)
            for field in ("indication", "comparison", "findings", "impression"):
                value = report.get(field)
                if isinstance(value, str):
                    yield from _sentences(value)


def _medquad_sentences(path: Path) -> Iterator[str]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            for field in ("question", "answer"):
                value = row.get(field)
                if isinstance(value, str):
                    yield from _sentences(value)


def eponym_occurrences(sentence: str) -> list[tuple[int, int]]:
    """Capitalised whole-word occurrences of an allow-listed eponym (any use, clinical or not)."""
    out: list[tuple[int, int]] = []
    for m in _EPONYM_TOKEN.finditer(sentence):
        word = m.group(1).lower()
        if word in MEDICAL_EPONYMS or any(part in MEDICAL_EPONYMS for part in word.split("-")):
            out.append((m.start(1), m.end(1)))
    return out


def _real_redactions(sentence: str, spans: Sequence[PhiSpan]) -> list[PhiSpan]:
    return [s for s in spans if _XXXX.sub("", sentence[s.start : s.end]).strip(" ,.-/")]


def evaluate_over_redaction(
    deidentifier: Deidentifier,
    data_dir: Path,
    *,
    max_eponym_sentences: int = 1500,
    other_sentences: int = 1000,
    seed: int = 20261128,
) -> OverRedaction:
    """Eponym over-redaction on IU X-ray reports and MedQuAD (module docstring)."""
    iu = data_dir / "iu_xray" / "reports.jsonl"
    medquad = data_dir / "medquad" / "medquad.jsonl.gz"
    for path in (iu, medquad):
        if not path.is_file():
            raise DataError(f"{path} not found; set SAGE_DATA_DIR to the shared data folder")
    rng = random.Random(seed)  # noqa: S311 - a seeded, reproducible sample, not a secret
    eponym: list[tuple[str, str]] = []
    others: list[tuple[str, str]] = []
    seen: set[str] = set()
    for source, sentences in (("iu_xray", _iu_sentences(iu)), ("medquad", _medquad_sentences(medquad))):
        for sentence in sentences:
            if sentence in seen:
                continue
            seen.add(sentence)
            (eponym if eponym_occurrences(sentence) else others).append((source, sentence))
    if len(eponym) > max_eponym_sentences:
        eponym = rng.sample(eponym, max_eponym_sentences)
    others = rng.sample(others, min(other_sentences, len(others)))
    occurrences = redacted = eponym_any = other_any = 0
    by_label: dict[str, int] = {}
    sources: dict[str, int] = {}
    for group, items in (("eponym", eponym), ("other", others)):
        for source, sentence in items:
            sources[source] = sources.get(source, 0) + 1
            spans = _real_redactions(sentence, deidentifier.detect(sentence))
            for span in spans:
                by_label[span.label] = by_label.get(span.label, 0) + 1
            if group == "eponym":
                occ = eponym_occurrences(sentence)
                occurrences += len(occ)
                redacted += sum(1 for s, e in occ if any(p.start < e and s < p.end for p in spans))
                eponym_any += bool(spans)
            else:
                other_any += bool(spans)
    rate = redacted / occurrences if occurrences else 0.0
    return OverRedaction(
        eponym_sentences=len(eponym),
        eponym_occurrences=occurrences,
        eponym_occurrences_redacted=redacted,
        eponym_redaction_rate=rate,
        eponym_sentences_with_any_redaction=eponym_any / len(eponym) if eponym else 0.0,
        other_sentences=len(others),
        other_sentences_with_any_redaction=other_any / len(others) if others else 0.0,
        redactions_by_label=dict(sorted(by_label.items())),
        sources=sources,
        meets_target=rate <= TARGET_OVER_REDACTION,
    )


def evaluate(
    deidentifier: Deidentifier,
    data_dir: Path,
    *,
    file: Path | None = None,
    mode: DeidMode | None = None,
    over_redaction: bool = True,
    cv_by: str | None = None,
    folds: int = 5,
) -> DeidEvaluation:
    """Both evaluations; ``file`` defaults to the shared dev file under ``data_dir``. ``cv_by="template"`` adds the
    template-grouped k-fold figures (:func:`evaluate_cv`; a :class:`Tunable` de-identifier's settings are chosen
    inside the folds)."""
    if cv_by is not None and cv_by not in CV_BY:
        raise DataError(f"unknown cross-validation grouping {cv_by!r}; use one of {', '.join(CV_BY)}")
    path = file or data_dir / DEV_FILE
    if not path.is_file():
        raise DataError(f"{path} not found; pass --file or set SAGE_DATA_DIR to the shared data folder")
    spans = evaluate_spans(deidentifier, path)
    over = evaluate_over_redaction(deidentifier, data_dir) if over_redaction else None
    check = surviving_gold(deidentifier, path, mode) if mode is not None else None
    cv = evaluate_cv(deidentifier, path, cv_by=cv_by, folds=folds) if cv_by is not None else None
    return DeidEvaluation(
        deidentifier=deidentifier.name, spans=spans, over_redaction=over, mode_check=check, cross_validation=cv
    )


def rows(evaluation: SpanEvaluation) -> Iterable[LabelMetrics]:
    """Per-label metrics followed by the overall line."""
    yield from evaluation.per_label
    yield evaluation.overall
