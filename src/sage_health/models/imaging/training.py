"""Training the chest X-ray image model from the images in the store.

**Training set** (:func:`build_training_set`): every current ``Image`` record that is a chest radiograph
(modality CR/DX/DR/RG or none, and body part CHEST/THORAX or a chest X-ray source), whose file passes the quality
checks (readable, grayscale, at least ``min_size`` on a side), labelled with the CheXpert-style labeler:

* if the image's ``study_id`` names a ``DiagnosticReport`` in the store, its findings + impression text;
* otherwise the dataset's own labels (``Image.labels``) as text: NIH ``Effusion|Infiltration`` ->
  ``"effusion. infiltration."``, ``No Finding`` -> ``"no finding."``, a pneumonia pathogen or a hierarchy such as
  ``Pneumonia/Viral/COVID-19`` -> ``"pneumonia."``, ``ARDS`` -> ``"bilateral opacities."`` (see
  :data:`DATASET_LABEL_TEXT`). Dataset labels are whole-image diagnoses, so any label other than *No Finding* makes
  No Finding negative (the labeler itself never says negative for No Finding, and calls text that names no
  observation, such as ``"hernia."``, normal).

Targets follow the U-Ones convention: positive and uncertain 1, negative 0, blank masked out of the loss.
Examples with all 14 labels blank are dropped. Every skipped image is counted under its reason.

**Training** (:func:`train_image_model`): MONAI DenseNet121 from random initialisation (no download), Adam, masked
``BCEWithLogits``, fixed seed and two torch threads (the same data and seed give bit-identical weights on the same
machine). About 20% of the patients (or studies, for images without a patient) are held out, chosen by the sha256
of the group id (independent of the seed, so models trained on the same store share one held-out set). The model
is written to a temporary folder, renamed into ``<models_dir>/image/<name>-<version>`` and only then registered
(``candidate``, backend ``monai-densenet121``) with its held-out evaluation (eval set
``image-heldout:<digest of the held-out images>``) and its **lineage**: an edge ``record:<id>`` ->
``model:<name>@<version>`` (relation ``trained``) from every training image and every report its labels came from,
written in the registration's transaction, so erasing a patient whose image trained the model taints it.
Held-out images only measure the model and get no edge.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from sage_health.core.config import Settings
from sage_health.core.errors import ConfigError, ModelError, StudyInputError
from sage_health.core.hashing import sha256_file
from sage_health.data.governance.lineage import record_node
from sage_health.data.schema import DiagnosticReport, Image
from sage_health.data.store.protocol import RecordReader, SearchFilters
from sage_health.models.evaluation.labeler import NO_FINDING, OBSERVATIONS, CheXpertLabeler, Label
from sage_health.models.imaging.encoder import BACKEND, META_FILE, WEIGHTS_FILE, build_densenet121
from sage_health.models.imaging.quality import check_image, load_pixels
from sage_health.models.registry import ModelRegistry

__all__ = [
    "CHEST_SOURCES",
    "DATASET_LABEL_TEXT",
    "HeldoutMetrics",
    "TrainResult",
    "TrainingExample",
    "TrainingSet",
    "auroc",
    "build_training_set",
    "dataset_labels_text",
    "split_heldout",
    "train_image_model",
    "training_lineage",
]

CHEST_SOURCES: Final = frozenset({"iu-xray", "covid-cxr", "nih-cxr14"})
"""Sources whose images are all chest radiographs (their ingest connectors set body part CHEST too)."""
_RADIOGRAPH_MODALITIES: Final = frozenset({"CR", "DX", "DR", "RG", "XR", "PX"})
_CHEST_WORDS: Final = ("CHEST", "THORAX", "LUNG")

_PNEUMONIA: Final = "pneumonia"
DATASET_LABEL_TEXT: Final[Mapping[str, str]] = {
    "no finding": "no finding",
    "pleural_thickening": "pleural thickening",
    "ards": "bilateral opacities",
    # pneumonia and its causes (the COVID-19 image collection's finding hierarchy: Pneumonia/Viral/COVID-19)
    **dict.fromkeys(
        (
            "covid-19",
            "sars",
            "mers",
            "mers-cov",
            "viral",
            "bacterial",
            "fungal",
            "influenza",
            "varicella",
            "herpes",
            "pneumocystis",
            "streptococcus",
            "staphylococcus",
            "klebsiella",
            "legionella",
            "e.coli",
            "mycoplasma",
            "mycoplasma bacterial pneumonia",
            "chlamydophila",
            "aspergillosis",
            "nocardia",
            "lipoid",
            "aspiration",
        ),
        _PNEUMONIA,
    ),
}
"""Dataset label (lower case) -> text for the labeler; other labels are used as written (``_`` as a space)."""

_HELDOUT_SHARE: Final = 0.2

LabelSource = Literal["report", "dataset"]


def dataset_labels_text(labels: Iterable[str]) -> str:
    """Dataset labels as labeler text: ``["Effusion", "Infiltration"]`` -> ``"effusion. infiltration."``."""
    phrases: dict[str, None] = {}
    for label in labels:
        for part in label.replace("|", ",").split(","):
            pieces = [p.strip().lower() for p in part.split("/") if p.strip()]
            for piece in pieces:
                phrases.setdefault(DATASET_LABEL_TEXT.get(piece, piece.replace("_", " ")), None)
    return " ".join(f"{p}." for p in phrases)


@dataclass(frozen=True)
class TrainingExample:
    """One labelled training image."""

    record_id: str
    path: str
    pixel_sha256: str
    group: str
    """The split unit: the patient id, else the study id, else the record id."""
    label_source: LabelSource
    labels: Mapping[str, Label]
    view: str | None = None
    label_record_id: str | None = None
    """The ``DiagnosticReport`` the labels were read from (``label_source == "report"``)."""

    def targets(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """(targets, mask) over :data:`OBSERVATIONS`: positive/uncertain 1, negative 0; blank masked (mask 0)."""
        values = np.zeros(len(OBSERVATIONS), dtype=np.float32)
        mask = np.zeros(len(OBSERVATIONS), dtype=np.float32)
        for i, name in enumerate(OBSERVATIONS):
            label = self.labels[name]
            if label is not Label.BLANK:
                mask[i] = 1.0
                values[i] = 0.0 if label is Label.NEGATIVE else 1.0
        return values, mask


@dataclass(frozen=True)
class TrainingSet:
    """The labelled examples (ordered by record id) and how many images were skipped, per reason."""

    examples: tuple[TrainingExample, ...]
    skipped: Mapping[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)

    def label_counts(self) -> dict[str, dict[str, int]]:
        """Per observation: how many examples are positive / uncertain / negative / blank."""
        counts = {name: dict.fromkeys(("positive", "uncertain", "negative", "blank"), 0) for name in OBSERVATIONS}
        for ex in self.examples:
            for name in OBSERVATIONS:
                counts[name][ex.labels[name].value] += 1
        return counts


def _is_chest(record: Image) -> bool:
    body = (record.body_part or "").upper()
    return any(word in body for word in _CHEST_WORDS) or (not body and record.source in CHEST_SOURCES)


def _report_text(store: RecordReader, study_id: str | None) -> str | None:
    if not study_id:
        return None
    stored = store.get(study_id)
    if stored is None or not isinstance(stored.record, DiagnosticReport):
        return None
    sections = stored.record.report_sections
    text = "\n".join(t.strip() for t in (sections.findings, sections.impression) if t and t.strip())
    return text or None


def build_training_set(store: RecordReader, labeler: CheXpertLabeler, *, min_size: int | None = None) -> TrainingSet:
    """Every chest radiograph in the store with its CheXpert-style labels (see the module docstring)."""
    skipped: Counter[str] = Counter()
    pending: list[tuple[Image, str | None, LabelSource, str]] = []
    for stored in store.iter_records(SearchFilters(resource_types=("Image",))):
        record = stored.record
        if not isinstance(record, Image):
            continue
        modality = (record.modality or "").upper()
        if modality and modality not in _RADIOGRAPH_MODALITIES:
            skipped[f"not a radiograph (modality {modality})"] += 1
            continue
        if not _is_chest(record):
            skipped[f"not a chest image (body part {record.body_part or 'unknown'})"] += 1
            continue
        check = check_image(Path(record.pixel_ref), min_size=min_size or 1, view=record.view)
        if not check.readable:
            skipped["unreadable image file"] += 1
            continue
        if not check.grayscale:
            skipped["colour image, not a radiograph"] += 1
            continue
        if not check.usable:
            skipped[f"smaller than {min_size} pixels on a side"] += 1
            continue
        report = _report_text(store, record.study_id)
        if report is not None:
            pending.append((record, check.view, "report", report))
        elif record.labels:
            pending.append((record, check.view, "dataset", dataset_labels_text(record.labels)))
        else:
            skipped["no report and no dataset labels"] += 1
    results = labeler.label_many(text for _, _, _, text in pending)
    examples: list[TrainingExample] = []
    for (record, view, source, _), result in zip(pending, results, strict=True):
        labels = dict(result.labels)
        if source == "dataset" and any(lab.strip().lower() != "no finding" for lab in record.labels):
            labels[NO_FINDING] = Label.NEGATIVE  # a diagnosis other than "No Finding": the image is not normal
        if all(labels[name] is Label.BLANK for name in OBSERVATIONS):
            skipped["all 14 labels blank"] += 1
            continue
        examples.append(
            TrainingExample(
                record_id=record.id,
                path=record.pixel_ref,
                pixel_sha256=record.pixel_sha256,
                group=record.patient_id or record.study_id or record.id,
                label_source=source,
                labels=labels,
                view=view,
                label_record_id=record.study_id if source == "report" else None,
            )
        )
    return TrainingSet(tuple(examples), dict(sorted(skipped.items())))


def _digest(keys: Iterable[str]) -> str:
    h = hashlib.sha256()
    for key in sorted(keys):
        h.update(key.encode("utf-8") + b"\n")
    return h.hexdigest()


def _example_keys(examples: Iterable[TrainingExample]) -> list[str]:
    return [f"{ex.record_id} {ex.pixel_sha256}" for ex in examples]


def split_heldout(
    examples: Sequence[TrainingExample], share: float = _HELDOUT_SHARE
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """(train, held-out): ``round(share x groups)`` groups (at least one when there are two or more) held out,
    the groups with the smallest sha256 of their id; all images of a patient/study land on the same side."""
    groups = sorted({ex.group for ex in examples}, key=lambda g: hashlib.sha256(g.encode("utf-8")).hexdigest())
    n_held = round(share * len(groups))
    if len(groups) >= 2:
        n_held = min(max(n_held, 1), len(groups) - 1)
    held = set(groups[:n_held])
    return [ex for ex in examples if ex.group not in held], [ex for ex in examples if ex.group in held]


def auroc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float | None:
    """Area under the ROC curve by the rank-sum (Mann-Whitney U) formula, ties at half rank; None when the labels
    do not hold both classes."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


class HeldoutMetrics(BaseModel):
    model_config = ConfigDict(frozen=True)

    n: int
    loss: float | None
    """Masked BCE over the labelled (non-blank) targets of the held-out images."""
    auroc: dict[str, float]
    """Per observation, where the held-out images hold both classes."""
    mean_auroc: float | None
    labelled: dict[str, int]
    """Per observation: held-out images with a (non-blank) label."""


class TrainResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    ref: str
    folder: str
    weights_sha256: str
    n_train: int
    n_heldout: int
    skipped: dict[str, int]
    label_counts: dict[str, dict[str, int]]
    train_loss: list[float | None]
    """Mean masked BCE per epoch (None: no labelled target in the epoch)."""
    heldout: HeldoutMetrics
    eval_set: str
    source_digest: str
    seconds: float
    meta: dict[str, Any]


def _masked_bce(logits: Any, targets: Any, mask: Any) -> Any:
    import torch

    per = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (per * mask).sum() / mask.sum().clamp(min=1.0)


def _targets(examples: Sequence[TrainingExample]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    targets = np.zeros((len(examples), len(OBSERVATIONS)), dtype=np.float32)
    masks = np.zeros_like(targets)
    for i, ex in enumerate(examples):
        targets[i], masks[i] = ex.targets()
    return targets, masks


def _pixels(examples: Sequence[TrainingExample], size: int) -> npt.NDArray[np.float32]:
    """One batch of model inputs, decoded from the files (memory stays bounded by the batch, not the data set)."""
    return np.stack([load_pixels(Path(ex.path), size) for ex in examples])


def _evaluate(net: Any, examples: Sequence[TrainingExample], size: int) -> HeldoutMetrics:
    import torch

    n = len(examples)
    if n == 0:
        return HeldoutMetrics(n=0, loss=None, auroc={}, mean_auroc=None, labelled={})
    targets, masks = _targets(examples)
    net.eval()
    logits_parts = []
    with torch.inference_mode():
        for start in range(0, n, 32):
            logits_parts.append(net(torch.from_numpy(_pixels(examples[start : start + 32], size))))
        logits = torch.cat(logits_parts)
        t, m = torch.from_numpy(targets), torch.from_numpy(masks)
        loss = float(_masked_bce(logits, t, m)) if float(m.sum()) > 0 else None
        probs = torch.sigmoid(logits).double().numpy()
    aurocs: dict[str, float] = {}
    labelled: dict[str, int] = {}
    for i, name in enumerate(OBSERVATIONS):
        keep = masks[:, i] > 0
        labelled[name] = int(keep.sum())
        value = auroc(probs[keep, i], targets[keep, i]) if keep.any() else None
        if value is not None:
            aurocs[name] = round(value, 6)
    mean = round(float(np.mean(list(aurocs.values()))), 6) if aurocs else None
    return HeldoutMetrics(
        n=n, loss=None if loss is None else round(loss, 6), auroc=aurocs, mean_auroc=mean, labelled=labelled
    )


def training_lineage(examples: Iterable[TrainingExample]) -> list[tuple[str, str]]:
    """Lineage edges ``(record node, "trained")`` of the records that trained a model: the images and the
    reports their labels came from (each once, sorted)."""
    ids = {ex.record_id for ex in examples} | {ex.label_record_id for ex in examples if ex.label_record_id}
    return [(record_node(rid), "trained") for rid in sorted(ids)]


def _version(weights_sha: str) -> str:
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{weights_sha[:8]}"


def _fsync_dir_files(folder: Path) -> None:
    for path in folder.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())


def train_image_model(
    settings: Settings,
    store: RecordReader,
    labeler: CheXpertLabeler,
    *,
    epochs: int = 5,
    image_size: int = 224,
    batch_size: int = 16,
    seed: int = 0,
    limit: int | None = None,
    name: str | None = None,
    actor: str = "cli",
    learning_rate: float = 1e-4,
) -> TrainResult:
    """Train, save and register (as a ``candidate``) a chest X-ray model on the store's images."""
    import torch
    from safetensors.torch import save_file

    if epochs < 1 or batch_size < 1 or image_size < 32:
        raise ConfigError("epochs and batch_size must be >= 1 and image_size >= 32")
    started = time.perf_counter()
    name = name or settings.image_model
    training_set = build_training_set(store, labeler, min_size=settings.image_min_size)
    examples = list(training_set.examples)
    if limit is not None:  # a deterministic sample spread over all sources (not the first ids of one source)
        examples = sorted(examples, key=lambda ex: hashlib.sha256(ex.record_id.encode("utf-8")).hexdigest())[:limit]
        examples.sort(key=lambda ex: ex.record_id)
    if len(examples) < 2:
        raise ModelError(
            f"only {len(examples)} labelled chest image(s) in the store {settings.store} (skipped: "
            f"{dict(training_set.skipped) or 'none'}); ingest chest X-rays with reports or dataset labels first"
        )
    train, heldout = split_heldout(examples)
    used = TrainingSet(tuple(examples), training_set.skipped)

    torch.set_num_threads(2)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_y, train_m = _targets(train)
    net = build_densenet121(len(OBSERVATIONS))
    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
    epoch_losses: list[float | None] = []
    try:
        for _ in range(epochs):
            net.train()
            order = rng.permutation(len(train))
            total, weight = 0.0, 0.0
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                if len(idx) < 2 and len(order) > 1:
                    continue  # batch norm needs two images; the leftover one is seen in other epochs' orders
                x = torch.from_numpy(_pixels([train[i] for i in idx], image_size))
                y, m = torch.from_numpy(train_y[idx]), torch.from_numpy(train_m[idx])
                optimizer.zero_grad()
                loss = _masked_bce(net(x), y, m)
                loss.backward()
                optimizer.step()
                total += float(loss) * float(m.sum())
                weight += float(m.sum())
            epoch_losses.append(round(total / weight, 6) if weight else None)
        metrics = _evaluate(net, heldout, image_size)
    except StudyInputError as exc:
        raise ModelError(f"a training image became unreadable during training: {exc}") from exc

    source_digest = _digest(_example_keys(examples))
    heldout_digest = _digest(_example_keys(heldout))
    eval_set = f"image-heldout:{heldout_digest[:16]}"
    train_counts = {
        name_: {"positive": int(((train_y[:, i] == 1) & (train_m[:, i] > 0)).sum()),
                "negative": int(((train_y[:, i] == 0) & (train_m[:, i] > 0)).sum())}
        for i, name_ in enumerate(OBSERVATIONS)
    }  # fmt: skip
    meta: dict[str, Any] = {
        "format": 1,
        "backend": BACKEND,
        "architecture": "monai.networks.nets.DenseNet121(spatial_dims=2, in_channels=1, out_channels=14)",
        "init": "random (no pretrained weights)",
        "observations": list(OBSERVATIONS),
        "image_size": image_size,
        "preprocessing": "quality.load_pixels: 1 channel, pad to square, bilinear resize, [0, 1]",
        "targets": "U-Ones: positive/uncertain 1, negative 0, blank masked",
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "optimizer": "Adam",
        "seed": seed,
        "torch_threads": 2,
        "limit": limit,
        "n_train": len(train),
        "n_heldout": len(heldout),
        "label_sources": dict(Counter(ex.label_source for ex in examples)),
        "label_counts": used.label_counts(),
        "train_targets": train_counts,
        "skipped": dict(training_set.skipped),
        "train_loss": epoch_losses,
        "heldout": metrics.model_dump(),
        "eval_set": eval_set,
        "source_digest": source_digest,
        "source_digest_of": "sha256 of the sorted lines '<image record id> <pixel sha256>' of the examples used",
        "torch_version": torch.__version__,
    }

    root = settings.models_dir / "image"
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{name}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE))
        weights_sha = sha256_file(tmp / WEIGHTS_FILE)
        meta["weights_sha256"] = weights_sha
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
        _fsync_dir_files(tmp)
        registry = ModelRegistry(settings.db_path)
        version = _version(weights_sha)
        suffix = 1
        while (root / f"{name}-{version}").exists() or any(v.version == version for v in registry.list_versions(name)):
            suffix += 1
            version = f"{_version(weights_sha)}-{suffix}"
        folder = root / f"{name}-{version}"
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        registry.register(
            name,
            backend=BACKEND,
            version=version,
            adapter_path=folder,
            dataset_snapshot_id=f"image-records:{source_digest[:16]}",
            config=meta,
            inputs=training_lineage(train),
            description=(
                f"DenseNet121 chest X-ray model, {len(train)} training / {len(heldout)} held-out images, "
                f"{epochs} epoch(s) at {image_size}px, seed {seed}"
            ),
            actor=actor,
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # never leave an unregistered model folder behind
        raise
    registry.record_evaluation(
        name,
        version,
        eval_set=eval_set,
        run_id=f"train-{version}",
        metrics=metrics.model_dump(),
    )
    return TrainResult(
        name=name,
        version=version,
        ref=f"{name}@{version}",
        folder=str(folder),
        weights_sha256=weights_sha,
        n_train=len(train),
        n_heldout=len(heldout),
        skipped=dict(training_set.skipped),
        label_counts=used.label_counts(),
        train_loss=epoch_losses,
        heldout=metrics,
        eval_set=eval_set,
        source_digest=source_digest,
        seconds=round(time.perf_counter() - started, 3),
        meta=meta,
    )
