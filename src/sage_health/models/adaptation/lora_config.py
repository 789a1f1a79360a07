"""What defines and what records a LoRA run: the tasks, file names and training constants, :class:`LoraConfig`
and :class:`LoraResult`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from sage_health.core.errors import ConfigError
from sage_health.core.hashing import sha256_json

LORA_TASKS: Final = ("impression", "findings", "qa")
DEFAULT_STEPS: Final = 120
ADAPTER_DIR: Final = "adapter"
CHECKPOINTS_DIR: Final = "checkpoints"
TRAINING_JSON: Final = "training.json"
LOSS_PLOT: Final = "loss.png"
ADAPTER_WEIGHTS: Final = "adapter_model.safetensors"
ADAPTER_CONFIG: Final = "adapter_config.json"
_STATE_FILE: Final = "state.pt"
_MARKER: Final = "COMPLETE"
_KEEP_CHECKPOINTS: Final = 2
_TORCH_THREADS: Final = 2
_MAX_GRAD_NORM: Final = 1.0
_FORMAT: Final = 1
_CKPT_RE: Final = re.compile(r"^step-(\d{6,})$")
_SMOLLM2: Final = "smollm2"


# ---------------------------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class LoraConfig:
    """Everything that defines a LoRA training run (recorded with the adapter and hashed into the run folder)."""

    task: str
    steps: int | None = None
    """Optimiser steps; exactly one of ``steps``/``epochs`` (``steps=120`` when neither is given)."""
    epochs: float | None = None
    batch_size: int = 8
    learning_rate: float = 2e-4
    max_length: int = 320
    """Tokens of prompt + target; longer examples lose the end of their data text, never of the target."""
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    warmup_steps: int = 10
    seed: int = 0
    checkpoint_every: int = 20
    limit: int | None = None
    """Use at most this many train items (a sample drawn with ``seed`` from the usable items)."""

    def __post_init__(self) -> None:
        if self.task not in LORA_TASKS:
            raise ConfigError(f"unknown LoRA task {self.task!r}: use one of {', '.join(LORA_TASKS)}")
        if self.steps is not None and self.epochs is not None:
            raise ConfigError("give either --steps or --epochs, not both")
        if self.steps is None and self.epochs is None:
            object.__setattr__(self, "steps", DEFAULT_STEPS)
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        problems = [
            msg
            for bad, msg in (
                (self.steps is not None and self.steps < 1, "steps must be >= 1"),
                (self.epochs is not None and not self.epochs > 0, "epochs must be > 0"),
                (self.batch_size < 1, "batch_size must be >= 1"),
                (not self.learning_rate > 0, "learning_rate must be > 0"),
                (self.max_length < 16, "max_length must be >= 16"),
                (self.rank < 1 or self.alpha < 1, "rank and alpha must be >= 1"),
                (not 0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
                (not self.target_modules, "target_modules must name at least one module"),
                (self.warmup_steps < 0, "warmup_steps must be >= 0"),
                (self.checkpoint_every < 1, "checkpoint_every must be >= 1"),
                (self.limit is not None and self.limit < 1, "limit must be >= 1"),
            )
            if bad
        ]
        if problems:
            raise ConfigError("invalid LoRA configuration: " + "; ".join(problems))

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        return data

    def digest(self) -> str:
        """First 12 hex digits of the sha256 of :meth:`as_dict` (canonical JSON)."""
        return sha256_json(self.as_dict())[:12]

    def total_steps(self, n_examples: int) -> int:
        """Optimiser steps for ``n_examples`` examples: ``steps``, or ``ceil(epochs x batches per epoch)``."""
        if self.steps is not None:
            return self.steps
        assert self.epochs is not None  # noqa: S101 - __post_init__ guarantees one of the two
        return max(1, math.ceil(self.epochs * _steps_per_epoch(n_examples, self.batch_size)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoraConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "target_modules" in known:
            known["target_modules"] = tuple(known["target_modules"])
        return cls(**known)


def _steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))


def _is_smollm2(base: str) -> bool:
    return base == _SMOLLM2


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class LoraResult:
    """A finished LoRA run: the adapter, where its run lives, and how training went."""

    adapter_dir: Path
    adapter_sha256: str
    run_dir: Path
    steps: int
    examples: int
    skipped: int
    seconds: float
    """Wall time of this invocation."""
    total_seconds: float
    """Wall time of every invocation of this run up to its last checkpoint, including interrupted ones."""
    resumed_from: int | None
    loss_curve: tuple[tuple[int, float], ...]
    loss_plot: Path
    config: LoraConfig
    tokens_per_step: float
    train_seconds: float = 0.0
    """Time inside optimiser steps (all invocations): the basis of seconds per step."""
    skipped_reasons: Mapping[str, int] = field(default_factory=dict)
    truncated: int = 0

    def metrics(self) -> dict[str, Any]:
        losses = [loss for _, loss in self.loss_curve]
        tail = losses[-10:]
        per_step = self.train_seconds / self.steps if self.steps and self.train_seconds else None
        return {
            "first_loss": round(losses[0], 6) if losses else None,
            "last_loss": round(losses[-1], 6) if losses else None,
            "min_loss": round(min(losses), 6) if losses else None,
            "mean_loss_last_10": round(sum(tail) / len(tail), 6) if tail else None,
            "steps": self.steps,
            "seconds": round(self.seconds, 3),
            "total_seconds": round(self.total_seconds, 3),
            "seconds_per_step": round(per_step, 4) if per_step is not None else None,
            "tokens_per_step": round(self.tokens_per_step, 1),
            "examples": self.examples,
            "skipped": self.skipped,
            "truncated": self.truncated,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "adapter_dir": str(self.adapter_dir),
            "adapter_sha256": self.adapter_sha256,
            "run_dir": str(self.run_dir),
            "loss_plot": str(self.loss_plot),
            "resumed_from": self.resumed_from,
            "config": self.config.as_dict(),
            "metrics": self.metrics(),
            "skipped_reasons": dict(self.skipped_reasons),
            "loss_curve": [[step, loss] for step, loss in self.loss_curve],
        }
