"""The ``Generator`` extension point: chat messages in, a :class:`Generation` out.

Every backend (SmolLM2 through transformers, any OpenAI-compatible endpoint, llama.cpp, the extractive
no-LLM baseline, a locally built tiny model for tests) implements the same small protocol, so the
evaluation harness, the agents and the API treat them alike.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from sage_health.core.errors import ModelError

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length"]


class ChatMessage(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(frozen=True)

    role: Role
    content: str


class GenerationParams(BaseModel):
    """Decoding settings. ``temperature == 0`` means greedy decoding (deterministic)."""

    model_config = ConfigDict(frozen=True)

    max_new_tokens: int = Field(default=256, ge=1, le=8192)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: tuple[str, ...] = ()


class ModelInfo(BaseModel):
    """What a generator is: stored with every output it produces (provenance)."""

    model_config = ConfigDict(frozen=True)

    model_id: str
    version: str
    backend: str
    base_model: str | None = None
    adapter_sha256: str | None = None
    context_window: int | None = None


class Generation(BaseModel):
    """One generated answer with its cost and origin."""

    model_config = ConfigDict(frozen=True)

    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    model_id: str
    model_version: str
    finish_reason: FinishReason


@runtime_checkable
class Generator(Protocol):
    """Produces text from chat messages.

    Contract:
    - ``info`` is cheap (no model load) and names the model id and version that every :class:`Generation`
      carries.
    - ``generate`` loads the model lazily on first use, is deterministic when ``params.temperature == 0``,
      and raises a :class:`~sage_health.core.errors.ModelError` subclass on failure (timeout, endpoint error,
      empty output, context overflow) — never returns an empty text.
    - ``stream`` yields text pieces whose concatenation equals what ``generate`` would return for the same
      inputs; backends without native streaming use :func:`stream_by_generate`.
    """

    @property
    def info(self) -> ModelInfo: ...

    def generate(self, messages: Sequence[ChatMessage], params: GenerationParams | None = None) -> Generation: ...

    def stream(self, messages: Sequence[ChatMessage], params: GenerationParams | None = None) -> Iterator[str]: ...


def stream_by_generate(
    generator: Generator, messages: Sequence[ChatMessage], params: GenerationParams | None = None
) -> Iterator[str]:
    """Streaming fallback: one piece holding the whole generation."""
    yield generator.generate(messages, params).text


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the first stop sequence; says whether one was found."""
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut], cut < len(text)


def validate_messages(messages: Sequence[ChatMessage]) -> None:
    if not messages:
        raise ModelError("no messages to generate from: pass at least one user message")
    if messages[-1].role == "assistant":
        raise ModelError("the last message is from the assistant: the conversation must end with a user turn")


class Stopwatch:
    """``with Stopwatch() as sw: ...; sw.seconds``."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
