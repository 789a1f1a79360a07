"""Dataset snapshots: create, list, show, export (policy actions ``snapshot`` and ``export``).

The rules live with the snapshots (:mod:`sage_health.data.datasets`): reads go through the governed store acting
as ``snapshot`` (research opt-outs excluded in the query, every read audited), principals with the de-identified
view must ask for ``deid`` explicitly, snapshots are content-addressed and immutable, tainted snapshots (built from
records erased since) are listed but not exported, and exports are refused when a patient opted out since.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sage_health.data.datasets import (
    ExportResult,
    SnapshotInfo,
    create_snapshot,
    export_snapshot,
    get_snapshot,
    list_snapshots,
    parse_selector,
)
from sage_health.data.governance.policy import Action
from sage_health.services.session import Session

__all__ = ["ExportResult", "SnapshotDetail", "SnapshotInfo", "create", "default_task", "export", "list_all", "show"]


def default_task(resource_type: str | None) -> str:
    """The task a selector of this record type gets when none is named."""
    if resource_type == "DiagnosticReport":
        return "impression"
    return "qa" if resource_type == "QAItem" else "text"


def create(
    session: Session,
    name: str,
    selector: str,
    *,
    task: str | None = None,
    split: str = "80/10/10",
    seed: int = 13,
    deid: bool = False,
    limit: int | None = None,
) -> SnapshotInfo:
    """Create (or find, when identical) the immutable snapshot ``name@hash``."""
    parsed = parse_selector(selector)
    return create_snapshot(session.governed(), session.settings, name, parsed,
                           task=task or default_task(parsed.resource_type), split=split, seed=seed, deid=deid,
                           limit=limit)  # fmt: skip


def list_all(session: Session) -> tuple[SnapshotInfo, ...]:
    """Every snapshot version, newest first, with its counts and taint."""
    session.decide(Action.SNAPSHOT)
    found = tuple(list_snapshots(session.settings))
    session.audit(Action.SNAPSHOT.value, detail={"op": "list", "listed": len(found)})
    return found


@dataclass(frozen=True)
class SnapshotDetail:
    info: SnapshotInfo
    manifest: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"snapshot": self.info.as_dict(), "manifest": self.manifest, "datasheet": str(self.info.datasheet_path)}


def show(session: Session, ref: str) -> SnapshotDetail:
    """A snapshot's manifest (parameters, counts, consent filter, de-identification, licences)."""
    session.decide(Action.SNAPSHOT)
    info = get_snapshot(session.settings, ref)
    detail = SnapshotDetail(info=info, manifest=info.manifest())
    session.audit(Action.SNAPSHOT.value, detail={"op": "show", "shown": info.ref})
    return detail


def export(session: Session, ref: str, out_dir: Path, *, fmt: str = "jsonl") -> ExportResult:
    """Copy a snapshot to ``out_dir/<name>-<hash>/`` (refused when tainted, identified for a de-identified-view
    principal, or holding records of patients who opted out since)."""
    return export_snapshot(session.governed(), session.settings, ref, out_dir, fmt=fmt)
