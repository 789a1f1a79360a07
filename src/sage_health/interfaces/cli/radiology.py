"""``sage-health radiology draft|review``, ``sage-health trace RUN_ID`` and ``sage-health runs [resume]``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.tree import Tree

from sage_health.agents.base import AgentContext
from sage_health.agents.trace import RunRecord, StepRecord, TraceStore
from sage_health.apps.radiology.evaluation import comparison_markdown, run_radiology_eval
from sage_health.apps.radiology.workflow import (
    DraftOutcome,
    ReviewOutcome,
    draft_report,
    prepare_request,
    report_text,
    resume_run,
    review_draft,
)
from sage_health.core.config import Settings
from sage_health.core.errors import PolicyViolation, StudyInputError
from sage_health.data.governance.access import GovernedStore, open_governed
from sage_health.data.governance.policy import Action
from sage_health.data.store.factory import open_store
from sage_health.interfaces.cli.common import (
    AsOpt,
    JsonOpt,
    PurposeOpt,
    StoreOpt,
    echo_json,
    evaluation_access,
    out,
    run_command,
    settings_for,
)
from sage_health.interfaces.cli.eval import DropLeaksOpt, LimitOpt, OutOpt, SeedOpt, _progress
from sage_health.models.evaluation.labeler import CheXpertLabeler
from sage_health.models.registry import ModelRegistry

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
def draft(
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
    store: StoreOpt = None,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Draft a report for one study: retrieve, check images, write, verify, safety-check; then wait for review."""

    def body() -> None:
        settings = settings_for(store, as_, purpose)
        with open_store(settings) as st:
            ctx = AgentContext.create(settings, open_governed(settings, st))
            request = prepare_request(
                ctx,
                indication=indication,
                images=images,
                comparison=comparison,
                patient_id=patient,
                study_id=study_id,
                model=model,
            )
            outcome = draft_report(ctx, request)
        if out_file is not None:
            out_file.write_text(report_text(outcome.findings, outcome.impression), encoding="utf-8")
        if as_json:
            echo_json(outcome.model_dump(mode="json"))
        else:
            print_outcome(outcome)

    run_command(body)


@radiology_app.command("review")
def review(
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
    store: StoreOpt = None,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
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
        settings = settings_for(store, as_, purpose)
        with open_store(settings) as st:
            ctx = AgentContext.create(settings, open_governed(settings, st))
            result = review_draft(ctx, run_id, approve=approve, edited=edited, signer=signer, reason=reason)
        if as_json:
            echo_json(result.model_dump(mode="json"))
        else:
            _print_review(result)

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


def _identified_reader(settings: Settings) -> GovernedStore:
    """Traces keep the identified inputs and outputs of every step: only principals with an identified view
    (clinicians for treatment, data stewards) may read them."""
    governed = evaluation_access(settings, Action.READ)
    decision = governed.policy.decide(governed.access, Action.READ)
    if decision.view != "identified":
        governed.log(Action.READ.value, detail={"denied": "traces are identified data"}, outcome="denied")
        raise PolicyViolation(f"{governed.access.label} sees de-identified data only; agent traces are identified")
    return governed


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


def trace_tree(run: RunRecord, steps: list[StepRecord]) -> Tree:
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


def trace(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    store: StoreOpt = None,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a run's persisted trace as a tree (or JSON). Traces hold identified data: identified readers only."""

    def body() -> None:
        settings = settings_for(store, as_, purpose)
        governed = _identified_reader(settings)
        traces = TraceStore(settings.db_path)
        run = traces.get_run(run_id)
        steps = traces.steps(run_id)
        governed.log(Action.READ.value, record_ids=[i for i in (run.study_id, run.patient_id) if i],
                     detail={"trace": run_id})  # fmt: skip
        if as_json:
            echo_json({"run": run.model_dump(mode="json"), "steps": [s.model_dump(mode="json") for s in steps]})
        else:
            out.print(trace_tree(run, steps))

    run_command(body)


@runs_app.callback()
def runs(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option("--status", help="Only runs in this status.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 20,
    store: StoreOpt = None,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List agent runs, newest first."""
    if ctx.invoked_subcommand is not None:
        return

    def body() -> None:
        settings = settings_for(store, as_, purpose)
        governed = _identified_reader(settings)
        found = TraceStore(settings.db_path).list_runs(status=status, limit=limit)
        governed.log(Action.READ.value, detail={"runs": len(found)})
        if as_json:
            echo_json([r.model_dump(mode="json", exclude={"result", "plan"}) for r in found])
            return
        for r in found:
            out.print(f"{r.run_id}  {r.task}  [bold]{r.status}[/]  {r.created_at}")
        if not found:
            out.print("no runs")

    run_command(body)


@runs_app.command("resume")
def resume(
    run_id: Annotated[str, typer.Argument(help="An interrupted (running) or failed run.")],
    store: StoreOpt = None,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Continue an interrupted or failed run from its last finished step."""

    def body() -> None:
        settings = settings_for(store, as_, purpose)
        with open_store(settings) as st:
            outcome = resume_run(AgentContext.create(settings, open_governed(settings, st)), run_id)
        if as_json:
            echo_json(outcome.model_dump(mode="json"))
        else:
            print_outcome(outcome)

    run_command(body)


def eval_radiology(
    train: Annotated[Path, typer.Option("--train", help="reports.jsonl-format file: the retrieval memory only.")],
    test: Annotated[Path, typer.Option("--test", help="reports.jsonl-format file to evaluate on.")],
    model: Annotated[
        str | None, typer.Option("--model", help="Writer model NAME[@VERSION] (default: SAGE_GENERATOR).")
    ] = None,
    baseline: Annotated[
        str | None, typer.Option("--baseline", help="Baseline in the same run ('' to skip).")
    ] = "extractive@1",
    limit: LimitOpt = None,
    seed: SeedOpt = 13,
    drop_leaks: DropLeaksOpt = False,
    out_dir: OutOpt = None,
    store: StoreOpt = None,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The whole workflow per test study: BLEU-4, ROUGE-L, CE-F1, distinct ratio, verifier flags, s/study."""

    def body() -> None:
        settings = settings_for(store, as_, purpose)
        governed = evaluation_access(settings)
        registry = ModelRegistry(settings.db_path)
        refs = [model or settings.generator] + ([baseline] if baseline else [])
        with _progress() as bar:
            jobs: dict[str, Any] = {}

            def progress(system: str, done: int, total: int) -> None:
                if system not in jobs:
                    jobs[system] = bar.add_task(system, total=total)
                bar.update(jobs[system], completed=done)

            results = run_radiology_eval(
                settings=settings,
                governed=governed,
                registry=registry,
                train_file=train,
                test_file=test,
                out_dir=out_dir or settings.store / "evals" / "radiology",
                models=refs,
                labeler=CheXpertLabeler.from_data_dir(settings.data_dir),
                limit=limit,
                seed=seed,
                drop_leaks=drop_leaks,
                progress=progress,
            )
        table = comparison_markdown(results)
        if as_json:
            echo_json(
                {
                    "systems": [
                        {
                            "model": r.ref,
                            "run_id": r.outcome.run.run_id,
                            "eval_set": r.outcome.eval_set,
                            "metrics": r.outcome.run.metrics,
                            "report": str(r.outcome.files.json_path),
                        }
                        for r in results
                    ],
                    "comparison_markdown": table,
                }
            )
        else:
            out.print(table)

    run_command(body)
