"""``sage-health``: the command-line interface (Typer + Rich).

Every command that touches a store accepts ``--store DIR`` (default ``./.sage`` or ``SAGE_STORE``);
every command that reports results accepts ``--json``. Exit codes: 0 ok, 1 error (one clear line on
stderr), 2 ingest finished but some files or records failed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from sage_health.core.errors import SageError
from sage_health.data.store.protocol import SearchFilters, SearchHit
from sage_health.interfaces.cli import audit as cli_audit
from sage_health.interfaces.cli import coevolve as cli_coevolve
from sage_health.interfaces.cli import datasets as cli_datasets
from sage_health.interfaces.cli import eval as cli_eval
from sage_health.interfaces.cli import governance as cli_governance
from sage_health.interfaces.cli import imaging as cli_imaging
from sage_health.interfaces.cli import lora as cli_lora
from sage_health.interfaces.cli import models as cli_models
from sage_health.interfaces.cli import radiology as cli_radiology
from sage_health.interfaces.cli.common import (
    Cli,
    JsonOpt,
    StoreOpt,
    echo_json,
    err,
    out,
    run_command,
    session_command,
    settings_for,
)
from sage_health.services import ingest as ingest_service
from sage_health.services import records, retrieval_eval, system

app = typer.Typer(
    name="sage-health",
    help="SAGE-Health: governed medical data ecosystem, adaptive GenAI and agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
eval_app = typer.Typer(help="Evaluations: retrieval, report generation, QA, the labeler.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


# --------------------------------------------------------------------------- ingest


def _report_table(report: ingest_service.IngestResult) -> Table:
    table = Table(title=f"Ingest run {report.run_id}")
    for col in ("connector", "files", "records", "new", "updated", "unchanged", "chunks", "errors", "seconds"):
        table.add_column(col, justify="left" if col == "connector" else "right")
    rows = sorted(report.by_connector.items())
    for name, s in [*rows, ("TOTAL", report.total)]:
        table.add_row(
            f"[bold]{name}[/]" if name == "TOTAL" else name,
            str(s.files),
            str(s.records),
            str(s.inserted),
            str(s.updated),
            str(s.unchanged),
            str(s.chunks),
            str(s.errors),
            f"{s.seconds:.1f}",
        )
    return table


@app.command()
@session_command
def ingest(
    cli: Cli,
    paths: Annotated[list[Path], typer.Argument(help="Files or folders; the format is detected per file.")],
    source: Annotated[str | None, typer.Option("--source", help="Dataset name to record as the source.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Re-read files already ingested unchanged.")] = False,
) -> None:
    """Ingest files/folders into the store (idempotent, atomic per batch). Exit 2 if anything failed.

    Policy: ``ingest`` (data stewards and admins, purpose operations); one audit event per run."""

    def on_problem(problem: ingest_service.IngestProblem) -> None:
        err.print(f"[red]rejected[/] {problem.line()}", highlight=False, markup=True, soft_wrap=True)

    def body() -> ingest_service.IngestResult:
        with (
            cli.session() as session,
            Progress(
                TextColumn("[bold]ingest"),
                BarColumn(),
                DownloadColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=True,
                disable=cli.as_json or not err.is_terminal,
            ) as progress,
        ):
            task = progress.add_task("ingest", total=None)

            def on_progress(p: ingest_service.IngestProgress) -> None:
                progress.update(task, total=p.bytes_total or None, completed=p.bytes_done)

            return ingest_service.ingest(
                session, paths, source=source, force=force, on_progress=on_progress, on_problem=on_problem
            )

    report = run_command(body)

    def render() -> None:
        out.print(_report_table(report))
        if report.skipped:
            out.print(f"{len(report.skipped)} files skipped (auxiliary or unchanged); see --json for the list")
        if report.problems:
            out.print(f"[red]{len(report.problems)} problems[/] (listed above and kept in the run report)")

    cli.emit(report.model_dump(mode="json"), render)
    if not report.clean:
        raise typer.Exit(2)


# --------------------------------------------------------------------------- search


def _print_hits(hits: tuple[SearchHit, ...], query: str) -> None:
    if not hits:
        out.print("No results.")
        return
    table = Table(title=f"Results for: {query}", show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("record / type / source")
    table.add_column("snippet", overflow="fold")
    for hit in hits:
        when = f"\n{hit.effective.date().isoformat()}" if hit.effective else ""
        parts = []
        if hit.bm25_rank is not None:
            parts.append(f"bm25 #{hit.bm25_rank}")
        if hit.dense_rank is not None:
            parts.append(f"dense #{hit.dense_rank}")
        table.add_row(
            str(hit.rank),
            f"{hit.score:.4f}\n" + ", ".join(parts),
            f"[bold]{hit.record_id}[/]\n{hit.resource_type} · {hit.section}\n{hit.source}{when}",
            hit.text[:400] + ("…" if len(hit.text) > 400 else ""),
        )
    out.print(table)


def _print_timeline(ctx: records.PatientContext, query: str) -> None:
    table = Table(title=f"Timeline of {ctx.patient_id} ({len(ctx.timeline)} records)")
    table.add_column("date")
    table.add_column("type")
    table.add_column("record")
    hit_ids = {h.record_id for h in ctx.hits}
    for entry in ctx.timeline:
        mark = "[bold green]★[/] " if entry.record_id in hit_ids else ""
        day = entry.effective.date().isoformat() if entry.effective else "—"
        table.add_row(day, entry.resource_type, mark + entry.text[:120])
    out.print(table)
    _print_hits(tuple(ctx.hits), query)


@app.command()
@session_command
def search(
    cli: Cli,
    query: Annotated[str, typer.Argument(help="Free-text query.")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, max=1000, help="Number of results.")] = 10,
    mode: Annotated[str, typer.Option("--mode", help="hybrid | bm25 | dense")] = "hybrid",
    patient: Annotated[str | None, typer.Option("--patient", help="Only this patient's records.")] = None,
    types: Annotated[list[str] | None, typer.Option("--type", help="Record type (repeatable).")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Effective on/after (ISO date).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Effective on/before (ISO date).")] = None,
    sources: Annotated[list[str] | None, typer.Option("--source", help="Source dataset (repeatable).")] = None,
    sections: Annotated[list[str] | None, typer.Option("--section", help="Section, e.g. impression.")] = None,
    timeline: Annotated[
        bool,
        typer.Option("--timeline", help="With --patient: order hits chronologically and show the timeline."),
    ] = False,
) -> None:
    """Hybrid (BM25 + dense, RRF) search with filters applied inside both retrievers."""

    def body() -> None:
        search_mode = records.parse_mode(mode)
        window = {"since": records.parse_day(since), "until": records.parse_day(until, end=True)}
        if timeline:
            if not patient:
                raise SageError("--timeline needs --patient ID")
            with cli.session(must_exist=True) as session:
                ctx = records.timeline(
                    session, patient, query, k=k, mode=search_mode, resource_types=tuple(types or ()), **window
                )
            cli.emit(ctx.model_dump(mode="json"), lambda: _print_timeline(ctx, query))
            return
        filters = SearchFilters(
            patient_id=patient,
            resource_types=tuple(types or ()),
            sources=tuple(sources or ()),
            sections=tuple(sections or ()),
            **window,
        )
        with cli.session(must_exist=True) as session:
            result = records.search(session, query, k=k, mode=search_mode, filters=filters)
        cli.emit(result.to_json(), lambda: _print_hits(result.hits, query))

    run_command(body)


# --------------------------------------------------------------------------- stats / show / doctor


def _print_stats(data: records.StoreStats) -> None:
    table = Table(title=f"Store {data.store}")
    table.add_column("what")
    table.add_column("count", justify="right")
    for key in ("records", "record_versions", "patients", "chunks", "vectors", "files", "runs"):
        table.add_row(key, f"{getattr(data, key):,}")
    for name, count in data.by_type.items():
        table.add_row(f"type: {name}", f"{count:,}")
    for name, count in data.by_source.items():
        table.add_row(f"source: {name}", f"{count:,}")
    table.add_row("size on disk", f"{data.bytes_on_disk / 2**20:.1f} MiB")
    out.print(table)


@app.command()
@session_command
def stats(cli: Cli) -> None:
    """Counts by record type and source, chunks, vectors, runs and size on disk."""

    def body() -> None:
        with cli.session(must_exist=True) as session:
            data = records.stats(session)
        cli.emit(data.model_dump(mode="json"), lambda: _print_stats(data))

    run_command(body)


def _print_record(detail: records.RecordDetail) -> None:
    stored, chunks, history = detail.stored, detail.chunks, detail.history
    rec = stored.record
    out.print(
        f"[bold]{rec.id}[/] ({rec.resource_type}, version {stored.version}"
        f"{'' if stored.is_current else ', superseded'})"
    )
    out.print(
        f"source: {rec.source}   patient: {rec.patient_id or '—'}   "
        f"effective: {rec.effective.isoformat() if rec.effective else '—'}"
    )
    out.rule("text")
    out.print(rec.render(), highlight=False, markup=False)
    out.rule("provenance")
    prov = rec.provenance
    out.print(
        f"file: {prov.source_file}\nlocator: {prov.locator}\nfile sha256: {prov.source_sha256}\n"
        f"content hash: {prov.content_hash}\nrun: {prov.run_id}",
        highlight=False,
        markup=False,
    )
    for t in prov.transforms:
        out.print(f"transform: {t.name} v{t.version} {t.params or ''}", highlight=False, markup=False)
    out.rule(f"{len(chunks)} chunks")
    for c in chunks:
        out.print(f"[{c.ordinal}] {c.section}: {c.text[:160]}", highlight=False, markup=False)
    if len(history) > 1:
        out.rule("history")
        for h in history:
            out.print(
                f"v{h.version} {h.created_at.isoformat()} hash {h.content_hash[:12]} "
                f"from {h.record.provenance.source_file}",
                highlight=False,
                markup=False,
            )


@app.command()
@session_command
def show(
    cli: Cli,
    record_id: Annotated[str, typer.Argument(help="Record id, e.g. iu-xray/DiagnosticReport/1")],
    version: Annotated[int | None, typer.Option("--version", help="An older version.")] = None,
) -> None:
    """A record with its provenance, chunks and version history (de-identified for researchers)."""

    def body() -> None:
        with cli.session(must_exist=True) as session:
            detail = records.show(session, record_id, version=version)
        cli.emit(detail.to_json(), lambda: _print_record(detail))

    run_command(body)


@app.command()
def doctor(store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """Versions, store health and offline model availability. Exit 1 if something is wrong."""
    report = system.doctor(settings_for(store))
    if as_json:
        echo_json(report.to_json())
    else:
        table = Table(title="sage-health doctor")
        table.add_column("check")
        table.add_column("status")
        table.add_column("detail", overflow="fold")
        for c in report.checks:
            table.add_row(c.check, "[green]ok[/]" if c.ok else "[red]FAIL[/]", c.detail)
        out.print(table)
    if not report.ok:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- eval


@eval_app.command("retrieval")
@session_command
def eval_retrieval(
    cli: Cli,
    pubmedqa: Annotated[Path, typer.Option("--pubmedqa", help="A PubMedQA ori_pqal_*.json file.")],
    medquad: Annotated[
        Path | None, typer.Option("--medquad", help="A MedQuAD JSONL(.gz) file (distractors + task 2).")
    ] = None,
    medquad_sample: Annotated[int, typer.Option("--medquad-sample", min=1)] = 2000,
    seed: Annotated[int, typer.Option("--seed")] = 13,
) -> None:
    """Recall@1/5/10, MRR and nDCG@10 of BM25, dense and hybrid retrieval on the given files.

    Policy: ``evaluate``; audited with the seed and the input files' sha256."""

    def body() -> None:
        with cli.session() as session:
            result = retrieval_eval.evaluate(session, pubmedqa, medquad, medquad_sample=medquad_sample, seed=seed)
        payload = result.model_dump(mode="json")
        cli.emit(payload, lambda: out.print_json(data=payload))

    run_command(body)


@app.command()
def demo(
    store: StoreOpt = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Public data (default SAGE_DATA_DIR).")] = None,
) -> None:
    """Ingest the shared public data (if not already) and run example searches with cited evidence."""
    from sage_health.interfaces.cli.demo import run_demo

    def body() -> None:
        settings = settings_for(store)
        if data_dir is not None:
            settings = settings.model_copy(update={"data_dir": data_dir})
        run_demo(settings, out, err)

    run_command(body)


cli_models.register(app)
cli_eval.register(app, eval_app)
app.add_typer(cli_radiology.radiology_app, name="radiology")
app.add_typer(cli_radiology.runs_app, name="runs")
app.command("trace")(cli_radiology.trace)
eval_app.command("radiology")(cli_radiology.eval_radiology)
cli_imaging.train_app.command("lora")(cli_lora.lora)
app.add_typer(cli_imaging.train_app, name="train")
app.add_typer(cli_audit.audit_app, name="audit")
app.add_typer(cli_governance.principals_app, name="principals")
app.add_typer(cli_governance.consent_app, name="consent")
app.add_typer(cli_governance.auth_app, name="auth")
app.add_typer(cli_datasets.dataset_app, name="dataset")
app.add_typer(cli_coevolve.coevolve_app, name="coevolve")
app.command("erase")(cli_governance.erase)
app.command("lineage")(cli_governance.lineage)


def main() -> None:
    # OpenMP threads that spin while waiting make torch 5-10x slower when another process shares the cores
    # (measured: SmolLM2 decoding 2 tok/s instead of 12 beside a second busy process on 2 cores). Must be set
    # before torch initialises OpenMP, i.e. before any model loads; an explicit user setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    app()


if __name__ == "__main__":
    main()
