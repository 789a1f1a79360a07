"""The one place where each layer's erasure and lineage hooks are registered (see
:mod:`sage_health.data.governance.hooks`). Built explicitly per call from the settings: nothing registers itself
as a side effect of an import."""

from __future__ import annotations

from sage_health.core.config import Settings
from sage_health.data.governance.hooks import ErasureHook, LineageHook


def erasure_hooks(settings: Settings) -> list[ErasureHook]:
    """Every layer's share of an erasure, in the order they run (derived artifacts first, sources last)."""
    hooks: list[ErasureHook] = []
    return hooks


def lineage_hooks(settings: Settings) -> list[LineageHook]:
    """Every layer's edges of the lineage graph."""
    hooks: list[LineageHook] = []
    return hooks
