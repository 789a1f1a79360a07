"""Structured output: ask a generator for JSON matching a pydantic schema, validate it, repair on failure.

The schema (``model_json_schema()``) is shown to the model; the first JSON object in its answer is parsed
and validated. On failure the model sees its own answer and the validation error and tries again, up to
``max_attempts`` times; then :class:`~sage_health.core.errors.StructuredOutputError` says what was wrong.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import pydantic
from pydantic import BaseModel

from sage_health.core.errors import StructuredOutputError
from sage_health.models.generation.base import ChatMessage, Generation, GenerationParams, Generator

T = TypeVar("T", bound=BaseModel)


@dataclass(frozen=True)
class StructuredResult(Generic[T]):
    """The validated object, the generations it took (the last one is the accepted answer) and the attempts."""

    value: T
    generations: tuple[Generation, ...]

    @property
    def attempts(self) -> int:
        return len(self.generations)


def extract_json(text: str) -> str | None:
    """The first balanced ``{...}`` object in ``text`` (ignores code fences and prose around it)."""
    start = text.find("{")
    while start != -1:
        depth, in_str, esc = 0, False, False
        for i in range(start, len(text)):
            c = text[i]
            if in_str:
                if esc:
                    esc = False
                elif c == "\\":
                    esc = True
                elif c == '"':
                    in_str = False
            elif c == '"':
                in_str = True
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[start : i + 1]
        start = text.find("{", start + 1)
    return None


def schema_instruction(schema: type[BaseModel]) -> str:
    return "Reply with one JSON object only, no prose, matching this JSON schema:\n" + json.dumps(
        schema.model_json_schema(), separators=(",", ":")
    )


def generate_structured(
    generator: Generator,
    messages: Sequence[ChatMessage],
    schema: type[T],
    *,
    params: GenerationParams | None = None,
    max_attempts: int = 3,
) -> StructuredResult[T]:
    """Generate until the output validates against ``schema`` (at most ``max_attempts`` generations)."""
    if max_attempts < 1:
        raise ValueError("max_attempts must be >= 1")
    convo = list(messages)
    convo.append(ChatMessage(role="user", content=schema_instruction(schema)))
    generations: list[Generation] = []
    problem = ""
    for _ in range(max_attempts):
        gen = generator.generate(convo, params)
        generations.append(gen)
        raw = extract_json(gen.text)
        if raw is None:
            problem = "the answer contains no JSON object"
        else:
            try:
                return StructuredResult(value=schema.model_validate_json(raw), generations=tuple(generations))
            except pydantic.ValidationError as exc:
                problem = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()[:5]
                )
        convo.append(ChatMessage(role="assistant", content=gen.text))
        convo.append(
            ChatMessage(
                role="user",
                content=f"That answer is invalid ({problem}). Reply again with one corrected JSON object only.",
            )
        )
    raise StructuredOutputError(
        f"{generations[-1].model_id} gave no valid {schema.__name__} JSON in {max_attempts} attempt(s): {problem}"
    )
