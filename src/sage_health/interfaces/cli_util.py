"""Shared pieces of the ``sage-health`` command modules: consoles, common options, settings, error handling."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from sage_health.core.config import Settings
from sage_health.core.errors import SageError

out = Console()
err = Console(stderr=True)

StoreOpt = Annotated[Path | None, typer.Option("--store", help="Store directory (default ./.sage or SAGE_STORE).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]

T = TypeVar("T")


def settings_for(store: Path | None) -> Settings:
    """Settings from the environment, with ``--store`` applied."""
    settings = Settings()
    if store is not None:
        settings = settings.model_copy(update={"store": store})
    return settings


def run_command(fn: Callable[[], T]) -> T:
    """Run a command body; SageErrors become one clear line on stderr and exit code 1."""
    try:
        return fn()
    except SageError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        raise typer.Exit(1) from exc


def echo_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str, ensure_ascii=False))
