"""``sage-health train lora``: LoRA adapter tuning of SmolLM2 (or a saved causal LM) on a dataset snapshot.

``cli.py`` adds :func:`lora` to the ``train`` group (``sage-health train lora``). The use case (policy, the
training rules, registration, audit) is :func:`sage_health.services.training.train_lora_adapter`.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from sage_health.interfaces.cli.common import Cli, err, out, run_command, session_command
from sage_health.services.training import LoraRequest, LoraTraining, TrainingProgress, train_lora_adapter


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]train lora"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[rate]} s/step"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )


def _fmt(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _print_result(trained: LoraTraining) -> None:
    result, model, snapshot = trained.result, trained.model, trained.snapshot
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


@session_command
def lora(
    cli: Cli,
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
) -> None:
    """Train a LoRA adapter on a snapshot's train split and register it as a candidate (lineage: snapshot -> model).

    The prompts are exactly the evaluation harness's, so `sage-health eval` measures what was trained.

    Checkpoints every --checkpoint-every steps: an interrupted run continues with the same command plus --resume.
    """

    def body() -> None:
        request = LoraRequest(snapshot=snapshot, base=base, task=task, steps=steps, epochs=epochs,
                              batch_size=batch_size, learning_rate=lr, max_length=max_length, rank=rank, seed=seed,
                              checkpoint_every=checkpoint_every, limit=limit, init_adapter=init_adapter,
                              resume=resume, name=name)  # fmt: skip
        with cli.session(must_exist=True) as session, ExitStack() as stack:
            bars: list[tuple[Progress, TaskID]] = []
            done_at: list[float] = []

            def tick(event: TrainingProgress) -> None:
                if event.message is not None:  # every check passed: training starts now
                    err.print(event.message, highlight=False)
                    bar = stack.enter_context(_progress_bar())
                    bars.append((bar, bar.add_task("train", total=None, loss="-", rate="-")))
                    return
                bar, job = bars[-1]
                done_at.append(time.perf_counter())
                rate = (done_at[-1] - done_at[0]) / (len(done_at) - 1) if len(done_at) > 1 else None
                bar.update(job, completed=event.step, total=event.total,
                           loss="-" if event.loss is None else f"{event.loss:.4f}",
                           rate="-" if rate is None else f"{rate:.2f}")  # fmt: skip

            trained = train_lora_adapter(session, request, on_progress=tick)
        cli.emit(trained.as_dict(), lambda: _print_result(trained))

    run_command(body)
