"""Training use cases: a LoRA adapter on a dataset snapshot (``sage-health train lora``) and the chest X-ray image
model on the store's images (``sage-health train image-model``).

Both are policy action ``train`` and read the store as secondary use (``GovernedStore.acting(Action.TRAIN)``:
research opt-outs are excluded whatever the purpose). The LoRA rules — tainted snapshots, identified snapshots for
de-identified principals, snapshots holding records of patients who opted out since, tainted or mismatched parent
adapters — are :mod:`sage_health.models.training_rules` (shared with the co-evolution loop); every refusal is
audited. The image model gets lineage edges to the records it was trained on, so an erasure taints it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sage_health.core.config import Settings
from sage_health.core.errors import PolicyViolation, ValidationError
from sage_health.data.datasets import SnapshotInfo
from sage_health.data.governance.policy import Action
from sage_health.models.adaptation.lora import (
    LORA_TASKS,
    LoraConfig,
    LoraResult,
    base_registry_fields,
    lora_run_dir,
    register_lora_candidate,
    snapshot_train_items,
    train_lora,
)
from sage_health.models.catalog import BUILTIN_MODELS
from sage_health.models.evaluation.labeler import CheXpertLabeler
from sage_health.models.imaging.training import TrainResult, train_image_model
from sage_health.models.registry import ModelVersion
from sage_health.models.training_rules import ParentAdapter, parent_for_training, snapshot_for_training
from sage_health.services.session import Session


@dataclass(frozen=True)
class TrainingProgress:
    """One progress report of a training run: a ``message`` (what is about to happen) or a finished ``step``."""

    message: str | None = None
    step: int = 0
    total: int = 0
    loss: float | None = None


OnProgress = Callable[[TrainingProgress], None]


# ---------------------------------------------------------------------------------------------- LoRA


@dataclass(frozen=True)
class LoraRequest:
    """What to train (the ``train lora`` options)."""

    snapshot: str
    """Dataset snapshot ``NAME`` or ``NAME@HASH`` (its train split is used)."""
    base: str | None = None
    """``smollm2`` (default) or a folder saved with ``save_pretrained``."""
    task: str | None = None
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 8
    learning_rate: float = 2e-4
    max_length: int = 320
    rank: int = 8
    seed: int = 0
    checkpoint_every: int = 20
    limit: int | None = None
    init_adapter: str | None = None
    """A registered model whose adapter to continue."""
    resume: bool = False
    name: str | None = None


@dataclass(frozen=True)
class LoraTraining:
    """A trained and registered adapter."""

    model: ModelVersion
    result: LoraResult
    snapshot: str
    name: str
    base: str
    parent: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.ref,
            "stage": self.model.stage,
            "snapshot": self.snapshot,
            "adapter_path": self.model.adapter_path,
            "name": self.name,
            "base": self.base,
            "parent": self.parent,
            **self.result.as_dict(),
        }


def default_lora_name(settings: Settings, base: str, task: str) -> str:
    """``settings.generator`` for a SmolLM2 adapter (unless that names another built-in backend), else
    ``lora-<task>``."""
    if base == "smollm2":
        gen = settings.generator
        return gen if gen == "smollm2" or gen not in BUILTIN_MODELS else "smollm2"
    return f"lora-{task}"


def _check_task(info: SnapshotInfo, task: str | None) -> str:
    the_task = task or info.task
    if the_task not in LORA_TASKS:
        raise ValidationError(
            f"snapshot {info.ref} is a {info.task!r} snapshot; LoRA trains {', '.join(LORA_TASKS)}: "
            f"build a snapshot with --task {LORA_TASKS[0]} (or findings, qa)"
        )
    if the_task != info.task:
        raise ValidationError(
            f"snapshot {info.ref} holds {info.task} items, whose input/target are not task "
            f"{the_task}'s; build a snapshot with --task {the_task}"
        )
    return the_task


def train_lora_adapter(
    session: Session, request: LoraRequest, *, on_progress: OnProgress | None = None
) -> LoraTraining:
    """Train a LoRA adapter on the snapshot's train split and register it as a ``candidate`` (lineage: snapshot
    -> model, parent adapter -> model). Refused (audited) when a rule of :mod:`~sage_health.models.training_rules`
    forbids it; nothing is trained or registered then."""
    settings = session.settings
    governed = session.governed().acting(Action.TRAIN)
    info = snapshot_for_training(governed, settings, request.snapshot)
    the_task = _check_task(info, request.task)
    registry = session.registry
    parent: ParentAdapter | None = None
    the_base = request.base or "smollm2"
    if request.init_adapter:
        parent = parent_for_training(governed, registry, request.init_adapter, request.base)
        the_base = parent.base
    config = LoraConfig(
        task=the_task,
        steps=request.steps,
        epochs=request.epochs,
        batch_size=request.batch_size,
        learning_rate=request.learning_rate,
        max_length=request.max_length,
        rank=request.rank,
        alpha=2 * request.rank,
        seed=request.seed,
        checkpoint_every=request.checkpoint_every,
        limit=request.limit,
    )
    items = snapshot_train_items(info)
    the_name = request.name or default_lora_name(settings, the_base, the_task)
    init_path = parent.adapter if parent is not None else None
    run_dir = lora_run_dir(
        settings, name=the_name, snapshot_ref=info.ref, config=config, base=the_base, init_adapter=init_path
    )
    report = on_progress or (lambda _event: None)
    report(
        TrainingProgress(
            message=f"LoRA {the_task} on {info.ref} ({len(items)} train items), base {the_base}; run folder {run_dir}"
        )
    )

    def tick(step: int, total: int, loss: float) -> None:
        report(TrainingProgress(step=step, total=total, loss=loss))

    result = train_lora(
        items,
        base=the_base,
        settings=settings,
        run_dir=run_dir,
        config=config,
        init_adapter=init_path,
        resume=request.resume,
        progress=tick,
        snapshot_ref=info.ref,
    )
    model = register_lora_candidate(
        registry,
        result,
        name=the_name,
        snapshot_ref=info.ref,
        base=the_base,
        registry_fields=base_registry_fields(the_base),
        parent=parent.model.ref if parent is not None else None,
        actor=session.principal,
        models_dir=settings.models_dir,
    )
    parent_ref = model.config.get("parent")
    governed.log(
        Action.TRAIN.value,
        detail={
            "model": model.ref,
            "snapshot": info.ref,
            "task": the_task,
            "steps": result.steps,
            "adapter_sha256": result.adapter_sha256,
            "parent": parent_ref,
        },
    )
    return LoraTraining(
        model=model,
        result=result,
        snapshot=info.ref,
        name=the_name,
        base=the_base,
        parent=parent_ref if isinstance(parent_ref, str) else None,
    )


# ---------------------------------------------------------------------------------------------- image model


@dataclass(frozen=True)
class ImageModelRequest:
    epochs: int = 5
    image_size: int = 224
    batch_size: int = 16
    limit: int | None = None
    seed: int = 0
    name: str | None = None
    by: str | None = None
    """Who trains it: must be the acting principal when given."""


def train_image(session: Session, request: ImageModelRequest, *, on_progress: OnProgress | None = None) -> TrainResult:
    """Train the chest X-ray model on the chest images the principal may train on (opt-outs excluded) and
    register it as a ``candidate`` with lineage edges from its training records."""
    governed = session.governed().acting(Action.TRAIN)
    if request.by and request.by != session.principal:
        raise PolicyViolation(f"--by {request.by!r} differs from the acting principal {session.principal!r}")
    settings = session.settings
    labeler = CheXpertLabeler.from_data_dir(settings.data_dir)
    if on_progress is not None:
        on_progress(TrainingProgress(message=f"training image model on the chest images in {settings.store} ..."))
    result = train_image_model(
        settings,
        governed,
        labeler,
        epochs=request.epochs,
        image_size=request.image_size,
        batch_size=request.batch_size,
        seed=request.seed,
        limit=request.limit,
        name=request.name,
        actor=session.principal,
    )
    governed.log(
        Action.TRAIN.value,
        detail={
            "model": result.ref,
            "train_images": result.n_train,
            "heldout_images": result.n_heldout,
            "weights_sha256": result.weights_sha256,
        },
    )
    return result
