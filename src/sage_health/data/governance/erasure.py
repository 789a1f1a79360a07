"""Erasure of one patient (``sage-health erase --patient ID --reason TEXT``; data stewards only).

Governance owns the *order*; every layer erases its own copies through the
:class:`~sage_health.data.governance.hooks.ErasureHook` it registers in :mod:`sage_health.services.hooks` (agent
runs and steps, feedback events, dataset snapshot files, co-evolution work files, the model registry), and the
document store erases the records through :class:`~sage_health.data.store.protocol.ErasureTarget`. No SQL here
touches another layer's tables.

1. policy check (``erase``); the erasure is written to the journal (table ``erasures``: patient, record ids,
   reason sha256) and an audit event ``erase`` with outcome ``started`` (the reason is kept as its sha256 only: a
   free-text reason could itself carry PHI);
2. every dataset snapshot and model version reachable from one of the patient's records by explicit lineage edges
   is marked **tainted** (idempotent): tainted models cannot be promoted, tainted snapshots cannot be exported;
3. every registered hook runs, in order, with the :class:`~sage_health.data.governance.hooks.ErasureScope`; each
   is idempotent and reports counts and the sha256 of the paths of the files it removed;
4. one transaction removes every version of the patient's records with their chunks, keyword rows and vectors,
   and forgets the paths of their source files that hold no other patient (a file name can be the patient's):
   their ingest-ledger rows go, and records left from them (organisations, practitioners) name them by hash;
5. the consistency check runs (no orphan chunks, vectors or FTS rows; nothing of the patient left), the journal
   entry is closed and a final audit event records the counts and hashes (outcome ``ok``).

A crash (or a failing hook) between 1 and 5 leaves the journal entry open; running the same erasure again resumes
it with the record ids recorded at the start — even when the records themselves are already gone — and completes
it. The record ids are cleared from the journal once the erasure is done.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sage_health.core.errors import SageError, StoreError, ValidationError
from sage_health.core.hashing import sha256_text
from sage_health.data.governance.hooks import ErasureHook, ErasureScope, HookReport
from sage_health.data.governance.lineage import LineageStore, record_node
from sage_health.data.governance.policy import Action
from sage_health.data.sqlite_tables import connect, immediate
from sage_health.data.store.protocol import ErasureTarget

if TYPE_CHECKING:
    from sage_health.data.governance.access import GovernedStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS erasures (
    id INTEGER PRIMARY KEY,
    patient_id TEXT NOT NULL,
    reason_sha256 TEXT NOT NULL,
    record_ids_json TEXT NOT NULL,
    records INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done')),
    started_at TEXT NOT NULL,
    started_by TEXT NOT NULL,
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS erasures_patient ON erasures(patient_id, status);
"""

TAINTED_KINDS = ("snapshot", "model")
"""Lineage node kinds an erasure taints (the artifacts built from the records)."""
MAX_AUDITED_FILES = 200


@dataclass(frozen=True)
class ErasureResult:
    patient_id: str
    records: int
    """Record ids erased (each with all its versions)."""
    runs: int
    """Agent runs of the patient removed (with their steps), as the trace hook reported."""
    tainted: tuple[str, ...]
    """Lineage nodes (snapshots, model versions) marked tainted by this erasure and its hooks."""
    consistent: bool
    problems: tuple[str, ...]
    removed: dict[str, int]
    """Everything removed, by kind: ``records``, ``ingest_files`` and what each hook reported (``agent_runs``,
    ``feedback_events``, ``snapshot_files``, …)."""
    files_sha256: tuple[str, ...]
    """sha256 of the path of every file (or ledger row of a file) removed or scrubbed; never a path."""
    hooks: tuple[HookReport, ...]
    resumed: bool
    """True when this run completed an erasure that an earlier run started and did not finish."""
    erasure_id: int


@dataclass(frozen=True)
class PendingErasure:
    id: int
    patient_id: str
    record_ids: tuple[str, ...]
    started_at: str


class ErasureJournal:
    """Open and finished erasures (table ``erasures``): what a re-run after a crash needs to finish the job."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        with connect(self.db_path, schema=_SCHEMA, what="the erasure journal") as conn:
            yield conn

    def pending(self, patient_id: str) -> PendingErasure | None:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT * FROM erasures WHERE patient_id = ? AND status = 'running' ORDER BY id DESC LIMIT 1",
                (patient_id,),
            ).fetchone()
        if row is None:
            return None
        return PendingErasure(row["id"], row["patient_id"], tuple(json.loads(row["record_ids_json"])),
                              row["started_at"])  # fmt: skip

    def start(self, patient_id: str, record_ids: Sequence[str], *, reason_sha256: str, by: str) -> int:
        with self._conn() as conn, immediate(conn):
            cur = conn.execute(
                "INSERT INTO erasures(patient_id, reason_sha256, record_ids_json, records, status, started_at, "
                "started_by) VALUES (?, ?, ?, ?, 'running', ?, ?)",
                (patient_id, reason_sha256, json.dumps(list(record_ids)), len(record_ids), _now(), by),
            )
            return int(cur.lastrowid or 0)

    def extend(self, erasure_id: int, record_ids: Sequence[str]) -> None:
        with self._conn() as conn, immediate(conn):
            conn.execute("UPDATE erasures SET record_ids_json = ?, records = ? WHERE id = ?",
                         (json.dumps(list(record_ids)), len(record_ids), erasure_id))  # fmt: skip

    def finish(self, erasure_id: int) -> None:
        """Close the entry and forget its record ids (the counts stay)."""
        with self._conn() as conn, immediate(conn):
            conn.execute("UPDATE erasures SET status = 'done', finished_at = ?, record_ids_json = '[]' WHERE id = ?",
                         (_now(), erasure_id))  # fmt: skip


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def erase(
    governed: GovernedStore,
    target: ErasureTarget,
    patient_id: str,
    *,
    reason: str,
    hooks: Sequence[ErasureHook] = (),
    detail: dict[str, Any] | None = None,
) -> ErasureResult:
    """Erase ``patient_id`` from ``target`` (the governed store's backend) and, through ``hooks``, from every
    other layer, in the order of the module docstring. ``detail`` adds caller fields (token id, channel) to the
    audit events. Raises :class:`PolicyViolation` (audited) for a principal who may not erase,
    :class:`ValidationError` for an empty reason or a patient with no records and no unfinished erasure."""
    governed.decide(Action.ERASE)
    patient_id = patient_id.strip()
    if not patient_id:
        raise ValidationError("erasure needs --patient (the patient's record id)")
    if not reason.strip():
        raise ValidationError("erasure needs a --reason (kept in the audit log as a hash)")
    reason_hash = sha256_text(reason)
    extra = dict(detail or {})
    journal = ErasureJournal(governed.path)
    lineage = LineageStore(governed.path)

    present = target.patient_record_ids(patient_id)
    pending = journal.pending(patient_id)
    if pending is None and not present:
        raise ValidationError(f"no records of patient {patient_id} in the store (nothing to erase)")
    if pending is not None:
        ids = list(dict.fromkeys([*pending.record_ids, *present]))
        erasure_id = pending.id
        if len(ids) > len(pending.record_ids):
            journal.extend(erasure_id, ids)
    else:
        ids = present
        erasure_id = journal.start(patient_id, ids, reason_sha256=reason_hash, by=governed.access.principal.name)
    resumed = pending is not None
    governed.log(Action.ERASE.value, record_ids=[patient_id],
                 detail={**extra, "erasure_id": erasure_id, "reason_sha256": reason_hash, "records": len(ids),
                         "resumed": resumed}, outcome="started")  # fmt: skip

    def failed(step: str, exc: BaseException) -> None:
        governed.log(Action.ERASE.value, record_ids=[patient_id],
                     detail={**extra, "erasure_id": erasure_id, "reason_sha256": reason_hash, "step": step,
                             "error": type(exc).__name__}, outcome="failed")  # fmt: skip

    before = {t.node for t in lineage.taints()}
    reached = lineage.descendants([record_node(i) for i in ids])
    direct = sorted(n for n in reached if n.partition(":")[0] in TAINTED_KINDS)
    if direct:
        lineage.taint(direct, f"built from records of an erased patient (erasure reason sha256 {reason_hash[:12]})",
                      erasure_event=erasure_id)  # fmt: skip
    scope = ErasureScope(patient_id=patient_id, record_ids=tuple(ids), tainted=tuple(direct),
                         reason_sha256=reason_hash)  # fmt: skip

    reports: list[HookReport] = []
    for hook in hooks:
        try:
            reports.append(hook.erase(scope))
        except SageError as exc:
            failed(f"hook:{hook.name}", exc)
            raise
        except Exception as exc:
            failed(f"hook:{hook.name}", exc)
            raise StoreError(
                f"erasure of {patient_id} stopped in the {hook.name} step ({type(exc).__name__}); the records are "
                "not deleted yet: run the same erase again to finish it"
            ) from exc
    try:
        erased = target.erase_records(ids)
    except StoreError as exc:
        failed("records", exc)
        raise

    health = target.check()
    problems = [str(p) for p in health.get("problems", [])]
    left = target.patient_record_ids(patient_id)
    if left:
        problems.append(f"{len(left)} records of the patient are still in the store")
    consistent = bool(health.get("ok")) and not left

    removed: dict[str, int] = {"records": erased.records, "ingest_files": erased.files,
                               "provenance_paths_scrubbed": erased.provenance_scrubbed}  # fmt: skip
    files = list(erased.files_sha256)
    for report in reports:
        for kind, count in report.removed.items():
            removed[kind] = removed.get(kind, 0) + int(count)
        files += report.files_sha256
    after = {t.node for t in lineage.taints()}
    tainted = tuple(sorted({*direct, *(after - before)}))
    if consistent:
        journal.finish(erasure_id)
    result = ErasureResult(
        patient_id=patient_id,
        records=len(ids),
        runs=removed.get("agent_runs", 0),
        tainted=tainted,
        consistent=consistent,
        problems=tuple(problems),
        removed=removed,
        files_sha256=tuple(dict.fromkeys(files)),
        hooks=tuple(reports),
        resumed=resumed,
        erasure_id=erasure_id,
    )
    governed.log(
        Action.ERASE.value,
        record_ids=[patient_id],
        detail={**extra, "erasure_id": erasure_id, "reason_sha256": reason_hash, "records": len(ids),
                "runs": result.runs, "removed": removed, "files_sha256": list(result.files_sha256[:MAX_AUDITED_FILES]),
                "files": len(result.files_sha256), "hooks": [r.hook for r in reports], "tainted": list(tainted),
                "consistent": consistent, "resumed": resumed},
        outcome="ok" if consistent else "inconsistent",
    )  # fmt: skip
    return result
