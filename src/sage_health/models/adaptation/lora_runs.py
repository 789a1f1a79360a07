"""LoRA run folders: where a run lives (:func:`lora_run_dir`), atomic writes, the run lock, checkpoints (write,
load, prune, resume identity) and a finished run read back from ``training.json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sage_health.core.config import Settings
from sage_health.core.errors import ModelLoadError, StoreError, ValidationError
from sage_health.core.hashing import canonical_json, sha256_file, sha256_json
from sage_health.models.adaptation.lora_config import (
    _CKPT_RE,
    _FORMAT,
    _KEEP_CHECKPOINTS,
    _MARKER,
    _STATE_FILE,
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    CHECKPOINTS_DIR,
    LOSS_PLOT,
    TRAINING_JSON,
    LoraConfig,
    LoraResult,
    _is_smollm2,
)

# ---------------------------------------------------------------------------------------------- run folders


def _snapshot_hash(snapshot_ref: str) -> str:
    _, sep, digest = snapshot_ref.partition("@")
    return digest if sep and digest else sha256_json(snapshot_ref)[:16]


def _adapter_sha(folder: Path | None) -> str | None:
    if folder is None:
        return None
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file() or not (folder / ADAPTER_CONFIG).is_file():
        raise ModelLoadError(f"{folder} is not a LoRA adapter folder ({ADAPTER_WEIGHTS} + {ADAPTER_CONFIG})")
    return sha256_file(weights)


def _base_identity(base: str) -> str:
    return base if _is_smollm2(base) else str(Path(base).resolve())


def lora_run_dir(
    settings: Settings, *, name: str, snapshot_ref: str, config: LoraConfig, base: str, init_adapter: Path | None
) -> Path:
    """``<models_dir>/lora-runs/<name>-<snapshot hash>-<task>-<digest>``: the same command finds the same folder
    (so ``--resume`` finds its checkpoints). ``digest`` is :meth:`LoraConfig.digest` when training from the plain
    smollm2 base; with another base or an initial adapter, 12 hex digits of the sha256 of the config digest, the
    base and the initial adapter's weights, so different starting points never share a folder."""
    init_sha = _adapter_sha(init_adapter)
    digest = config.digest()
    if not _is_smollm2(base) or init_sha is not None:
        digest = sha256_json({"config": digest, "base": _base_identity(base), "init_adapter": init_sha})[:12]
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", name)
    return settings.models_dir / "lora-runs" / f"{safe}-{_snapshot_hash(snapshot_ref)}-{config.task}-{digest}"


def _complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint with its completion marker, oldest first."""
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found: list[tuple[int, Path]] = []
    for child in root.iterdir():
        m = _CKPT_RE.match(child.name)
        if m and child.is_dir() and (child / _MARKER).is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a complete checkpoint to resume from (or a finished adapter)."""
    return bool(_complete_checkpoints(run_dir)) or _finished(run_dir)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _publish_folder(tmp: Path, final: Path) -> None:
    """Rename a finished temporary folder into place (replacing an older one of the same name)."""
    _fsync_tree(tmp)
    if final.exists():
        old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


@contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    """One training process per run folder (an advisory lock, released by the OS if the process dies)."""
    import fcntl

    with (run_dir / ".lock").open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise ValidationError(f"another process is training in {run_dir}; wait for it to finish") from exc
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _clean_leftovers(run_dir: Path) -> None:
    """Temporary folders of a killed process (never complete, never used)."""
    for parent in (run_dir, run_dir / CHECKPOINTS_DIR):
        if parent.is_dir():
            for child in parent.iterdir():
                if child.name.startswith((".tmp-", ".old-")) and child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)


def _prune(run_dir: Path) -> None:
    complete = _complete_checkpoints(run_dir)
    for _, folder in complete[:-_KEEP_CHECKPOINTS]:
        shutil.rmtree(folder, ignore_errors=True)
    newest = complete[-1][0] if complete else None
    root = run_dir / CHECKPOINTS_DIR
    for child in root.iterdir() if root.is_dir() else ():
        m = _CKPT_RE.match(child.name)
        if m and newest is not None and int(m.group(1)) < newest and not (child / _MARKER).is_file():
            shutil.rmtree(child, ignore_errors=True)


@dataclass
class _State:
    step: int = 0
    loss_curve: list[tuple[int, float]] = field(default_factory=list)
    tokens: int = 0
    total_seconds: float = 0.0
    train_seconds: float = 0.0


def _identity(config: LoraConfig, base: str, init_sha: str | None, data_digest: str) -> dict[str, Any]:
    return {
        "config": config.as_dict(),
        "base": _base_identity(base),
        "init_adapter_sha256": init_sha,
        "data": data_digest,
    }


def _check_identity(run_dir: Path, saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> None:
    differs = [key for key in ("config", "base", "init_adapter_sha256", "data") if saved.get(key) != wanted.get(key)]
    if differs:
        raise ValidationError(
            f"{run_dir} holds a run with another {' / '.join(differs)} (config, base model, initial adapter or train "
            "items); resume with the same command, or remove the folder to start over"
        )


def _save_checkpoint(run_dir: Path, model: Any, optimizer: Any, scheduler: Any, state: _State, ident: Any) -> Path:
    import torch

    root = run_dir / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:06d}"
    tmp = root / f".tmp-step-{state.step:06d}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        model.save_pretrained(str(tmp / ADAPTER_DIR), save_embedding_layers=False)
        payload = {
            "format": _FORMAT,
            "step": state.step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "loss_curve": [[s, v] for s, v in state.loss_curve],
            "tokens": state.tokens,
            "total_seconds": state.total_seconds,
            "train_seconds": state.train_seconds,
            "identity": canonical_json(ident),
        }
        torch.save(payload, tmp / _STATE_FILE)
        (tmp / _MARKER).write_text(json.dumps({"step": state.step}) + "\n", encoding="utf-8")
        _publish_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(run_dir)
    return final


def _load_checkpoint(folder: Path) -> dict[str, Any]:
    import torch

    try:
        payload: dict[str, Any] = torch.load(folder / _STATE_FILE, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise StoreError(f"checkpoint {folder} is unreadable ({type(exc).__name__}); remove it to resume from the "
                         "one before")  from exc  # fmt: skip
    return payload


def _result_from_json(run_dir: Path, started: float) -> LoraResult:
    try:
        data = json.loads((run_dir / TRAINING_JSON).read_text(encoding="utf-8"))
        config = LoraConfig.from_dict(data["config"])
        return LoraResult(
            adapter_dir=run_dir / ADAPTER_DIR,
            adapter_sha256=str(data["adapter_sha256"]),
            run_dir=run_dir,
            steps=int(data["steps"]),
            examples=int(data["examples"]),
            skipped=int(data["skipped"]),
            seconds=time.perf_counter() - started,
            total_seconds=float(data["total_seconds"]),
            resumed_from=int(data["steps"]),
            loss_curve=tuple((int(s), float(v)) for s, v in data["loss_curve"]),
            loss_plot=run_dir / LOSS_PLOT,
            config=config,
            tokens_per_step=float(data["tokens_per_step"]),
            train_seconds=float(data["train_seconds"]),
            skipped_reasons=dict(data.get("skipped_reasons", {})),
            truncated=int(data.get("truncated", 0)),
        )
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"{run_dir / TRAINING_JSON} is unreadable; remove {run_dir} and train again") from exc


def _finished(run_dir: Path) -> bool:
    return (run_dir / TRAINING_JSON).is_file() and (run_dir / ADAPTER_DIR / ADAPTER_WEIGHTS).is_file()
