"""Model registry use cases: list, show, register, promote, rollback, archive.

Who may do what (the policy engine decides, the audit log records model refs only):

- listing and showing versions: any authenticated principal acting for a purpose its role may act for (model
  metadata is not patient data); audited;
- ``register``: action ``train``; ``promote``, ``rollback`` and ``archive``: action ``promote`` (admins);
- ``by`` (``--by`` on the CLI) names who acts and must be the authenticated principal, never someone else;
- the registry's gates hold for every caller: promotion needs an evaluation on production's evaluation sets, and a
  tainted version (trained on data erased since, or continued from a tainted adapter) is never promoted or
  rolled back to. A refused stage change is audited with outcome ``refused``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sage_health.core.errors import PolicyViolation, RegistryError
from sage_health.data.governance.policy import Action, allowed_purposes
from sage_health.models.catalog import BUILTIN_MODELS, resolve_model
from sage_health.models.registry import ModelEvent, ModelRegistry, ModelVersion, parse_ref
from sage_health.services.session import Session

BUILTINS_LISTED = ("smollm2", "extractive")
"""Built-in base models registered (no weights loaded) whenever the registry is listed."""

T = TypeVar("T")


@dataclass(frozen=True)
class ModelEntry:
    """One registered version and whether it is tainted (why, or ``None``)."""

    version: ModelVersion
    taint: str | None = None

    @property
    def ref(self) -> str:
        return self.version.ref

    def as_dict(self) -> dict[str, Any]:
        return self.version.model_dump(mode="json") | {"ref": self.version.ref, "tainted": self.taint}


@dataclass(frozen=True)
class ModelDetail:
    """One version with the event log of its model name."""

    entry: ModelEntry
    events: tuple[ModelEvent, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return self.entry.as_dict() | {"events": [e.model_dump() for e in self.events]}


def _entry(registry: ModelRegistry, mv: ModelVersion) -> ModelEntry:
    return ModelEntry(version=mv, taint=registry.taint(mv))


def _actor(session: Session, by: str | None, action: Action) -> str:
    """The acting principal, allowed ``action`` by the policy engine (a denial is audited)."""
    session.decide(action)
    if by and by != session.principal:
        raise PolicyViolation(
            f"--by {by!r} differs from the acting principal {session.principal!r}; act as {by!r} with --as"
        )
    return session.principal


def _reader(session: Session, op: str) -> None:
    """Any principal may read the registry, but only for a purpose its role may act for (a denial is audited)."""
    allowed = allowed_purposes(session.role)
    if session.purpose not in allowed:
        reason = (
            f"{session.principal} ({session.role}) may not act for {session.purpose}; "
            f"purposes of the role: {', '.join(allowed) or 'none'}"
        )
        session.audit("models", detail={"op": op, "denied": reason}, outcome="denied")
        raise PolicyViolation(reason)


def _stage_change(session: Session, action: Action, ref: str, op: str, change: Callable[[], T]) -> T:
    """Run a registry stage change; a refusal by the registry's gates is audited, then raised."""
    try:
        return change()
    except RegistryError as exc:
        session.audit(action.value, detail={"model": ref, "op": op, "refused": str(exc)}, outcome="refused")
        raise


# ---------------------------------------------------------------------------------------------- reads


def list_models(session: Session, name: str | None = None) -> list[ModelEntry]:
    """Every registered version (of ``name`` when given), each with its taint; the built-in base models are
    registered on first use."""
    _reader(session, "list")
    registry = session.registry
    for builtin in BUILTINS_LISTED:
        resolve_model(registry, builtin)
    entries = [_entry(registry, mv) for mv in registry.list_versions(name)]
    session.audit("models", detail={"op": "list", "name": name, "versions": len(entries)})
    return entries


def show_model(session: Session, ref: str) -> ModelDetail:
    """``NAME`` (its production version, else its newest) or ``NAME@VERSION``, with the model's events."""
    _reader(session, "show")
    registry = session.registry
    mv = resolve_model(registry, ref)
    session.audit("models", detail={"op": "show", "model": mv.ref})
    return ModelDetail(entry=_entry(registry, mv), events=tuple(registry.events(mv.name)))


# ---------------------------------------------------------------------------------------------- writes


def register_model(
    session: Session,
    name: str,
    *,
    backend: str,
    version: str | None = None,
    adapter: Path | None = None,
    snapshot: str | None = None,
    exemplars: int = 0,
    description: str | None = None,
    by: str | None = None,
) -> ModelEntry:
    """Register a new ``candidate`` version (policy: ``train``)."""
    actor = _actor(session, by, Action.TRAIN)
    registry = session.registry
    base = BUILTIN_MODELS.get(backend)
    mv = registry.register(
        name,
        backend=backend,
        version=version,
        base_model=base.base_model if base else None,
        adapter_path=adapter,
        dataset_snapshot_id=snapshot,
        config={"exemplars": exemplars},
        description=description,
        actor=actor,
    )
    session.audit(
        Action.TRAIN.value,
        detail={"model": mv.ref, "registered": True, "snapshot": snapshot, "adapter_sha256": mv.adapter_sha256},
    )
    return _entry(registry, mv)


def promote_model(session: Session, ref: str, *, by: str | None = None, reason: str | None = None) -> ModelEntry:
    """Put ``NAME@VERSION`` in production (policy: ``promote``); the registry's gates apply."""
    actor = _actor(session, by, Action.PROMOTE)
    registry = session.registry
    mv = resolve_model(registry, ref)
    promoted = _stage_change(
        session,
        Action.PROMOTE,
        mv.ref,
        "promote",
        lambda: registry.promote(mv.name, mv.version, actor=actor, reason=reason),
    )
    session.audit(Action.PROMOTE.value, detail={"model": promoted.ref, "stage": "production"})
    return _entry(registry, promoted)


def rollback_model(session: Session, name: str, *, by: str | None = None, reason: str | None = None) -> ModelEntry:
    """Restore the previous production version of ``name`` (the current one is archived); refused when that
    version is tainted. Policy: ``promote``."""
    actor = _actor(session, by, Action.PROMOTE)
    registry = session.registry
    restored = _stage_change(
        session, Action.PROMOTE, name, "rollback", lambda: registry.rollback(name, actor=actor, reason=reason)
    )
    session.audit(Action.PROMOTE.value, detail={"model": restored.ref, "rollback": True})
    return _entry(registry, restored)


def archive_model(session: Session, ref: str, *, by: str | None = None, reason: str | None = None) -> ModelEntry:
    """Archive ``NAME@VERSION`` (a candidate; production must be replaced or rolled back first). Policy:
    ``promote``."""
    actor = _actor(session, by, Action.PROMOTE)
    registry = session.registry
    name, version = parse_ref(ref)
    if version is None:
        raise RegistryError(f"archive needs NAME@VERSION, not {ref!r}: see `sage-health models list {name}`")
    archived = _stage_change(
        session, Action.PROMOTE, ref, "archive", lambda: registry.archive(name, version, actor=actor, reason=reason)
    )
    session.audit(Action.PROMOTE.value, detail={"model": archived.ref, "stage": "archived"})
    return _entry(registry, archived)
