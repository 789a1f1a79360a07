"""Erasure of one patient (policy action ``erase``: data stewards only).

The governed store runs the erasure in its fixed order (:mod:`sage_health.data.governance.erasure`): journal and
audit ``started`` → taint the snapshots and models built from the patient's records → every layer's registered
erasure hook (:mod:`sage_health.services.hooks`: model registry, co-evolution copies, dataset snapshot files,
feedback, agent traces) → the records, chunks, vectors and ledger rows in one transaction → consistency check →
audit ``ok``. A crash or a failing hook leaves the erasure open; running it again completes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sage_health.data.governance.erasure import ErasureResult
from sage_health.data.governance.hooks import ErasureHook
from sage_health.data.governance.policy import Action
from sage_health.services.hooks import erasure_hooks
from sage_health.services.session import Session

__all__ = ["ErasureResult", "erase", "result_json"]


def result_json(result: ErasureResult) -> dict[str, Any]:
    return {"patient_id": result.patient_id, "records": result.records, "runs": result.runs,
            "tainted": list(result.tainted), "consistent": result.consistent, "problems": list(result.problems),
            "removed": result.removed, "files_sha256": list(result.files_sha256),
            "hooks": [{"hook": r.hook, "removed": r.removed, "files": len(r.files_sha256), "notes": list(r.notes)}
                      for r in result.hooks],
            "resumed": result.resumed, "erasure_id": result.erasure_id}  # fmt: skip


def erase(session: Session, patient: str, *, reason: str, hooks: Sequence[ErasureHook] | None = None) -> ErasureResult:
    """Erase every record of ``patient`` and every layer's copies of them; ``hooks`` default to the registered
    ones (a caller passes its own only to test the order and the resumption)."""
    session.decide(Action.ERASE)
    detail: dict[str, Any] = {"channel": session.channel}
    if session.token_id is not None:
        detail["token_id"] = session.token_id
    chosen = erasure_hooks(session.settings) if hooks is None else list(hooks)
    return session.governed().erase_patient(patient, reason=reason, hooks=chosen, detail=detail)
