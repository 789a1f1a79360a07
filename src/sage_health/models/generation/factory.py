"""Build a :class:`Generator` from a backend name and options — the one place built-in backends are registered.

Third-party backends register a factory ``(options: dict, settings: Settings) -> Generator`` under the
entry-point group ``sage_health.generators``; a built-in name cannot be overridden.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from sage_health.core.config import Settings
from sage_health.core.errors import ConfigError
from sage_health.models.generation.base import Generator
from sage_health.models.generation.extractive import ExtractiveGenerator
from sage_health.models.generation.llamacpp import LlamaCppGenerator
from sage_health.models.generation.openai_compat import OpenAICompatibleGenerator
from sage_health.models.generation.transformers_backend import SmolLMGenerator, TransformersGenerator

GeneratorFactory = Callable[[Mapping[str, Any], Settings], Generator]


def _path(options: Mapping[str, Any], key: str) -> Path | None:
    value = options.get(key)
    return Path(value) if value else None


def _smollm2(options: Mapping[str, Any], settings: Settings) -> Generator:
    return SmolLMGenerator(
        cache_dir=settings.models_dir,
        adapter_path=_path(options, "adapter_path"),
        model_id=options.get("model_id"),
        version=str(options.get("version", "q4_1-gguf")),
    )


def _transformers(options: Mapping[str, Any], settings: Settings) -> Generator:
    path = _path(options, "path")
    if path is None:
        raise ConfigError("the transformers backend needs options.path: a folder saved with save_pretrained")
    return TransformersGenerator(
        model_id=str(options.get("model_id", path.name)),
        version=str(options.get("version", "local")),
        path=path,
        adapter_path=_path(options, "adapter_path"),
    )


def _openai(options: Mapping[str, Any], settings: Settings) -> Generator:
    return OpenAICompatibleGenerator(
        base_url=str(options.get("base_url", settings.openai_base_url)),
        model=str(options.get("model", settings.openai_model)),
        api_key=settings.openai_api_key,
        timeout_s=float(options.get("timeout_s", settings.openai_timeout_s)),
        max_retries=int(options.get("max_retries", settings.openai_max_retries)),
    )


def _llamacpp(options: Mapping[str, Any], settings: Settings) -> Generator:
    return LlamaCppGenerator(
        model_path=_path(options, "model_path") or settings.llamacpp_model_path,
        n_ctx=int(options.get("n_ctx", 4096)),
        threads=int(options.get("threads", settings.llamacpp_threads)),
    )


def _extractive(options: Mapping[str, Any], settings: Settings) -> Generator:
    return ExtractiveGenerator(
        lead_sentences=int(options.get("lead_sentences", 1)),
        evidence_sentences=int(options.get("evidence_sentences", 2)),
    )


BUILTIN_GENERATORS: dict[str, GeneratorFactory] = {
    "smollm2": _smollm2,
    "transformers": _transformers,
    "openai": _openai,
    "llamacpp": _llamacpp,
    "extractive": _extractive,
}


def available_backends() -> dict[str, GeneratorFactory]:
    found = dict(BUILTIN_GENERATORS)
    for ep in entry_points(group="sage_health.generators"):
        if ep.name in found:
            continue
        found[ep.name] = ep.load()
    return found


def build_generator(backend: str, settings: Settings, options: Mapping[str, Any] | None = None) -> Generator:
    """The generator for ``backend`` configured by ``options`` (backend-specific keys) and ``settings``."""
    backends = available_backends()
    if backend not in backends:
        raise ConfigError(f"unknown generator backend {backend!r}: choose one of {', '.join(sorted(backends))}")
    return backends[backend](options or {}, settings)
