"""Erasure of one patient (``sage-health erase --patient ID --reason TEXT``; data stewards only).

Order of work, chosen so a crash at any point leaves the store consistent and a re-run finishes the job:

1. policy check (``erase``) and an audit event ``erase`` with outcome ``started`` (the reason is kept as its sha256:
   a free-text reason could itself carry PHI);
2. every dataset snapshot and model version whose lineage includes one of the patient's records is marked
   **tainted** (idempotent): tainted models cannot be promoted until retrained, tainted snapshots cannot be
   exported;
3. one transaction removes every version of the patient's records with their chunks, FTS rows and vectors, and
   the patient's rows in the side tables (agent runs and their steps, feedback events of those runs);
4. the store's consistency check runs (no orphan chunks, vectors or FTS rows) and a final audit event records the
   counts.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from sage_health.core.errors import StoreError, ValidationError
from sage_health.core.hashing import sha256_text
from sage_health.data.governance.access import GovernedStore
from sage_health.data.governance.lineage import LineageStore, record_node
from sage_health.data.governance.policy import Action


@dataclass(frozen=True)
class ErasureResult:
    patient_id: str
    records: int
    """Record ids removed (each with all its versions)."""
    runs: int
    """Agent runs of the patient removed (with their steps and feedback events)."""
    tainted: tuple[str, ...]
    """Lineage nodes (snapshots, model versions) marked tainted."""
    consistent: bool
    problems: tuple[str, ...]


def _table_exists(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def erase_patient(governed: GovernedStore, patient_id: str, *, reason: str) -> ErasureResult:
    governed.decide(Action.ERASE)
    if not reason.strip():
        raise ValidationError("erasure needs a --reason (kept in the audit log as a hash)")
    store = governed._store
    conn = store.connection
    rows = conn.execute(
        "SELECT DISTINCT id FROM records WHERE patient_id = ? OR id = ?", (patient_id, patient_id)
    ).fetchall()
    ids = [r[0] for r in rows]
    if not ids:
        raise ValidationError(f"no records of patient {patient_id} in the store (nothing to erase)")
    reason_hash = sha256_text(reason)
    governed.log(Action.ERASE.value, record_ids=[patient_id], detail={"reason_sha256": reason_hash,
                 "records": len(ids)}, outcome="started")  # fmt: skip

    lineage = LineageStore(store.path)
    nodes = lineage.descendants([record_node(i) for i in ids])
    snapshots = sorted(n for n in nodes if n.startswith("snapshot:"))
    models = {n for n in nodes if n.startswith("model:")}
    if snapshots and _table_exists(conn, "model_versions"):
        refs = [s.removeprefix("snapshot:") for s in snapshots]
        marks = ",".join("?" * len(refs))
        for name, version in conn.execute(
            f"SELECT name, version FROM model_versions WHERE dataset_snapshot_id IN ({marks})", refs
        ).fetchall():
            models.add(f"model:{name}@{version}")
    tainted = tuple(snapshots + sorted(models))
    if tainted:
        lineage.taint(tainted, f"built from records of an erased patient (erasure reason sha256 {reason_hash[:12]})")

    also: list[tuple[str, list[str]]] = []
    runs = 0
    if _table_exists(conn, "agent_runs"):
        marks = ",".join("?" * len(ids))
        run_ids = [r[0] for r in conn.execute(
            f"SELECT run_id FROM agent_runs WHERE patient_id = ? OR study_id IN ({marks})", (patient_id, *ids)
        ).fetchall()]  # fmt: skip
        runs = len(run_ids)
        if run_ids:
            rmarks = ",".join("?" * len(run_ids))
            also.append((f"DELETE FROM agent_steps WHERE run_id IN ({rmarks})", run_ids))
            if _table_exists(conn, "feedback_events"):
                also.append((f"DELETE FROM feedback_events WHERE run_id IN ({rmarks})", run_ids))
            also.append((f"DELETE FROM agent_runs WHERE run_id IN ({rmarks})", run_ids))
    if _table_exists(conn, "feedback_events"):
        marks = ",".join("?" * len(ids))
        also.append((f"DELETE FROM feedback_events WHERE record_id IN ({marks})", ids))
    try:
        removed = store.delete(ids, also=also)
    except StoreError:
        governed.log(Action.ERASE.value, record_ids=[patient_id], detail={"reason_sha256": reason_hash},
                     outcome="failed")  # fmt: skip
        raise
    health = store.check()
    result = ErasureResult(
        patient_id=patient_id,
        records=removed,
        runs=runs,
        tainted=tainted,
        consistent=bool(health["ok"]),
        problems=tuple(health["problems"]),
    )
    governed.log(
        Action.ERASE.value,
        record_ids=[patient_id],
        detail={"reason_sha256": reason_hash, "records": removed, "runs": runs, "tainted": list(tainted),
                "consistent": result.consistent},
    )  # fmt: skip
    return result
