"""Generation use cases: one completion (``sage-health generate``, ``POST /v1/chat/completions``) and a streamed
completion (server-sent events).

Policy: ``generate``. The model is resolved through the registry's generator pool, which refuses tainted versions
(they no longer serve). The audit event holds the model ref and the prompt's sha256 only, never its text; a failed
generation is audited with outcome ``failed`` and the error class.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sage_health.core.errors import SageError
from sage_health.data.governance.policy import Action
from sage_health.models.generation.base import ChatMessage, Generation, GenerationParams, Generator
from sage_health.models.registry import ModelVersion
from sage_health.services.session import Session


@dataclass(frozen=True)
class Completion:
    """One answer and the registered version that wrote it."""

    model_ref: str
    generation: Generation


@dataclass(frozen=True)
class CompletionStream:
    """A streamed answer: ``pieces`` yields the text as it is generated (the first piece was already produced,
    so a bad request fails before anything is sent)."""

    model_ref: str
    pieces: Iterator[str]


def _prompt(messages: Sequence[ChatMessage]) -> str:
    return "\n".join(m.content for m in messages)


def _model(session: Session, model: str | None) -> tuple[ModelVersion, Generator]:
    return session.pool().get(model or session.settings.generator)


def _audit(session: Session, messages: Sequence[ChatMessage], detail: dict[str, Any], outcome: str = "ok") -> None:
    session.audit(Action.GENERATE.value, query=_prompt(messages), detail=detail, outcome=outcome)


def complete(
    session: Session,
    messages: Sequence[ChatMessage],
    *,
    model: str | None = None,
    params: GenerationParams | None = None,
    endpoint: str = "generate",
) -> Completion:
    """Generate one answer with ``model`` (``NAME[@VERSION]``; default ``SAGE_GENERATOR``)."""
    session.decide(Action.GENERATE, detail={"endpoint": endpoint})
    detail: dict[str, Any] = {"model": model or session.settings.generator, "endpoint": endpoint}
    try:
        mv, gen = _model(session, model)
        detail["model"] = mv.ref
        out = gen.generate(list(messages), params or GenerationParams(max_new_tokens=session.settings.max_new_tokens))
    except SageError as exc:
        _audit(session, messages, {**detail, "error": type(exc).__name__}, outcome="failed")
        raise
    _audit(session, messages, {**detail, "completion_tokens": out.completion_tokens})
    return Completion(model_ref=mv.ref, generation=out)


def stream(
    session: Session,
    messages: Sequence[ChatMessage],
    *,
    model: str | None = None,
    params: GenerationParams | None = None,
    endpoint: str = "generate",
) -> CompletionStream:
    """Stream one answer. The first piece is generated here, so an invalid request (unknown or tainted model,
    prompt too long) raises before the caller starts its response."""
    session.decide(Action.GENERATE, detail={"endpoint": endpoint, "stream": True})
    detail: dict[str, Any] = {"model": model or session.settings.generator, "endpoint": endpoint, "stream": True}
    try:
        mv, gen = _model(session, model)
        detail["model"] = mv.ref
        pieces = gen.stream(list(messages), params or GenerationParams(max_new_tokens=session.settings.max_new_tokens))
        first = next(pieces, None)
    except SageError as exc:
        _audit(session, messages, {**detail, "error": type(exc).__name__}, outcome="failed")
        raise
    _audit(session, messages, detail)

    def all_pieces() -> Iterator[str]:
        if first is not None:
            yield first
        yield from pieces

    return CompletionStream(model_ref=mv.ref, pieces=all_pieces())
