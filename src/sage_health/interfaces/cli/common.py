"""Shared pieces of the ``sage-health`` command modules: consoles, the common options (declared once, here),
settings, sessions and error handling.

A command that acts on the store is decorated with :func:`session_command`: the decorator adds ``--store``,
``--as``, ``--purpose`` and ``--json`` to its signature and passes a :class:`Cli` as the first argument, from which
the command opens its authenticated :class:`~sage_health.services.session.Session` and renders results.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from sage_health.core.config import Settings
from sage_health.core.errors import SageError
from sage_health.services.session import Credentials, Runtime, Session, open_session

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
F = TypeVar("F", bound=Callable[..., Any])


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


@dataclass(frozen=True)
class Cli:
    """The common options of one command invocation."""

    store: Path | None = None
    principal: str | None = None
    purpose: str | None = None
    as_json: bool = False

    def settings(self) -> Settings:
        return settings_for(self.store, self.principal, self.purpose)

    def session(self, *, runtime: Runtime | None = None, must_exist: bool = False) -> Session:
        """The authenticated session: the principal comes from ``SAGE_TOKEN`` on a store that requires
        credentials, from ``--as`` on a local store without authentication. ``must_exist``: a command that only
        reads refuses a store that does not exist yet (opening a session would otherwise create it)."""
        settings = self.settings()
        creds = Credentials.from_settings(settings, channel="cli")
        return open_session(settings, creds, runtime=runtime, must_exist=must_exist)

    def emit(self, payload: Any, render: Callable[[], None]) -> None:
        """``--json``: print ``payload`` as JSON; otherwise call ``render`` (tables)."""
        if self.as_json:
            echo_json(payload)
        else:
            render()


def session_as(settings: Settings, principal: str, purpose: str, *, runtime: Runtime | None = None) -> Session:
    """A session acting as ``principal`` for ``purpose`` over the store of ``settings`` (the demo plays several
    built-in roles on a local store; on a store that requires credentials ``SAGE_TOKEN`` must be that principal's).
    """
    acting = settings.model_copy(update={"principal": principal, "purpose": purpose})
    return open_session(acting, Credentials.from_settings(acting, channel="cli"), runtime=runtime)


def session_command(fn: F) -> F:
    """Add the common options to a command whose first parameter is ``cli: Cli``."""
    sig = inspect.signature(fn, eval_str=True)
    own = [p for name, p in sig.parameters.items() if name != "cli"]
    common = [
        inspect.Parameter("store", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=StoreOpt),
        inspect.Parameter("as_", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=AsOpt),
        inspect.Parameter("purpose", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=PurposeOpt),
        inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=JsonOpt),
    ]

    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        store: Path | None = None,
        as_: str | None = None,
        purpose: str | None = None,
        as_json: bool = False,
        **kwargs: Any,
    ) -> Any:
        return fn(Cli(store=store, principal=as_, purpose=purpose, as_json=as_json), *args, **kwargs)

    del wrapper.__wrapped__  # Typer must read the signature below, not the function's own
    params = [*own, *common]
    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params} | {"return": sig.return_annotation}
    return wrapper  # type: ignore[return-value]
