"""``sage-health`` commands of the model layer: ``models ...``, ``generate``, ``serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from sage_health.core.config import Settings
from sage_health.core.errors import PolicyViolation, SageError
from sage_health.data.governance.policy import Action
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
from sage_health.models.catalog import BUILTIN_MODELS, GeneratorPool, resolve_model
from sage_health.models.generation.base import ChatMessage, GenerationParams
from sage_health.models.registry import ModelRegistry, ModelVersion

models_app = typer.Typer(help="The model registry: versions, lineage, evaluations, stages.", no_args_is_help=True)

ActorOpt = Annotated[
    str | None, typer.Option("--by", help="Who does this: must be the acting principal (--as) when given.")
]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Why (kept in the model's event log).")]


def _actor(settings: Settings, by: str | None, action: Action) -> str:
    """The acting principal, checked by the policy engine for ``action`` (audited by the caller)."""
    governed = evaluation_access(settings, action)
    name = governed.access.principal.name
    if by and by != name:
        raise PolicyViolation(f"--by {by!r} differs from the acting principal {name!r}; act as {by!r} with --as")
    return name


def _audit(settings: Settings, action: Action, ref: str, **detail: Any) -> None:
    governed = evaluation_access(settings, action)
    governed.log(action.value, detail={"model": ref, **detail})


def _registry(store: Path | None) -> ModelRegistry:
    return ModelRegistry(settings_for(store).db_path)


def _version_json(mv: ModelVersion) -> dict[str, Any]:
    return mv.model_dump(mode="json") | {"ref": mv.ref}


@models_app.command("list")
def models_list(
    name: Annotated[str | None, typer.Argument(help="Only versions of this model.")] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Registered model versions (built-in base models are registered on first use)."""

    def body() -> None:
        reg = _registry(store)
        for builtin in ("smollm2", "extractive"):
            resolve_model(reg, builtin)
        versions = reg.list_versions(name)
        taints = {v.ref: reg.taint(v) for v in versions}
        if as_json:
            echo_json([_version_json(v) | {"tainted": taints[v.ref]} for v in versions])
            return
        table = Table(title="models")
        for col in ("model", "stage", "backend", "snapshot", "evaluations", "created", "tainted"):
            table.add_column(col)
        for v in versions:
            evals = ", ".join(sorted({e.eval_set for e in v.evaluations})) or "-"
            taint = taints[v.ref]
            table.add_row(v.ref, v.stage, v.backend, v.dataset_snapshot_id or "-", evals, v.created_at,
                          f"[red]yes[/]: {taint}" if taint else "")  # fmt: skip
        out.print(table)

    run_command(body)


@models_app.command("show")
def models_show(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION.")],
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One model version: lineage, config, metrics per evaluation set, stage history."""

    def body() -> None:
        reg = _registry(store)
        mv = resolve_model(reg, ref)
        payload = _version_json(mv) | {"events": [e.model_dump() for e in reg.events(mv.name)]}
        if as_json:
            echo_json(payload)
            return
        out.print_json(data=payload)

    run_command(body)


@models_app.command("register")
def models_register(
    name: Annotated[str, typer.Argument(help="Model name (e.g. cxr-impression).")],
    backend: Annotated[str, typer.Option("--backend", help="Generator backend (smollm2, openai, llamacpp, ...).")],
    version: Annotated[str | None, typer.Option("--version", help="Default: the next integer.")] = None,
    adapter: Annotated[Path | None, typer.Option("--adapter", help="LoRA adapter folder.")] = None,
    snapshot: Annotated[str | None, typer.Option("--snapshot", help="Training dataset snapshot id.")] = None,
    exemplars: Annotated[int, typer.Option("--exemplars", min=0, help="In-context exemplars per input.")] = 0,
    description: Annotated[str | None, typer.Option("--description")] = None,
    by: ActorOpt = None,
    store: StoreOpt = None,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a new candidate version (policy: ``train``)."""

    def body() -> None:
        settings = settings_for(store, as_, purpose)
        actor = _actor(settings, by, Action.TRAIN)
        base = BUILTIN_MODELS.get(backend)
        mv = ModelRegistry(settings.db_path).register(
            name,
            backend=backend,
            version=version,
            base_model=base.base_model if base else None,
            adapter_path=adapter,
            dataset_snapshot_id=snapshot,
            config={"exemplars": exemplars},
            description=description,
            actor=actor,
        )
        _audit(settings, Action.TRAIN, mv.ref, registered=True)
        if as_json:
            echo_json(_version_json(mv))
        else:
            out.print(f"registered {mv.ref} ({mv.stage})")

    run_command(body)


@models_app.command("promote")
def models_promote(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION to put in production.")],
    by: ActorOpt = None,
    reason: ReasonOpt = None,
    store: StoreOpt = None,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Promote a version to production (refused without an evaluation on production's evaluation sets).
    Policy: ``promote`` (admins)."""

    def body() -> None:
        settings = settings_for(store, as_, purpose)
        actor = _actor(settings, by, Action.PROMOTE)
        reg = ModelRegistry(settings.db_path)
        mv = resolve_model(reg, ref)
        promoted = reg.promote(mv.name, mv.version, actor=actor, reason=reason)
        _audit(settings, Action.PROMOTE, promoted.ref, stage="production")
        if as_json:
            echo_json(_version_json(promoted))
        else:
            out.print(f"{promoted.ref} is now production (by {promoted.promoted_by})")

    run_command(body)


@models_app.command("rollback")
def models_rollback(
    name: Annotated[str, typer.Argument(help="Model name.")],
    by: ActorOpt = None,
    reason: ReasonOpt = None,
    store: StoreOpt = None,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Restore the previous production version (the current one is archived). Policy: ``promote``."""

    def body() -> None:
        settings = settings_for(store, as_, purpose)
        actor = _actor(settings, by, Action.PROMOTE)
        restored = ModelRegistry(settings.db_path).rollback(name, actor=actor, reason=reason)
        _audit(settings, Action.PROMOTE, restored.ref, rollback=True)
        if as_json:
            echo_json(_version_json(restored))
        else:
            out.print(f"{restored.ref} is production again")

    run_command(body)


def generate(
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    model: Annotated[
        str | None, typer.Option("--model", help="NAME[@VERSION] or a built-in backend (default SAGE_GENERATOR).")
    ] = None,
    system: Annotated[str | None, typer.Option("--system", help="A system message.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, max=8192)] = 128,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, max=2.0)] = 0.0,
    store: StoreOpt = None,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Generate one answer with a registered model (greedy by default). Policy: ``generate``; the prompt is
    audited by its sha256 only."""

    def body() -> None:
        settings = settings_for(store, as_, purpose)
        governed = evaluation_access(settings, Action.GENERATE)
        _mv, gen = GeneratorPool(settings, ModelRegistry(settings.db_path)).get(model or settings.generator)
        messages = [ChatMessage(role="system", content=system)] if system else []
        messages.append(ChatMessage(role="user", content=prompt))
        result = gen.generate(messages, GenerationParams(max_new_tokens=max_tokens, temperature=temperature))
        governed.log(Action.GENERATE.value, query=prompt, detail={"model": f"{result.model_id}@{result.model_version}"})
        if as_json:
            echo_json(result.model_dump())
        else:
            out.print(result.text, highlight=False, markup=False)
            err.print(
                f"[dim]{result.model_id}@{result.model_version} · {result.completion_tokens} tokens · "
                f"{result.latency_s:.2f}s · {result.finish_reason}[/]"
            )

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
