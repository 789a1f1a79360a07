"""Registering a trained LoRA adapter: a content-addressed copy under ``<models_dir>/lora/`` and a ``candidate``
version whose lineage is its dataset snapshot (:func:`register_lora_candidate`).
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sage_health.core.errors import ConfigError, StoreError
from sage_health.core.hashing import sha256_file
from sage_health.models.adaptation.lora_config import ADAPTER_WEIGHTS, TRAINING_JSON, LoraResult
from sage_health.models.adaptation.lora_runs import _adapter_sha, _fsync_tree
from sage_health.models.registry import ModelRegistry, ModelVersion

# ---------------------------------------------------------------------------------------------- registry


def _default_models_dir(result: LoraResult) -> Path:
    if result.run_dir.parent.name == "lora-runs":
        return result.run_dir.parent.parent
    raise ConfigError(
        f"{result.run_dir} is not under <models_dir>/lora-runs: pass models_dir to register_lora_candidate"
    )


def _stable_adapter_copy(result: LoraResult, name: str, models_dir: Path) -> Path:
    """Copy the adapter (and its training.json) to ``<models_dir>/lora/<name>-<sha256[:16]>`` (content-addressed,
    written in a temporary folder and renamed); an existing copy is reused after checking its weights."""
    root = models_dir / "lora"
    root.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", name)
    final = root / f"{safe}-{result.adapter_sha256[:16]}"
    if final.is_dir():
        if _adapter_sha(final) != result.adapter_sha256:
            raise StoreError(f"{final} holds other adapter weights than its name says; remove it and register again")
        return final
    if sha256_file(result.adapter_dir / ADAPTER_WEIGHTS) != result.adapter_sha256:
        raise StoreError(f"{result.adapter_dir} changed since training; train again")
    tmp = root / f".tmp-{safe}-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(result.adapter_dir, tmp)
        training = result.run_dir / TRAINING_JSON
        if training.is_file():
            shutil.copyfile(training, tmp / TRAINING_JSON)
        _fsync_tree(tmp)
        try:
            tmp.rename(final)
        except OSError:
            if not final.is_dir():  # anything but a concurrent copy of the same adapter is an error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def register_lora_candidate(
    registry: ModelRegistry,
    result: LoraResult,
    *,
    name: str,
    snapshot_ref: str,
    base: str,
    registry_fields: Mapping[str, Any],
    parent: str | None,
    actor: str,
    description: str | None = None,
    models_dir: Path | None = None,
) -> ModelVersion:
    """Register the adapter as a ``candidate`` of ``name`` trained on ``snapshot_ref`` (its lineage) with its
    training config and metrics, ``parent`` (the model ref the adapter was initialised from), base and task.

    The adapter is copied to ``<models_dir>/lora/`` (default: the models folder ``result.run_dir`` lives in) so
    the registered path stays valid whatever happens to the run folder. Registering the same adapter on the same
    snapshot twice returns the existing version."""
    for existing in registry.list_versions(name):
        if (
            existing.adapter_sha256 == result.adapter_sha256
            and existing.dataset_snapshot_id == snapshot_ref
            and existing.config.get("parent") == parent
        ):
            return existing
    folder = _stable_adapter_copy(result, name, models_dir or _default_models_dir(result))
    options = dict(registry_fields.get("backend_options", {}))
    config: dict[str, Any] = {
        "kind": "lora",
        "training": result.config.as_dict(),
        "metrics": result.metrics(),
        "parent": parent,
        "base": base,
        "task": result.config.task,
        "snapshot": snapshot_ref,
        "run_dir": str(result.run_dir),
        "loss_plot": str(result.loss_plot),
        "backend_options": options,
    }
    metrics = result.metrics()
    text = description or (
        f"LoRA r={result.config.rank} {result.config.task} adapter on {base} from snapshot {snapshot_ref}: "
        f"{result.steps} steps, {result.examples} examples, loss {metrics['first_loss']} -> {metrics['last_loss']}"
        + (f", continued from {parent}" if parent else "")
    )
    return registry.register(
        name,
        backend=str(registry_fields["backend"]),
        base_model=registry_fields.get("base_model"),
        adapter_path=folder,
        dataset_snapshot_id=snapshot_ref,
        config=config,
        description=text,
        actor=actor,
    )
