"""Extension points through which other layers' tables and files join erasure and lineage.

Governance owns the *order* of an erasure and the lineage *walk*; it never writes SQL against another layer's
tables or deletes another layer's files. Each layer that keeps patient-derived data (the document store, agent
traces and feedback, the model registry, dataset snapshots, co-evolution work files) implements these protocols
next to its own tables, and the service layer registers them in one explicit place
(:mod:`sage_health.services.hooks`).

Erasure runs the hooks after the taint marks and before the records themselves are deleted. Every hook must be
**idempotent**: a crash between two hooks leaves the ``erase … started`` audit event without its ``done`` event,
and running the same erasure again completes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ErasureScope:
    """What one erasure removes."""

    patient_id: str
    record_ids: tuple[str, ...]
    """Every record id of the patient (all versions go with each id)."""
    tainted: tuple[str, ...]
    """Lineage nodes (``snapshot:…``, ``model:…``) marked tainted by this erasure (and earlier ones)."""
    reason_sha256: str


@dataclass(frozen=True)
class HookReport:
    """What one hook removed or changed. Counts and hashes only: never paths or record content."""

    hook: str
    removed: dict[str, int] = field(default_factory=dict)
    """e.g. ``{"agent_runs": 2, "snapshot_files": 1}``."""
    files_sha256: tuple[str, ...] = ()
    """sha256 of the path of each file deleted or scrubbed (so the audit log can name them without PHI)."""
    notes: tuple[str, ...] = ()


class ErasureHook(Protocol):
    """A layer's share of erasing one patient."""

    name: str

    def erase(self, scope: ErasureScope) -> HookReport:
        """Remove or scrub this layer's copies of the patient's data; idempotent."""
        ...


class LineageHook(Protocol):
    """A layer's edges of the lineage graph, for the node kinds it owns."""

    name: str

    def neighbours(self, node: str, *, up: bool) -> list[tuple[str, str, str]]:
        """``(node, relation, detail)`` one step up (towards sources) or down (towards derived artifacts) from
        ``node``; ``[]`` for nodes of kinds this hook does not own."""
        ...
