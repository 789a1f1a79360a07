"""``sage-health dataset create|list|show|export``: versioned, de-identified, content-addressed dataset snapshots."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Column, Table

from sage_health.data.datasets import (
    DEFAULT_QUERY_LIMIT,
    DEFAULT_SEED,
    SPLITS,
    SnapshotInfo,
    Task,
    create_snapshot,
    export_snapshot,
    get_snapshot,
    list_snapshots,
    parse_selector,
)
from sage_health.data.governance.access import open_governed
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

dataset_app = typer.Typer(
    help="Dataset snapshots: versioned, de-identified, content-addressed train/val/test files with a datasheet.",
    no_args_is_help=True,
)


def _default_task(resource_type: str | None) -> Task:
    if resource_type == "DiagnosticReport":
        return "impression"
    return "qa" if resource_type == "QAItem" else "text"


def _counts(info: SnapshotInfo) -> str:
    return "/".join(str(info.counts.get(s, 0)) for s in SPLITS)


@dataset_app.command("create")
def dataset_create(
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
    store: StoreOpt = None,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an immutable snapshot NAME@HASH (policy: ``snapshot``; research opt-outs excluded; audited)."""

    def body() -> None:
        settings = settings_for(store, as_, purpose)
        selector = parse_selector(from_)
        the_task = task or _default_task(selector.resource_type)
        with open_store(settings) as raw:
            governed = open_governed(settings, raw)
            info = create_snapshot(
                governed, settings, name, selector, task=the_task, split=split, seed=seed, deid=deid, limit=limit
            )
        if as_json:
            echo_json(info.as_dict())
            return
        verb = "exists already (same content; nothing rewritten)" if info.existed else "created"
        out.print(
            f"snapshot {info.ref} {verb}: {info.counts['items']} items, train/val/test {_counts(info)}, "
            f"{info.counts['patients']} patients",
            highlight=False,
        )
        out.print(f"  {escape(str(info.path))}", highlight=False)
        out.print(f"  datasheet: {escape(str(info.datasheet_path))}", highlight=False)

    run_command(body)


@dataset_app.command("list")
def dataset_list(
    store: StoreOpt = None, as_: AsOpt = None, purpose: PurposeOpt = None, as_json: JsonOpt = False
) -> None:
    """Every snapshot version, newest first, with its counts and taint (policy: ``snapshot``)."""

    def body() -> None:
        settings = settings_for(store, as_, purpose)
        governed = evaluation_access(settings, Action.SNAPSHOT)
        found = list_snapshots(settings)
        governed.log(Action.SNAPSHOT.value, detail={"listed": len(found)})
        if as_json:
            echo_json([i.as_dict() for i in found])
            return
        table = Table(Column("name", no_wrap=True), Column("hash", no_wrap=True), "task", "items",
                      "train/val/test", "de-id", "created", "tainted")  # fmt: skip
        for i in found:
            table.add_row(i.name, i.hash, i.task, str(i.counts.get("items", 0)), _counts(i),
                          "yes" if i.params.get("deid") else "no", i.created_at[:10],
                          "[red]yes[/]" if i.tainted else "no")  # fmt: skip
        out.print(table)

    run_command(body)


@dataset_app.command("show")
def dataset_show(
    ref: Annotated[str, typer.Argument(help="NAME (newest version) or NAME@HASH (a unique prefix is enough).")],
    store: StoreOpt = None,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A snapshot's manifest and where its datasheet is (policy: ``snapshot``)."""

    def body() -> None:
        settings = settings_for(store, as_, purpose)
        governed = evaluation_access(settings, Action.SNAPSHOT)
        info = get_snapshot(settings, ref)
        manifest = info.manifest()
        governed.log(Action.SNAPSHOT.value, detail={"shown": info.ref})
        if as_json:
            echo_json({"snapshot": info.as_dict(), "manifest": manifest, "datasheet": str(info.datasheet_path)})
            return
        deid = manifest.get("deidentification", {})
        consent = manifest.get("consent", {})
        lines = [
            f"[bold]{info.ref}[/]" + ("  [red]TAINTED[/]: " + escape(info.taint) if info.taint else ""),
            f"task {info.task}, selector {escape(info.selector)}, split {'/'.join(map(str, info.params['split']))}, "
            f"seed {info.params['seed']}",
            f"items {info.counts['items']} (train/val/test {_counts(info)}), patients {info.counts['patients']}",
            "sources: " + ", ".join(f"{s} {n}" for s, n in manifest.get("sources", {}).items()),
            f"de-identified: {'yes (' + str(deid.get('method')) + ')' if deid.get('applied') else 'no'}; "
            f"opted-out patients excluded: {consent.get('opted_out_patients_excluded', 0)}",
            f"created {info.created_at} by {info.created_by} ({info.purpose})",
            f"path: {escape(str(info.path))}",
            f"datasheet: {escape(str(info.datasheet_path))}",
        ]
        for line in lines:
            out.print(line, highlight=False)

    run_command(body)


@dataset_app.command("export")
def dataset_export(
    ref: Annotated[str, typer.Argument(help="NAME (newest version) or NAME@HASH.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to export into (NAME-HASH/ is created in it).")],
    fmt: Annotated[
        str, typer.Option("--format", help="jsonl, or parquet (needs pyarrow, not installed by default).")
    ] = "jsonl",
    store: StoreOpt = None,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Copy a snapshot out of the store (policy: ``export``; tainted snapshots are refused; audited)."""

    def body() -> None:
        settings = settings_for(store, as_, purpose)
        governed = evaluation_access(settings, Action.EXPORT)
        result = export_snapshot(governed, settings, ref, out_dir, fmt=fmt)
        if as_json:
            echo_json(result.as_dict())
            return
        verb = "already exported (identical)" if result.existed else "exported"
        out.print(f"snapshot {result.snapshot.ref} {verb} to {escape(str(result.path))}", highlight=False)

    run_command(body)
