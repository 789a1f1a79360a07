"""Lineage: source file → records → chunks/vectors → snapshots → model versions → generated reports and agent runs,
and back (policy action ``lineage``: data stewards, researchers, administrators).

The walk goes through the governed store (:meth:`GovernedStore.lineage`) with every layer's registered lineage hooks
(:mod:`sage_health.services.hooks`). Principals with the de-identified view (researchers, administrators) get
pseudonymous patient ids and file nodes named by the sha256 of their path (``file:<12 hex digits>``), never a path
(Synthea names its files after the patient); a real patient id is not found for them, and records of patients who
opted out of research are withheld from research use. The audit event holds ids and hashes only.
"""

from __future__ import annotations

from typing import Any

from sage_health.core.errors import ValidationError
from sage_health.data.governance.lineage import LineageNode, LineageResult
from sage_health.services.hooks import lineage_hooks
from sage_health.services.session import Session

__all__ = ["LineageNode", "LineageResult", "lineage"]


def lineage(session: Session, node: str, *, up: bool = False, depth: int = 4) -> LineageResult:
    """The lineage tree of ``node`` (a record id or pseudonym, ``file:PATH`` or ``file:<path hash>``,
    ``snapshot:NAME@HASH``, ``model:NAME@VERSION``, ``run:ID``) ``depth`` steps up (towards sources) or down."""
    if not 0 <= depth <= 10:
        raise ValidationError(f"--depth must be between 0 and 10, got {depth}")
    detail: dict[str, Any] = {"channel": session.channel}
    if session.token_id is not None:
        detail["token_id"] = session.token_id
    return session.governed().lineage(node, up=up, depth=depth, hooks=lineage_hooks(session.settings), detail=detail)
