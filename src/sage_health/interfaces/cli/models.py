"""``sage-health`` commands of the model layer: ``models ...``, ``generate``, ``serve``.

Each command parses its options, calls one use case of :mod:`sage_health.services.models` or
:mod:`sage_health.services.generation` and renders the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sage_health.core.errors import SageError
from sage_health.interfaces.cli.common import AsOpt, Cli, StoreOpt, err, out, run_command, session_command, settings_for
from sage_health.models.generation.base import ChatMessage, GenerationParams
from sage_health.services import generation, models
from sage_health.services.models import ModelEntry

models_app = typer.Typer(help="The model registry: versions, lineage, evaluations, stages.", no_args_is_help=True)

ActorOpt = Annotated[
    str | None, typer.Option("--by", help="Who does this: must be the acting principal (--as) when given.")
]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Why (kept in the model's event log).")]


def _print_entries(entries: list[ModelEntry]) -> None:
    table = Table(title="models")
    for col in ("model", "stage", "backend", "snapshot", "evaluations", "created", "tainted"):
        table.add_column(col)
    for e in entries:
        v = e.version
        evals = ", ".join(sorted({ev.eval_set for ev in v.evaluations})) or "-"
        table.add_row(v.ref, v.stage, v.backend, v.dataset_snapshot_id or "-", evals, v.created_at,
                      f"[red]yes[/]: {e.taint}" if e.taint else "")  # fmt: skip
    out.print(table)


@models_app.command("list")
@session_command
def models_list(
    cli: Cli,
    name: Annotated[str | None, typer.Argument(help="Only versions of this model.")] = None,
) -> None:
    """Registered model versions (built-in base models are registered on first use)."""

    def body() -> None:
        with cli.session() as session:
            entries = models.list_models(session, name)
        cli.emit([e.as_dict() for e in entries], lambda: _print_entries(entries))

    run_command(body)


@models_app.command("show")
@session_command
def models_show(cli: Cli, ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION.")]) -> None:
    """One model version: lineage, config, metrics per evaluation set, stage history."""

    def body() -> None:
        with cli.session() as session:
            detail = models.show_model(session, ref)
        payload = detail.as_dict()
        cli.emit(payload, lambda: out.print_json(data=payload))

    run_command(body)


@models_app.command("register")
@session_command
def models_register(
    cli: Cli,
    name: Annotated[str, typer.Argument(help="Model name (e.g. cxr-impression).")],
    backend: Annotated[str, typer.Option("--backend", help="Generator backend (smollm2, openai, llamacpp, ...).")],
    version: Annotated[str | None, typer.Option("--version", help="Default: the next integer.")] = None,
    adapter: Annotated[Path | None, typer.Option("--adapter", help="LoRA adapter folder.")] = None,
    snapshot: Annotated[str | None, typer.Option("--snapshot", help="Training dataset snapshot id.")] = None,
    exemplars: Annotated[int, typer.Option("--exemplars", min=0, help="In-context exemplars per input.")] = 0,
    description: Annotated[str | None, typer.Option("--description")] = None,
    by: ActorOpt = None,
) -> None:
    """Register a new candidate version (policy: ``train``)."""

    def body() -> None:
        with cli.session() as session:
            entry = models.register_model(session, name, backend=backend, version=version, adapter=adapter,
                                          snapshot=snapshot, exemplars=exemplars, description=description,
                                          by=by)  # fmt: skip
        cli.emit(entry.as_dict(), lambda: out.print(f"registered {entry.ref} ({entry.version.stage})"))

    run_command(body)


@models_app.command("promote")
@session_command
def models_promote(
    cli: Cli,
    ref: Annotated[str, typer.Argument(help="NAME@VERSION to put in production.")],
    by: ActorOpt = None,
    reason: ReasonOpt = None,
) -> None:
    """Promote a version to production (refused without an evaluation on production's evaluation sets, and for a
    tainted version). Policy: ``promote`` (admins)."""

    def body() -> None:
        with cli.session() as session:
            entry = models.promote_model(session, ref, by=by, reason=reason)
        cli.emit(entry.as_dict(), lambda: out.print(f"{entry.ref} is now production (by {entry.version.promoted_by})"))

    run_command(body)


@models_app.command("rollback")
@session_command
def models_rollback(
    cli: Cli,
    name: Annotated[str, typer.Argument(help="Model name.")],
    by: ActorOpt = None,
    reason: ReasonOpt = None,
) -> None:
    """Restore the previous production version (the current one is archived); refused when that version is
    tainted. Policy: ``promote``."""

    def body() -> None:
        with cli.session() as session:
            entry = models.rollback_model(session, name, by=by, reason=reason)
        cli.emit(entry.as_dict(), lambda: out.print(f"{entry.ref} is production again"))

    run_command(body)


@models_app.command("archive")
@session_command
def models_archive(
    cli: Cli,
    ref: Annotated[str, typer.Argument(help="NAME@VERSION to archive (not the production version).")],
    by: ActorOpt = None,
    reason: ReasonOpt = None,
) -> None:
    """Archive a candidate version (it stays listed with its lineage and metrics). Policy: ``promote``."""

    def body() -> None:
        with cli.session() as session:
            entry = models.archive_model(session, ref, by=by, reason=reason)
        cli.emit(entry.as_dict(), lambda: out.print(f"{entry.ref} is archived"))

    run_command(body)


@session_command
def generate(
    cli: Cli,
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    model: Annotated[
        str | None, typer.Option("--model", help="NAME[@VERSION] or a built-in backend (default SAGE_GENERATOR).")
    ] = None,
    system: Annotated[str | None, typer.Option("--system", help="A system message.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, max=8192)] = 128,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, max=2.0)] = 0.0,
) -> None:
    """Generate one answer with a registered model (greedy by default). Policy: ``generate``; the prompt is
    audited by its sha256 only."""

    def body() -> None:
        messages = [ChatMessage(role="system", content=system)] if system else []
        messages.append(ChatMessage(role="user", content=prompt))
        params = GenerationParams(max_new_tokens=max_tokens, temperature=temperature)
        with cli.session() as session:
            done = generation.complete(session, messages, model=model, params=params)
        result = done.generation

        def render() -> None:
            out.print(result.text, highlight=False, markup=False)
            err.print(
                f"[dim]{result.model_id}@{result.model_version} · {result.completion_tokens} tokens · "
                f"{result.latency_s:.2f}s · {result.finish_reason}[/]"
            )

        cli.emit(result.model_dump(), render)

    run_command(body)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(
    host: Annotated[str, typer.Option("--host", help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    store: StoreOpt = None,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth",
            help="Loopback only: act as SAGE_PRINCIPAL without tokens, on a store that does not require them.",
        ),
    ] = False,
    as_: AsOpt = None,
) -> None:
    """Serve the REST API (OpenAPI at /docs). Every route but /healthz needs `Authorization: Bearer <token>`."""

    def body() -> None:
        try:
            import uvicorn
        except ImportError as exc:
            raise SageError("uvicorn is not installed: run `make install`") from exc
        from sage_health.interfaces.api import create_app

        settings = settings_for(store, as_)
        if no_auth:
            if host not in LOOPBACK:
                raise SageError(f"--no-auth is refused on {host}: bind 127.0.0.1 or serve with tokens")
            err.print(
                f"[yellow]warning:[/] --no-auth: every request acts as {settings.principal or '(SAGE_PRINCIPAL)'} "
                "without credentials; loopback only, for a single local user"
            )
        uvicorn.run(create_app(settings, auth=not no_auth), host=host, port=port, log_level="info")

    run_command(body)


def register(app: typer.Typer) -> None:
    """Attach the model-layer commands to the main CLI."""
    app.add_typer(models_app, name="models")
    app.command("generate")(generate)
    app.command("serve")(serve)
