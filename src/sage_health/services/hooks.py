"""The one place where each layer's erasure and lineage hooks are registered (see
:mod:`sage_health.data.governance.hooks`). Built explicitly per call from the settings: nothing registers itself
as a side effect of an import.

The governance layer's own shares are built in and not listed here: the document store's records, chunks,
vectors and ingest ledger (erased last, in one transaction, through the governed store's backend; its lineage:
files → records → chunks, citations) and the explicit lineage edges and taint marks."""

from __future__ import annotations

from sage_health.agents.trace import TraceErasureHook, TraceLineageHook, TraceStore
from sage_health.apps.coevolve.erasure import CoevolveErasureHook
from sage_health.core.config import Settings
from sage_health.data.datasets_registry import SnapshotErasureHook
from sage_health.data.feedback import FeedbackErasureHook, FeedbackLineageHook
from sage_health.data.governance.hooks import ErasureHook, ErasureScope, LineageHook
from sage_health.models.registry_hooks import RegistryErasureHook, RegistryLineageHook


def erasure_hooks(settings: Settings) -> list[ErasureHook]:
    """Every layer's share of an erasure, in the order they run (derived artifacts first, sources last)."""
    hooks: list[ErasureHook] = []
    hooks.append(RegistryErasureHook(settings.db_path))  # model versions: taint (transitively) and demotion
    hooks.append(CoevolveErasureHook(settings))  # co-evolution training copies (derived from snapshots)
    hooks.append(SnapshotErasureHook(settings))  # dataset snapshots' item files (tainted snapshots)
    traces = TraceStore(settings.db_path)

    def runs_of(scope: ErasureScope) -> list[str]:
        return traces.run_ids_of(scope.patient_id, scope.record_ids)

    hooks.append(FeedbackErasureHook(settings.db_path, runs_of))  # reviews of the patient's runs (before the runs)
    hooks.append(TraceErasureHook(settings.db_path))  # agent runs and steps about or citing the patient
    return hooks


def lineage_hooks(settings: Settings) -> list[LineageHook]:
    """Every layer's edges of the lineage graph."""
    hooks: list[LineageHook] = []
    hooks.append(RegistryLineageHook(settings.db_path))  # model -> snapshot / parent adapter, snapshot -> models
    hooks.append(TraceLineageHook(settings.db_path))  # record -> agent runs citing it, run -> evidence
    hooks.append(FeedbackLineageHook(settings.db_path))  # run -> signed record, signed record -> run
    return hooks
