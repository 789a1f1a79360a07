"""The model registry's share of erasure and lineage (:mod:`sage_health.data.governance.hooks`).

- :class:`RegistryErasureHook`: after an erasure has marked the snapshots (and image models) built from the
  patient's records, every model version trained on a tainted snapshot, or continued from a tainted adapter, is
  marked tainted too — transitively, so an adapter of an adapter of a tainted model is caught — and every tainted
  *production* version is demoted (the newest earlier untainted production version is restored, else the model has
  no production version), so it stops serving at once.
- :class:`RegistryLineageHook`: the edges the registry's own tables hold — ``model:NAME@VER`` up to its training
  snapshot and the adapter it was continued from, and down to the adapters continued from it; ``snapshot:…`` down
  to the versions trained on it.

Both are registered in :mod:`sage_health.services.hooks`. Reports hold counts and model refs only (no patient data).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sage_health.data.governance.hooks import ErasureScope, HookReport
from sage_health.data.governance.lineage import LineageStore, model_node
from sage_health.models.registry import ModelRegistry, ModelVersion, parse_ref

ERASURE_ACTOR = "erasure"
IMAGE_RECORDS_PREFIX = "image-records:"
"""``dataset_snapshot_id`` of image models: a digest of their training images, not a dataset snapshot (their
lineage is explicit ``record:`` edges)."""


def _snapshot_node(mv: ModelVersion) -> str | None:
    snap = mv.dataset_snapshot_id
    if not snap or snap.startswith(IMAGE_RECORDS_PREFIX):
        return None
    return f"snapshot:{snap}"


def _parent_node(mv: ModelVersion) -> str | None:
    ref = mv.config.get("parent")
    if not isinstance(ref, str) or not ref:
        return None
    name, version = parse_ref(ref)
    return model_node(name, version) if version else None


@dataclass
class RegistryErasureHook:
    """Taint model versions built on tainted data (transitively) and demote tainted production versions."""

    db_path: Path
    name: str = "model-registry"

    def erase(self, scope: ErasureScope) -> HookReport:
        if not self.db_path.is_file():
            return HookReport(hook=self.name)
        registry = ModelRegistry(self.db_path)
        lineage = LineageStore(self.db_path)
        why = f"built from records of an erased patient (erasure reason sha256 {scope.reason_sha256[:12]})"
        tainted = set(scope.tainted) | {t.node for t in lineage.taints()}
        versions = registry.list_versions()
        marks: dict[str, str] = {}
        for mv in versions:  # marked by the erasure's walk (image models by their record edges): make it stick
            node = model_node(mv.name, mv.version)
            if node in scope.tainted and lineage.taint_of(node) is None:
                marks[node] = why
        changed = True
        while changed:  # to a fixed point: adapters continued from adapters
            changed = False
            for mv in versions:
                node = model_node(mv.name, mv.version)
                if node in tainted:
                    continue
                snap, parent = _snapshot_node(mv), _parent_node(mv)
                if snap is not None and snap in tainted:
                    marks[node] = f"trained on {snap}, {why}"
                elif parent is not None and parent in tainted:
                    marks[node] = f"continued from {parent}, which is tainted; {why}"
                else:
                    continue
                tainted.add(node)
                changed = True
        for node, reason in sorted(marks.items()):
            lineage.taint([node], reason)
        demotions = []
        for name in sorted({mv.name for mv in versions}):
            demoted = registry.demote_tainted(name, actor=ERASURE_ACTOR, reason=why)
            if demoted is not None:
                demotions.append(demoted)
        notes = tuple(
            f"demoted {d.demoted}; " + (f"{d.restored} is production again" if d.restored else "no production left")
            for d in demotions
        )
        return HookReport(
            hook=self.name,
            removed={"model_versions_tainted": len(marks), "production_demoted": len(demotions)},
            notes=notes,
        )


@dataclass
class RegistryLineageHook:
    """Lineage edges held by the model registry's tables."""

    db_path: Path
    name: str = "model-registry"

    def neighbours(self, node: str, *, up: bool) -> list[tuple[str, str, str]]:
        kind, _, ident = node.partition(":")
        if kind not in ("model", "snapshot") or not self.db_path.is_file():
            return []
        registry = ModelRegistry(self.db_path)
        if kind == "snapshot":
            if up:
                return []
            return [(model_node(m.name, m.version), "trained", m.stage) for m in registry.trained_on(ident)]
        name, version = parse_ref(ident)
        mv = registry.find(name, version) if version else None
        if mv is None:
            return []
        if up:
            out: list[tuple[str, str, str]] = []
            snap = _snapshot_node(mv)
            if snap is not None:
                out.append((snap, "trained on", ""))
            parent = _parent_node(mv)
            if parent is not None:
                out.append((parent, "continued from", ""))
            return out
        return [(model_node(c.name, c.version), "continued as", c.stage) for c in registry.continued_from(mv.ref)]
