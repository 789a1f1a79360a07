"""``sage-health dataset create|list|show|export``: versioned, de-identified, content-addressed dataset snapshots."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Column, Table

from sage_health.data.datasets import DEFAULT_QUERY_LIMIT, DEFAULT_SEED, SPLITS, SnapshotInfo
from sage_health.interfaces.cli.common import Cli, out, run_command, session_command
from sage_health.services import datasets as dataset_service

dataset_app = typer.Typer(
    help="Dataset snapshots: versioned, de-identified, content-addressed train/val/test files with a datasheet.",
    no_args_is_help=True,
)


def _counts(info: SnapshotInfo) -> str:
    return "/".join(str(info.counts.get(s, 0)) for s in SPLITS)


@dataset_app.command("create")
@session_command
def dataset_create(
    cli: Cli,
    name: Annotated[str, typer.Argument(help="Dataset name (lower case, e.g. iu-impression).")],
    from_: Annotated[
        str,
        typer.Option(
            "--from",
            help="Record type, optionally with a source (DiagnosticReport, DiagnosticReport:iu-xray, QAItem:mirage), "
            "or query:TEXT (hybrid search, top --limit).",
        ),
    ],
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            help="impression, findings, qa or text (default: impression for reports, qa for QA items, else text).",
        ),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="train/val/test percentages.")] = "80/10/10",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split hash.")] = DEFAULT_SEED,
    deid: Annotated[
        bool, typer.Option("--deid", help="De-identify (required for researchers; optional for data stewards).")
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", help=f"At most this many items (query selector: top hits, default {DEFAULT_QUERY_LIMIT})."
        ),
    ] = None,
) -> None:
    """Create an immutable snapshot NAME@HASH (policy: ``snapshot``; research opt-outs excluded; audited)."""

    def body() -> None:
        with cli.session() as session:
            info = dataset_service.create(session, name, from_, task=task, split=split, seed=seed, deid=deid,
                                          limit=limit)  # fmt: skip

        def render() -> None:
            verb = "exists already (same content; nothing rewritten)" if info.existed else "created"
            out.print(
                f"snapshot {info.ref} {verb}: {info.counts['items']} items, train/val/test {_counts(info)}, "
                f"{info.counts['patients']} patients",
                highlight=False,
            )
            out.print(f"  {escape(str(info.path))}", highlight=False)
            out.print(f"  datasheet: {escape(str(info.datasheet_path))}", highlight=False)

        cli.emit(info.as_dict(), render)

    run_command(body)


@dataset_app.command("list")
@session_command
def dataset_list(cli: Cli) -> None:
    """Every snapshot version, newest first, with its counts and taint (policy: ``snapshot``)."""

    def body() -> None:
        with cli.session() as session:
            found = dataset_service.list_all(session)

        def render() -> None:
            table = Table(Column("name", no_wrap=True), Column("hash", no_wrap=True), "task", "items",
                          "train/val/test", "de-id", "created", "tainted")  # fmt: skip
            for i in found:
                tainted = "[red]yes[/]" + (" (items erased)" if i.items_erased else "") if i.tainted else "no"
                table.add_row(i.name, i.hash, i.task, str(i.counts.get("items", 0)), _counts(i),
                              "yes" if i.params.get("deid") else "no", i.created_at[:10], tainted)  # fmt: skip
            out.print(table)

        cli.emit([i.as_dict() for i in found], render)

    run_command(body)


@dataset_app.command("show")
@session_command
def dataset_show(
    cli: Cli,
    ref: Annotated[str, typer.Argument(help="NAME (newest version) or NAME@HASH (a unique prefix is enough).")],
) -> None:
    """A snapshot's manifest and where its datasheet is (policy: ``snapshot``)."""

    def body() -> None:
        with cli.session() as session:
            shown = dataset_service.show(session, ref)
        info, manifest = shown.info, shown.manifest

        def render() -> None:
            deid = manifest.get("deidentification", {})
            consent = manifest.get("consent", {})
            lines = [
                f"[bold]{info.ref}[/]" + ("  [red]TAINTED[/]: " + escape(info.taint) if info.taint else ""),
                f"task {info.task}, selector {escape(info.selector)}, split "
                f"{'/'.join(map(str, info.params['split']))}, seed {info.params['seed']}",
                f"items {info.counts['items']} (train/val/test {_counts(info)}), patients {info.counts['patients']}",
                "sources: " + ", ".join(f"{s} {n}" for s, n in manifest.get("sources", {}).items()),
                f"de-identified: {'yes (' + str(deid.get('method')) + ')' if deid.get('applied') else 'no'}; "
                f"opted-out patients excluded: {consent.get('opted_out_patients_excluded', 0)}",
                f"created {info.created_at} by {info.created_by} ({info.purpose})",
                f"path: {escape(str(info.path))}",
                f"datasheet: {escape(str(info.datasheet_path))}",
            ]
            if info.items_erased:
                lines.append("[red]item files removed by an erasure[/] (see ERASURE.json in the folder)")
            for line in lines:
                out.print(line, highlight=False)

        cli.emit(shown.to_json(), render)

    run_command(body)


@dataset_app.command("export")
@session_command
def dataset_export(
    cli: Cli,
    ref: Annotated[str, typer.Argument(help="NAME (newest version) or NAME@HASH.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to export into (NAME-HASH/ is created in it).")],
    fmt: Annotated[
        str, typer.Option("--format", help="jsonl, or parquet (needs pyarrow, not installed by default).")
    ] = "jsonl",
) -> None:
    """Copy a snapshot out of the store (policy: ``export``; tainted snapshots are refused; audited)."""

    def body() -> None:
        with cli.session() as session:
            result = dataset_service.export(session, ref, out_dir, fmt=fmt)

        def render() -> None:
            verb = "already exported (identical)" if result.existed else "exported"
            out.print(f"snapshot {result.snapshot.ref} {verb} to {escape(str(result.path))}", highlight=False)

        cli.emit(result.as_dict(), render)

    run_command(body)
