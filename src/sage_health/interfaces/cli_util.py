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
from sage_health.data.governance.access import GovernedStore, open_governed
from sage_health.data.governance.policy import Action
from sage_health.data.store.factory import open_store

out = Console()
err = Console(stderr=True)

StoreOpt = Annotated[Path | None, typer.Option("--store", help="Store directory (default ./.sage or SAGE_STORE).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
AsOpt = Annotated[
    str | None,
    typer.Option(
        "--as",
        help="Principal acting (default SAGE_PRINCIPAL); built-ins: clinician, researcher, data_steward, admin.",
    ),
]
PurposeOpt = Annotated[
    str | None,
    typer.Option("--purpose", help="Purpose of use: treatment, research or operations (default SAGE_PURPOSE)."),
]

T = TypeVar("T")


def settings_for(store: Path | None, principal: str | None = None, purpose: str | None = None) -> Settings:
    """Settings from the environment, with ``--store``, ``--as`` and ``--purpose`` applied."""
    settings = Settings()
    update: dict[str, Any] = {}
    if store is not None:
        update["store"] = store
    if principal:
        update["principal"] = principal
    if purpose:
        update["purpose"] = purpose
    return settings.model_copy(update=update) if update else settings


def run_command(fn: Callable[[], T]) -> T:
    """Run a command body; SageErrors become one clear line on stderr and exit code 1."""
    try:
        return fn()
    except SageError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        raise typer.Exit(1) from exc


def echo_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str, ensure_ascii=False))


def evaluation_access(settings: Settings, action: Action = Action.EVALUATE) -> GovernedStore:
    """Policy check for a command that works on explicit files rather than the store (evaluations, training
    from files): the acting principal must be allowed ``action``; the returned governed store audits the run."""
    governed = open_governed(settings, open_store(settings, must_exist=False))
    governed.decide(action)
    return governed
