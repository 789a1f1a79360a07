"""The audit log: verify its hash chain, and read its events as the reader's view names them.

Both are ``audit`` use cases (data stewards, administrators). Stewards (identified view) see the events as written;
administrators (de-identified view) see every patient id as its pseudonym (``pseudo-…``) and name a patient by
pseudonym in ``--patient``. The events hold ids and hashes only — never record content, query text or file paths —
and each read or verification is itself an event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sage_health.data.governance.audit import AuditEvent, AuditTrail, Verification
from sage_health.data.governance.policy import Action
from sage_health.services.session import Session

__all__ = ["AuditEvent", "AuditEvents", "Verification", "events_json", "show", "verification_json", "verify"]


def verification_json(result: Verification) -> dict[str, Any]:
    return {"ok": result.ok, "events": result.events, "first_bad_seq": result.first_bad_seq, "reason": result.reason,
            "note": result.note}  # fmt: skip


def verify(session: Session) -> Verification:
    """Walk the hash chain and the anchor (the result names the first bad position when anything was changed)."""
    session.decide(Action.AUDIT)
    result = session.audit_log.verify()
    session.audit(Action.AUDIT.value, detail={"op": "verify", "ok": result.ok, "events": result.events,
                                              "first_bad_seq": result.first_bad_seq})  # fmt: skip
    return result


@dataclass(frozen=True)
class AuditEvents:
    events: tuple[AuditEvent, ...]
    view: str
    """``identified`` or ``deidentified`` (patient ids shown as pseudonyms)."""

    @classmethod
    def of(cls, trail: AuditTrail) -> AuditEvents:
        return cls(events=trail.events, view=trail.view)


def events_json(events: AuditEvents) -> list[dict[str, Any]]:
    return [e.model_dump(mode="json") for e in events.events]


def show(
    session: Session,
    *,
    record: str | None = None,
    since: str | None = None,
    action: str | None = None,
    patient: str | None = None,
) -> AuditEvents:
    """Events in order, filtered by record id, time (ISO), action and patient (their id and their records')."""
    detail: dict[str, Any] = {"channel": session.channel}
    if session.token_id is not None:
        detail["token_id"] = session.token_id
    trail = session.governed().audit_events(record_id=record, since=since, action=action, patient=patient,
                                            detail=detail)  # fmt: skip
    return AuditEvents.of(trail)
