"""The REST API (FastAPI): OpenAI-compatible ``/v1`` endpoints over the model registry, plus health.

- ``GET /v1/models`` — the registered model versions (OpenAI list shape; ids are ``name@version``; a bare
  ``name`` in a request means its production version, else its newest).
- ``POST /v1/chat/completions`` — non-streaming, or server-sent events with ``"stream": true``.
- ``GET /healthz`` — liveness.
- The radiology workflow: ``POST /v1/radiology/drafts``, ``POST /v1/radiology/drafts/{run_id}/review``,
  ``GET /v1/runs/{run_id}`` (see :mod:`sage_health.interfaces.api.radiology`).

Settings come from the ``get_settings`` dependency (tests override it). Every error — ours, a request that
fails validation, an unknown route — has one JSON shape, compatible with OpenAI clients::

    {"error": {"type": "<ErrorClass>", "message": "...", "code": <http status>}}

Authentication: every route but ``/healthz`` needs ``Authorization: Bearer <token>`` (a principal's token from
``sage-health principals token create``): 401 without valid credentials, 403 when the policy denies (see
:mod:`sage_health.interfaces.api.deps`). The routes only parse and render: the use cases are
:mod:`sage_health.services.models` and :mod:`sage_health.services.generation` (policy, audit, tainted models
refused), shared with the CLI.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from sage_health import __version__
from sage_health.core.config import Settings
from sage_health.core.errors import (
    AuthenticationError,
    ConfigError,
    ContextOverflowError,
    EndpointError,
    GenerationTimeoutError,
    ModelLoadError,
    PolicyViolation,
    RecordNotFoundError,
    RegistryError,
    RetrievalError,
    RunNotFoundError,
    RunStateError,
    SageError,
    StudyInputError,
    ValidationError,
)
from sage_health.interfaces.api.deps import SessionDep, get_settings
from sage_health.interfaces.api.radiology import add_radiology_routes
from sage_health.models.generation.base import ChatMessage, GenerationParams
from sage_health.services import generation, models
from sage_health.services.session import Runtime

# One place that maps error classes to HTTP status codes (most specific first).
ERROR_STATUS: tuple[tuple[type[SageError], int], ...] = (
    (AuthenticationError, 401),
    (RecordNotFoundError, 404),
    (RunNotFoundError, 404),
    (RunStateError, 409),
    (StudyInputError, 422),
    (PolicyViolation, 403),
    (ValidationError, 422),
    (ContextOverflowError, 400),
    (RetrievalError, 400),
    (ConfigError, 400),
    (GenerationTimeoutError, 504),
    (EndpointError, 502),
    (ModelLoadError, 503),
)


def status_for(exc: SageError) -> int:
    if isinstance(exc, RegistryError):
        return 404 if str(exc).startswith("unknown model") else 409
    for cls, status in ERROR_STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_body(kind: str, message: str, status: int) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, "code": status}}


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict[str, Any]]

    def to_message(self) -> ChatMessage:
        content = self.content
        if isinstance(content, list):  # OpenAI content parts: keep the text parts
            content = "".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
        role = "system" if self.role == "developer" else self.role
        return ChatMessage(role=role, content=content)


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=8192)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1)

    def params(self, default_max: int) -> GenerationParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return GenerationParams(
            max_new_tokens=self.max_completion_tokens or self.max_tokens or default_max,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=stop,
        )


def create_app(settings: Settings | None = None, *, auth: bool = True) -> FastAPI:
    """The API application. ``settings`` pre-binds the settings dependency (used by ``sage-health serve``);
    ``auth=False`` (``serve --no-auth``, loopback only) acts as the configured principal on a store that does not
    require credentials."""
    app = FastAPI(
        title="SAGE-Health API",
        version=__version__,
        description="OpenAI-compatible chat completions over the SAGE-Health model registry.",
    )
    if settings is not None:
        app.dependency_overrides[get_settings] = lambda: settings
    app.state.runtime = Runtime(bm25_index="memory")
    app.state.auth = auth

    @app.exception_handler(SageError)
    async def sage_error(_: Request, exc: SageError) -> JSONResponse:
        status = status_for(exc)
        headers = {"WWW-Authenticate": 'Bearer realm="sage-health"'} if status == 401 else None
        return JSONResponse(error_body(type(exc).__name__, str(exc), status), status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()[:5]
        )
        return JSONResponse(error_body("InvalidRequest", problems, 422), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body("HTTPError", str(exc.detail), exc.status_code), status_code=exc.status_code)

    add_radiology_routes(app)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/v1/models", tags=["openai"])
    def list_models(session: SessionDep) -> dict[str, Any]:
        data = [
            {
                "id": e.ref,
                "object": "model",
                "created": int(datetime.fromisoformat(e.version.created_at).timestamp()),
                "owned_by": "sage-health",
                "stage": e.version.stage,
                "backend": e.version.backend,
                "dataset_snapshot_id": e.version.dataset_snapshot_id,
                "tainted": e.taint is not None,
            }
            for e in models.list_models(session)
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", tags=["openai"], response_model=None)
    def chat_completions(body: ChatCompletionRequest, session: SessionDep) -> dict[str, Any] | StreamingResponse:
        messages = [m.to_message() for m in body.messages]
        params = body.params(session.settings.max_new_tokens)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if body.stream:
            streamed = generation.stream(session, messages, model=body.model, params=params,
                                         endpoint="chat.completions")  # fmt: skip

            def events() -> Iterator[str]:
                def chunk(delta: dict[str, str], finish: str | None) -> str:
                    payload = {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": streamed.model_ref,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    }
                    return f"data: {json.dumps(payload)}\n\n"

                yield chunk({"role": "assistant", "content": ""}, None)
                try:
                    for piece in streamed.pieces:
                        yield chunk({"content": piece}, None)
                except SageError as exc:
                    yield f"data: {json.dumps(error_body(type(exc).__name__, str(exc), status_for(exc)))}\n\n"
                    return
                yield chunk({}, "stop")
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        done = generation.complete(session, messages, model=body.model, params=params, endpoint="chat.completions")
        out = done.generation
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": done.model_ref,
            "system_fingerprint": f"{out.model_id}@{out.model_version}",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": out.text},
                    "finish_reason": out.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": out.prompt_tokens,
                "completion_tokens": out.completion_tokens,
                "total_tokens": out.prompt_tokens + out.completion_tokens,
            },
        }

    return app
