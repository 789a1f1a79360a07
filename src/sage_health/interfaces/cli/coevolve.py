"""``sage-health coevolve``: one co-evolution cycle; ``coevolve history``; ``coevolve replay`` (parse, call
:mod:`sage_health.services.coevolve`, render)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from sage_health.interfaces.cli.common import Cli, err, out, run_command, session_command
from sage_health.services import coevolve as service
from sage_health.services.coevolve import (
    RULE,
    TASK_SPECS,
    CoevolveHistory,
    CycleRecord,
    LoopOptions,
    ReplayResult,
)

coevolve_app = typer.Typer(
    help="The data-model co-evolution loop: feedback -> snapshot -> LoRA candidate -> evaluation -> promotion.",
    invoke_without_command=True,
)

TaskOpt = Annotated[str, typer.Option("--task", help=f"Loop task: {', '.join(TASK_SPECS)}.")]


def _fmt(value: Any, digits: int = 4) -> str:
    return "-" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def _print_cycle(rec: CycleRecord) -> None:
    table = Table(title=f"co-evolution cycle {rec.cycle} ({rec.task}): {rec.status}", show_header=False)
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")
    i = rec.inputs
    table.add_row("feedback", f"{i.get('new_feedback_events', 0)} new events: {i.get('approved', 0)} approved, "
                  f"{i.get('edited', 0)} edited, {i.get('rejected', 0)} rejected")  # fmt: skip
    table.add_row("snapshot", f"{rec.snapshot_ref or '-'} ({i.get('snapshot_train_items', '-')} items, "
                  f"{i.get('new_items', 0):+d} new)" if rec.snapshot_ref else "-")  # fmt: skip
    table.add_row("retrievable new reports", f"{i.get('memory_retrievable', '-')} / {i.get('memory_new_reports', '-')}")
    table.add_row("candidate", rec.candidate_ref or "-")
    if rec.training:
        t = rec.training
        table.add_row("training", f"{t.get('steps')} steps, loss {_fmt(t.get('first_loss'), 3)} -> "
                      f"{_fmt(t.get('mean_loss_last_10'), 3)}, {_fmt(t.get('seconds'), 0)} s")  # fmt: skip
    table.add_row("production", f"{rec.production_before or '-'} -> {rec.production_after or '-'}")
    for name in ("rouge_l", "bleu_4", "ce_f1", "distinct_ratio", "verifier_flag_rate", "rejected_recurrence"):
        c, p = rec.candidate_metrics.get(name), rec.production_metrics.get(name)
        if c is not None or p is not None:
            table.add_row(name, f"candidate {_fmt(c)}   production {_fmt(p)}")
    for reason in rec.reasons:
        table.add_row("reason", reason)
    table.add_row("timings (s)", ", ".join(f"{k} {v:.0f}" for k, v in rec.timings.items()))
    out.print(table)


@coevolve_app.callback()
@session_command
def coevolve(
    cli: Cli,
    ctx: typer.Context,
    task: TaskOpt = "impression",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what a cycle would do; write nothing.")] = False,
    eval_file: Annotated[
        Path | None,
        typer.Option("--eval-file", help="Fixed evaluation set (reports.jsonl format); required at the first cycle."),
    ] = None,
    eval_limit: Annotated[
        int | None, typer.Option("--eval-limit", min=1, help="Evaluate on a fixed seeded sample (first cycle only).")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Registry name to evolve (default: SAGE_GENERATOR, the Planner's).")
    ] = None,
    base: Annotated[str, typer.Option("--base", help="smollm2, or a save_pretrained folder.")] = "smollm2",
    steps: Annotated[int, typer.Option("--steps", min=1, help="LoRA optimiser steps per cycle.")] = 60,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    max_length: Annotated[int, typer.Option("--max-length", min=32, help="Tokens per training example.")] = 320,
    lr: Annotated[float, typer.Option("--lr", help="LoRA learning rate.")] = 2e-4,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    min_gain: Annotated[float, typer.Option("--min-gain", help="Required lower CI bound of the gain.")] = 0.0,
    force: Annotated[bool, typer.Option("--force", help="Run a cycle even when nothing is new.")] = False,
) -> None:
    """Run one cycle (see `coevolve history` for past cycles). The promotion rule:

    promote iff the 95% paired-bootstrap interval of the primary-metric gain is above --min-gain on the fixed
    evaluation set, no safety metric regresses, the evaluation set does not overlap the training snapshot and the
    lineage is not tainted.
    """
    if ctx.invoked_subcommand is not None:
        return

    def body() -> None:
        opts = LoopOptions(
            task=task, model=model, base=base, eval_file=eval_file, eval_limit=eval_limit, steps=steps,
            batch_size=batch_size, max_length=max_length, learning_rate=lr, seed=seed, min_gain=min_gain,
            force=force, dry_run=dry_run,
        )  # fmt: skip
        with cli.session(must_exist=True) as session:
            rec = service.run_cycle(session, opts, on_progress=lambda m: err.print(m, highlight=False))
        cli.emit({**rec.as_dict(), "rule": RULE}, lambda: _print_cycle(rec))

    run_command(body)


def _print_history(found: CoevolveHistory) -> None:
    table = Table(title="co-evolution cycles")
    columns = ("task", "cycle", "status", "new fb", "snapshot", "candidate", "ROUGE-L cand/prod",
               "CE-F1 cand/prod", "CI of gain", "production after", "finished")  # fmt: skip
    for col in columns:
        table.add_column(col, overflow="fold")
    for r in found.cycles:
        boot = (r.decision or {}).get("bootstrap") or {}
        table.add_row(
            r.task,
            str(r.cycle),
            r.status,
            str(r.inputs.get("new_feedback_events", "-")),
            r.snapshot_ref or "-",
            r.candidate_ref or "-",
            f"{_fmt(r.candidate_metrics.get('rouge_l'))} / {_fmt(r.production_metrics.get('rouge_l'))}",
            f"{_fmt(r.candidate_metrics.get('ce_f1'))} / {_fmt(r.production_metrics.get('ce_f1'))}",
            f"[{boot['ci_low']:+.4f}, {boot['ci_high']:+.4f}]" if boot else "-",
            r.production_after or "-",
            r.finished_at,
        )
    out.print(table)
    for r in found.cycles:
        out.print(f"cycle {r.cycle} ({r.task}, {r.status}): " + "; ".join(r.reasons), highlight=False)
    if found.plot:
        out.print(f"plot: {found.plot}", highlight=False)
    elif not found.cycles:
        out.print("no co-evolution cycle yet: run `sage-health coevolve --eval-file FILE`", highlight=False)


@coevolve_app.command("history")
@session_command
def history_cmd(
    cli: Cli,
    task: Annotated[str | None, typer.Option("--task", help="Only this task's cycles.")] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write the metric-per-cycle plot here (default: in the store).")
    ] = None,
) -> None:
    """Every cycle: inputs, candidate, metrics, decision and why, with a plot of the primary metric across cycles."""

    def body() -> None:
        with cli.session(must_exist=True) as session:
            found = service.history(session, task=task, plot=plot)
        cli.emit(found.as_dict(), lambda: _print_history(found))

    run_command(body)


def _print_replay(result: ReplayResult) -> None:
    out.print(
        f"replayed {result.replayed} studies ({result.edited} edited, {result.approved} approved as drafted, "
        f"{result.rejected} rejected), {result.already} already replayed, skipped {result.skipped or 0}, "
        f"{result.seconds:.0f} s",
        highlight=False,
    )


@coevolve_app.command("replay")
@session_command
def replay_cmd(
    cli: Cli,
    train_file: Annotated[Path, typer.Option("--train-file", help="reports.jsonl-format studies to replay.")],
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many studies first.")] = 0,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Replay at most this many studies.")] = 100,
    model: Annotated[
        str, typer.Option("--model", help="Model that drafts (default: extractive, fast).")
    ] = "extractive",
) -> None:
    """Simulate radiologist feedback: draft each study through the radiology workflow and approve it with the
    study's reference report as the radiologist's edit (acting as a clinician with purpose treatment)."""

    def body() -> None:
        with cli.session() as session:
            result = service.replay(session, train_file=train_file, offset=offset, limit=limit, model=model)
        cli.emit(result.as_dict(), lambda: _print_replay(result))
        for problem in result.problems:
            err.print(problem, highlight=False)

    run_command(body)
