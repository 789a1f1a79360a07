"""``sage-health train lora``: LoRA adapter tuning of SmolLM2 (or a saved causal LM) on a dataset snapshot.

``cli.py`` adds :func:`lora` to the ``train`` group (``sage-health train lora``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sage_health.core.config import Settings
from sage_health.core.errors import PolicyViolation, ValidationError
from sage_health.data.datasets import SnapshotInfo, get_snapshot
from sage_health.data.governance.access import open_governed
from sage_health.data.governance.policy import Action
from sage_health.data.store.factory import open_store
from sage_health.interfaces.cli.common import (
    AsOpt,
    JsonOpt,
    PurposeOpt,
    StoreOpt,
    echo_json,
    err,
    out,
    run_command,
    settings_for,
)
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
from sage_health.models.catalog import BUILTIN_MODELS, resolve_model
from sage_health.models.registry import ModelRegistry, ModelVersion


def _default_name(settings: Settings, base: str, task: str) -> str:
    """``settings.generator`` for a SmolLM2 adapter (unless that names another built-in backend), else
    ``lora-<task>``."""
    if base == "smollm2":
        gen = settings.generator
        return gen if gen == "smollm2" or gen not in BUILTIN_MODELS else "smollm2"
    return f"lora-{task}"


def _base_of(model: ModelVersion) -> str:
    """The ``--base`` an adapter registered on ``model`` was trained on."""
    if model.backend == "smollm2":
        return "smollm2"
    path = model.config.get("backend_options", {}).get("path")
    if model.backend == "transformers" and path:
        return str(path)
    raise ValidationError(f"--init-adapter {model.ref} runs on backend {model.backend}: only smollm2 and transformers "
                          "adapters can be continued")  # fmt: skip


def _same_base(a: str, b: str) -> bool:
    if a == "smollm2" or b == "smollm2":
        return a == b
    return Path(a).resolve() == Path(b).resolve()


def _init_from(registry: ModelRegistry, ref: str, base: str | None) -> tuple[ModelVersion, Path, str]:
    """(parent model, its adapter folder, the base to train on) for ``--init-adapter``."""
    parent = resolve_model(registry, ref)
    if not parent.adapter_path:
        raise ValidationError(f"--init-adapter {parent.ref} has no LoRA adapter; name a model trained with "
                              "`sage-health train lora`")  # fmt: skip
    taint = registry.taint(parent)
    if taint is not None:
        raise PolicyViolation(f"--init-adapter {parent.ref} is tainted ({taint}); train from its base instead")
    parent_base = _base_of(parent)
    if base is not None and not _same_base(base, parent_base):
        raise ValidationError(f"--base {base} differs from the base of {parent.ref} ({parent_base}); leave --base out "
                              "to continue that adapter")  # fmt: skip
    return parent, Path(parent.adapter_path), parent_base


def _check_task(info: SnapshotInfo, task: str | None) -> str:
    the_task = task or info.task
    if the_task not in LORA_TASKS:
        raise ValidationError(f"snapshot {info.ref} is a {info.task!r} snapshot; LoRA trains {', '.join(LORA_TASKS)}: "
                              f"build a snapshot with --task {LORA_TASKS[0]} (or findings, qa)")  # fmt: skip
    if the_task != info.task:
        raise ValidationError(f"snapshot {info.ref} holds {info.task} items, whose input/target are not task "
                              f"{the_task}'s; build a snapshot with --task {the_task}")  # fmt: skip
    return the_task


def _fmt(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _print_result(result: LoraResult, model: ModelVersion, snapshot: str) -> None:
    m = result.metrics()
    table = Table(title=f"LoRA adapter {model.ref}", show_header=False)
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_row("registered", f"{model.ref} (stage {model.stage}; promote with `sage-health models promote`)")
    table.add_row("snapshot", snapshot)
    table.add_row("task / base", f"{result.config.task} / {model.base_model or model.backend}")
    table.add_row("adapter sha256", result.adapter_sha256)
    table.add_row("adapter", str(model.adapter_path))
    table.add_row("run folder", str(result.run_dir))
    resumed = f" (resumed from step {result.resumed_from})" if result.resumed_from is not None else ""
    table.add_row("steps", f"{result.steps}{resumed}")
    table.add_row("examples / skipped / truncated", f"{result.examples} / {result.skipped} / {result.truncated}")
    table.add_row("seconds (this run / all runs)", f"{result.seconds:.1f} / {result.total_seconds:.1f}")
    table.add_row("seconds per step", _fmt(m["seconds_per_step"], 2))
    table.add_row("tokens per step", f"{result.tokens_per_step:.0f}")
    table.add_row("loss first / last / min", f"{_fmt(m['first_loss'])} / {_fmt(m['last_loss'])} / "
                                                f"{_fmt(m['min_loss'])}")  # fmt: skip
    table.add_row("loss, mean of last 10 steps", _fmt(m["mean_loss_last_10"]))
    table.add_row("loss plot", str(result.loss_plot))
    out.print(table)


def lora(
    snapshot: Annotated[
        str, typer.Option("--snapshot", help="Dataset snapshot NAME or NAME@HASH to train on (its train split).")
    ],
    base: Annotated[
        str | None,
        typer.Option("--base", help="smollm2 (default) or a folder saved with save_pretrained."),
    ] = None,
    task: Annotated[
        str | None, typer.Option("--task", help="impression, findings or qa (default: the snapshot's task).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", min=1, help="Optimiser steps (default 120 unless --epochs).")
    ] = None,
    epochs: Annotated[
        float | None, typer.Option("--epochs", min=0.0, help="Passes over the train items instead of --steps.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Examples per step.")] = 8,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Peak learning rate (linear warmup/decay).")] = 2e-4,
    max_length: Annotated[
        int, typer.Option("--max-length", min=16, help="Tokens of prompt + target (the input text is cut first).")
    ] = 320,
    rank: Annotated[int, typer.Option("--rank", min=1, help="LoRA rank (alpha = 2 x rank).")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the adapter init, dropout and data order.")] = 0,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", min=1, help="Steps between checkpoints.")] = 20,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Use at most this many train items (a seeded sample).")
    ] = None,
    init_adapter: Annotated[
        str | None,
        typer.Option("--init-adapter", help="Registered model NAME or NAME@VERSION whose adapter to continue."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the same command's interrupted run from its last checkpoint.")
    ] = False,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Registry name (default: SAGE_GENERATOR for smollm2, else lora-<task>)."),
    ] = None,
    store: StoreOpt = None,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a LoRA adapter on a snapshot's train split and register it as a candidate (lineage: snapshot -> model).

    The prompts are exactly the evaluation harness's, so `sage-health eval` measures what was trained.

    Checkpoints every --checkpoint-every steps: an interrupted run continues with the same command plus --resume.
    """

    def body() -> None:
        settings = settings_for(store, as_, purpose)
        with open_store(settings) as raw:
            st = open_governed(settings, raw).acting(Action.TRAIN)
            info = get_snapshot(settings, snapshot)
            if info.tainted:
                message = (f"snapshot {info.ref} is tainted ({info.taint}); build a fresh snapshot with "
                           "`sage-health dataset create` and train on that")  # fmt: skip
                st.log(Action.TRAIN.value, detail={"snapshot": info.ref, "denied": message}, outcome="denied")
                raise PolicyViolation(message)
            if st.decide(Action.TRAIN).view == "deidentified" and not info.params.get("deid"):
                message = (f"snapshot {info.ref} is not de-identified and {st.access.principal.name} only receives "
                           "de-identified data; build the snapshot with --deid")  # fmt: skip
                st.log(Action.TRAIN.value, detail={"snapshot": info.ref, "denied": message}, outcome="denied")
                raise PolicyViolation(message)
            the_task = _check_task(info, task)
            registry = ModelRegistry(settings.db_path)
            parent: ModelVersion | None = None
            init_path: Path | None = None
            the_base = base or "smollm2"
            if init_adapter:
                parent, init_path, the_base = _init_from(registry, init_adapter, base)
            config = LoraConfig(
                task=the_task,
                steps=steps,
                epochs=epochs,
                batch_size=batch_size,
                learning_rate=lr,
                max_length=max_length,
                rank=rank,
                alpha=2 * rank,
                seed=seed,
                checkpoint_every=checkpoint_every,
                limit=limit,
            )
            items = snapshot_train_items(info)
            the_name = name or _default_name(settings, the_base, the_task)
            run_dir = lora_run_dir(settings, name=the_name, snapshot_ref=info.ref, config=config, base=the_base,
                                   init_adapter=init_path)  # fmt: skip
            err.print(f"LoRA {the_task} on {info.ref} ({len(items)} train items), base {the_base}; run folder "
                      f"{run_dir}", highlight=False)  # fmt: skip
            with Progress(
                TextColumn("[bold]train lora"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[rate]} s/step"),
                TimeElapsedColumn(),
                console=err,
                transient=False,
            ) as bar:
                job = bar.add_task("train", total=None, loss="-", rate="-")
                done_at: list[float] = []

                def tick(step: int, total: int, loss: float) -> None:
                    done_at.append(time.perf_counter())
                    rate = (done_at[-1] - done_at[0]) / (len(done_at) - 1) if len(done_at) > 1 else None
                    bar.update(job, completed=step, total=total, loss=f"{loss:.4f}",
                               rate="-" if rate is None else f"{rate:.2f}")  # fmt: skip

                result = train_lora(items, base=the_base, settings=settings, run_dir=run_dir, config=config,
                                    init_adapter=init_path, resume=resume, progress=tick,
                                    snapshot_ref=info.ref)  # fmt: skip
            model = register_lora_candidate(
                registry,
                result,
                name=the_name,
                snapshot_ref=info.ref,
                base=the_base,
                registry_fields=base_registry_fields(the_base),
                parent=parent.ref if parent is not None else None,
                actor=st.access.principal.name,
                models_dir=settings.models_dir,
            )
            st.log(Action.TRAIN.value, detail={"model": model.ref, "snapshot": info.ref, "task": the_task,
                                               "steps": result.steps, "adapter_sha256": result.adapter_sha256,
                                               "parent": model.config.get("parent")})  # fmt: skip
        if as_json:
            payload: dict[str, Any] = {
                "model": model.ref,
                "stage": model.stage,
                "snapshot": info.ref,
                "adapter_path": model.adapter_path,
                "name": the_name,
                "base": the_base,
                "parent": model.config.get("parent"),
                **result.as_dict(),
            }
            echo_json(payload)
            return
        _print_result(result, model, info.ref)

    run_command(body)
