"""``sage-health radiology draft|review``, ``sage-health trace RUN_ID``, ``sage-health runs [resume]`` and
``sage-health eval radiology``: parse the options, call :mod:`sage_health.services.radiology` /
:mod:`sage_health.services.traces`, render the result (``--json``, or panels, trees and tables)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.tree import Tree

from sage_health.core.errors import StudyInputError
from sage_health.interfaces.cli.common import Cli, err, out, run_command, session_command
from sage_health.interfaces.cli.eval import DropLeaksOpt, LimitOpt, OutOpt, SeedOpt
from sage_health.services import radiology as service
from sage_health.services import traces
from sage_health.services.radiology import DraftOutcome, RadiologyEvaluation, ReviewOutcome, report_text
from sage_health.services.traces import RunList, RunRecord, RunTrace, StepRecord

radiology_app = typer.Typer(help="Chest X-ray report drafting with evidence, verification and sign-off.")
runs_app = typer.Typer(help="Agent runs: list, resume an interrupted run.", invoke_without_command=True)


def print_outcome(outcome: DraftOutcome) -> None:
    status = "[bold red]BLOCKED[/]" if outcome.blocked else f"[bold]{outcome.status}[/]"
    lines: list[str] = []
    for section in ("findings", "impression"):
        lines.append(f"[bold]{section.upper()}:[/]")
        for s in outcome.draft.sentences:
            if s.section == section:
                cites = ", ".join(s.citations) or "no evidence"
                lines.append(f"  {escape(s.text)} [dim]\\[{escape(cites)}][/]")
    out.print(Panel("\n".join(lines), title=f"draft {outcome.run_id} · {status} · {outcome.model_ref}"))
    cited = set(outcome.draft.citations())
    for ev in outcome.evidence:
        if ev["id"] in cited:
            snippet = " ".join(str(ev["text"]).split())
            snippet = snippet[:160] + ("…" if len(snippet) > 160 else "")
            out.print(f"[dim]evidence {escape(ev['id'])} ({ev['kind']}):[/] {escape(snippet)}", highlight=False)
    for label, items in (("plan", outcome.plan_notes), ("notes", outcome.notes)):
        for note in items:
            out.print(f"[dim]{label}:[/] {escape(note)}")
    for flag in outcome.flags:
        out.print(
            f"[yellow]verifier {flag['action']}[/] ({flag['kind']}): {escape(str(flag['detail']))}", highlight=False
        )
    for v in outcome.violations:
        style = "red" if v.get("blocking") else "yellow"
        out.print(f"[{style}]safety ({v['kind']})[/]: {escape(str(v['detail']))}", highlight=False)
    if outcome.labels:
        for section, labels in outcome.labels.items():
            shown = ", ".join(f"{k}={v}" for k, v in labels.items()) or "none"
            out.print(f"[dim]labels {section}:[/] {shown}")
    if not outcome.blocked:
        out.print(
            f"Review: [bold]sage-health radiology review {outcome.run_id} --approve[/] "
            "(or --edit-file F --approve, or --reject --reason TEXT)"
        )


@radiology_app.command("draft")
@session_command
def draft(
    cli: Cli,
    images: Annotated[list[Path] | None, typer.Option("--images", help="PNG/DICOM files of the study.")] = None,
    indication: Annotated[str | None, typer.Option("--indication", help="The clinical question.")] = None,
    comparison: Annotated[str | None, typer.Option("--comparison", help="Prior study compared with.")] = None,
    patient: Annotated[str | None, typer.Option("--patient", help="Patient record id in the store.")] = None,
    study_id: Annotated[
        str | None, typer.Option("--study-id", help="Study (report) id; a stored study supplies images and indication.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Writer model NAME[@VERSION] (default: planner).")
    ] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Also write the draft as FINDINGS:/IMPRESSION: text (to edit).")
    ] = None,
) -> None:
    """Draft a report for one study: retrieve, check images, write, verify, safety-check; then wait for review."""

    def body() -> None:
        with cli.session(must_exist=True) as session:
            outcome = service.draft(
                session,
                indication=indication,
                images=images or (),
                comparison=comparison,
                patient_id=patient,
                study_id=study_id,
                model=model,
            )
        if out_file is not None:
            out_file.write_text(report_text(outcome.findings, outcome.impression), encoding="utf-8")
        cli.emit(outcome.model_dump(mode="json"), lambda: print_outcome(outcome))

    run_command(body)


@radiology_app.command("review")
@session_command
def review(
    cli: Cli,
    run_id: Annotated[str, typer.Argument(help="The run id printed by `radiology draft`.")],
    approve: Annotated[bool, typer.Option("--approve", help="Sign the (edited) draft.")] = False,
    reject: Annotated[bool, typer.Option("--reject", help="Reject the draft.")] = False,
    edit_file: Annotated[
        Path | None, typer.Option("--edit-file", help="The report as edited: 'FINDINGS: …' then 'IMPRESSION: …'.")
    ] = None,
    signer: Annotated[
        str | None, typer.Option("--signer", help="Who signs: must be the acting principal (default: it).")
    ] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (rejections, or an edit note).")] = None,
) -> None:
    """Approve (optionally edited) or reject a paused draft. Approval stores a signed DiagnosticReport."""

    def body() -> None:
        if approve == reject:
            raise StudyInputError("pass exactly one of --approve or --reject")
        edited: str | None = None
        if edit_file is not None:
            try:
                edited = edit_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise StudyInputError(f"{edit_file}: cannot read the edited report ({type(exc).__name__})") from exc
        with cli.session(must_exist=True) as session:
            result = service.review(session, run_id, approve=approve, edited=edited, signer=signer, reason=reason)
        cli.emit(result.model_dump(mode="json"), lambda: _print_review(result))

    run_command(body)


def _print_review(result: ReviewOutcome) -> None:
    if result.status == "rejected":
        out.print(f"run {result.run_id}: [bold red]rejected[/] by {escape(result.signer)}; feedback event stored")
        return
    out.print(
        f"run {result.run_id}: [bold green]approved[/] ({result.feedback_kind}) by {escape(result.signer)} → "
        f"{result.record_id} v{result.record_version}; signature {result.signature}"
    )
    if result.diff:
        out.print(Panel(escape(result.diff), title="edit diff (draft → signed)"))


# --------------------------------------------------------------------------------------------- traces


def _summary(step: StepRecord) -> list[str]:
    o: dict[str, Any] = step.output or {}
    if step.status == "error":
        return [f"[red]error:[/] {escape(step.error or '')}"]
    if step.step == "plan":
        return [escape(n) for n in o.get("notes", [])]
    if step.step == "retrieve":
        kinds: dict[str, int] = {}
        for e in o.get("evidence", []):
            kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
        return [", ".join(f"{v} {k}" for k, v in kinds.items()) or "no evidence found"]
    if step.step == "screen":
        q = o.get("quarantined", [])
        return [f"kept {len(o.get('kept', []))}, quarantined {len(q)}" + (f": {', '.join(q)}" if q else "")]
    if step.step == "imaging":
        if o.get("abstained"):
            return [f"abstained: {escape(str(o.get('reason')))}"]
        return [f"{f['observation']} {'present' if f['present'] else 'absent'} p={f['probability']:.2f}"
                for f in o.get("findings", [])]  # fmt: skip
    if step.step == "write":
        sents = o.get("sentences", [])
        cited = sum(1 for s in sents if s.get("citations"))
        return [f"{len(sents)} sentences, {cited} with citations"]
    if step.step == "verify":
        flags = o.get("flags", [])
        return [f"{f['action']} ({f['kind']}): {escape(str(f['detail']))}" for f in flags] or ["no flags"]
    if step.step == "safety":
        vs = o.get("violations", [])
        head = "BLOCKED" if o.get("blocked") else "passed"
        return [head] + [f"{v['kind']}: {escape(str(v['detail']))}" for v in vs]
    if step.step == "review":
        if o.get("record_id"):
            changed = "edited" if o.get("diff") else "unchanged"
            return [f"signed {o['record_id']} v{o.get('record_version')} ({changed}) by {step.input.get('signer')}"]
        return [f"rejected by {step.input.get('signer')}: {escape(str(step.input.get('reason') or ''))}"]
    return []


def trace_tree(run: RunRecord, steps: Sequence[StepRecord]) -> Tree:
    who = f" · patient {run.patient_id}" if run.patient_id else ""
    study = f" · study {run.study_id}" if run.study_id else ""
    tree = Tree(f"[bold]{run.run_id}[/] {run.task} · [bold]{run.status}[/] · {run.created_at}{who}{study}")
    if run.error:
        tree.add(f"[red]{escape(run.error)}[/]")
    for step in steps:
        mark = "[green]✓[/]" if step.status == "ok" else "[red]✗[/]"
        model = f" · {step.model_ref}" if step.model_ref else ""
        node = tree.add(f"{mark} {step.seq}. [bold]{step.step}[/] ({step.agent}) · {step.latency_ms:.0f} ms{model}")
        for line in _summary(step):
            node.add(line)
        if step.evidence_ids:
            shown = ", ".join(step.evidence_ids[:6]) + (" …" if len(step.evidence_ids) > 6 else "")
            node.add(f"[dim]evidence: {escape(shown)}[/]")
    return tree


@session_command
def trace(cli: Cli, run_id: Annotated[str, typer.Argument(help="Run id.")]) -> None:
    """Print a run's persisted trace as a tree (or JSON). Traces hold identified data: identified readers only."""

    def body() -> None:
        with cli.session(must_exist=True) as session:
            found: RunTrace = traces.trace(session, run_id)
        cli.emit(found.as_dict(), lambda: out.print(trace_tree(found.run, found.steps)))

    run_command(body)


def _print_runs(found: RunList) -> None:
    for r in found.runs:
        out.print(f"{r.run_id}  {r.task}  [bold]{r.status}[/]  {r.created_at}")
    if not found.runs:
        out.print("no runs")


@runs_app.callback()
@session_command
def runs(
    cli: Cli,
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option("--status", help="Only runs in this status.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 20,
) -> None:
    """List agent runs, newest first."""
    if ctx.invoked_subcommand is not None:
        return

    def body() -> None:
        with cli.session(must_exist=True) as session:
            found = traces.list_runs(session, status=status, limit=limit)
        cli.emit(found.as_list(), lambda: _print_runs(found))

    run_command(body)


@runs_app.command("resume")
@session_command
def resume(cli: Cli, run_id: Annotated[str, typer.Argument(help="An interrupted (running) or failed run.")]) -> None:
    """Continue an interrupted or failed run from its last finished step."""

    def body() -> None:
        with cli.session(must_exist=True) as session:
            outcome = service.resume(session, run_id)
        cli.emit(outcome.model_dump(mode="json"), lambda: print_outcome(outcome))

    run_command(body)


def _eval_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )


@session_command
def eval_radiology(
    cli: Cli,
    train: Annotated[Path, typer.Option("--train", help="reports.jsonl-format file: the retrieval memory only.")],
    test: Annotated[Path, typer.Option("--test", help="reports.jsonl-format file to evaluate on.")],
    model: Annotated[
        str | None, typer.Option("--model", help="Writer model NAME[@VERSION] (default: SAGE_GENERATOR).")
    ] = None,
    baseline: Annotated[
        str | None, typer.Option("--baseline", help="Baseline in the same run ('' to skip).")
    ] = service.DEFAULT_BASELINE,
    limit: LimitOpt = None,
    seed: SeedOpt = 13,
    drop_leaks: DropLeaksOpt = False,
    out_dir: OutOpt = None,
) -> None:
    """The whole workflow per test study: BLEU-4, ROUGE-L, CE-F1, distinct ratio, verifier flags, s/study."""

    def body() -> None:
        with cli.session() as session, _eval_progress() as bar:
            bars: dict[str, TaskID] = {}

            def progress(system: str, done: int, total: int) -> None:
                if system not in bars:
                    bars[system] = bar.add_task(system, total=total)
                bar.update(bars[system], completed=done)

            result: RadiologyEvaluation = service.evaluate(
                session,
                train=train,
                test=test,
                model=model,
                baseline=baseline,
                limit=limit,
                seed=seed,
                drop_leaks=drop_leaks,
                out_dir=out_dir,
                on_progress=progress,
            )
        cli.emit(result.as_dict(), lambda: out.print(result.comparison_markdown))

    run_command(body)
