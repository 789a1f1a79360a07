"""The ``Agent`` extension point and the context every agent runs in.

An agent is a small class with a ``name``, typed ``input_model`` / ``output_model`` (frozen pydantic models,
see :mod:`sage_health.agents.types`) and ``run(payload, ctx)``. Agents keep no state between calls: what they
need (store, model registry, generators, labeler) comes from the :class:`AgentContext`, and what they produce
is returned, so the runner can persist every step's input and output and replay a run after a crash.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel

from sage_health.core.config import Settings
from sage_health.data.governance.access import GovernedStore
from sage_health.models.catalog import GeneratorPool
from sage_health.models.evaluation.labeler import CheXpertLabeler
from sage_health.models.registry import ModelRegistry

In = TypeVar("In", bound=BaseModel, contravariant=True)
Out = TypeVar("Out", bound=BaseModel, covariant=True)


@runtime_checkable
class Agent(Protocol[In, Out]):
    """Contract: ``run`` reads only ``payload`` and ``ctx``, returns an ``output_model`` instance, and raises a
    :class:`~sage_health.core.errors.SageError` subclass (never a bare exception) when it cannot do its job.
    Anything it relied on that can be cited (record ids, model refs) is inside its output."""

    name: ClassVar[str]

    def run(self, payload: In, ctx: AgentContext) -> Out: ...


@dataclass
class AgentContext:
    """Shared, lazily built resources of one process. Cheap to construct."""

    settings: Settings
    store: GovernedStore
    """The governed store of the acting principal: every read, search and write is policy-checked and audited."""
    registry: ModelRegistry
    pool: GeneratorPool
    _labeler: CheXpertLabeler | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    extras: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def create(cls, settings: Settings, store: GovernedStore) -> AgentContext:
        registry = ModelRegistry(settings.db_path)
        return cls(settings=settings, store=store, registry=registry, pool=GeneratorPool(settings, registry))

    @property
    def labeler(self) -> CheXpertLabeler:
        with self._lock:
            if self._labeler is None:
                self._labeler = CheXpertLabeler.from_data_dir(self.settings.data_dir)
            return self._labeler
