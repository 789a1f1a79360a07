"""Principals, API tokens, the store's authentication switch, and patient consent.

Principals, tokens and the authentication switch are administrators' use cases (policy action ``principals``);
consent is the data stewards' (``consent``). Every function decides through the session (a denial is audited and
raised as :class:`~sage_health.core.errors.PolicyViolation`), audits what it did with ids only — a token by its
public id, never the token; a consent file by the sha256 of its path — and returns typed values.

How identity works (see :mod:`sage_health.data.governance.identity`): a token ``sage_<id>_<secret>`` is shown once
when it is created and only the sha256 of its secret is kept. Issuing the first token of a store (it must be an
administrator's) or ``auth enable`` switches authentication on for good: from then on every command needs
``SAGE_TOKEN`` and ``--as`` alone grants nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sage_health.core.errors import ValidationError
from sage_health.core.hashing import sha256_text
from sage_health.data.governance.identity import IdentityStore, IssuedToken, TokenInfo
from sage_health.data.governance.policy import Action, ConsentDecision, ConsentRecord, Principal, read_consent_file
from sage_health.services.session import Session

__all__ = [
    "AuthStatus",
    "ConsentList",
    "ConsentRecord",
    "add_principal",
    "auth_status",
    "consent_json",
    "create_token",
    "deactivate_principal",
    "enable_auth",
    "import_consents",
    "issued_json",
    "list_consents",
    "list_principals",
    "list_tokens",
    "principal_json",
    "revoke_token",
    "set_consent",
    "token_json",
]


# --------------------------------------------------------------------------- JSON shapes (shared by CLI and API)


def principal_json(p: Principal) -> dict[str, Any]:
    return {"name": p.name, "role": p.role, "active": p.active, "builtin": p.builtin, "created_at": p.created_at,
            "created_by": p.created_by}  # fmt: skip


def token_json(t: TokenInfo) -> dict[str, Any]:
    """A token as listed: id, owner, state and dates; never the secret."""
    return {"id": t.id, "principal": t.principal, "state": t.state, "label": t.label, "created_at": t.created_at,
            "created_by": t.created_by, "expires_at": t.expires_at, "revoked_at": t.revoked_at,
            "last_used_at": t.last_used_at}  # fmt: skip


def issued_json(issued: IssuedToken) -> dict[str, Any]:
    """A newly issued token: the only place the whole token is ever shown."""
    return {**token_json(issued.info), "token": issued.token, "enabled_auth": issued.enabled_auth}


def consent_json(c: ConsentRecord) -> dict[str, Any]:
    return {"id": c.id, "patient_id": c.patient_id, "scope": c.scope, "decision": c.decision,
            "effective_from": c.effective_from, "effective_until": c.effective_until,
            "recorded_by": c.recorded_by, "reason": c.reason, "recorded_at": c.recorded_at}  # fmt: skip


def _identity(session: Session) -> IdentityStore:
    return IdentityStore(session.settings.db_path, session.policy)


# --------------------------------------------------------------------------- principals


def list_principals(session: Session) -> tuple[Principal, ...]:
    """Every principal with its role and state."""
    session.decide(Action.PRINCIPALS)
    found = tuple(session.policy.principals())
    session.audit(Action.PRINCIPALS.value, detail={"op": "list", "listed": len(found)})
    return found


def add_principal(session: Session, name: str, role: str) -> Principal:
    """Add a named principal with one of the roles (it authenticates with a token issued for it)."""
    session.decide(Action.PRINCIPALS)
    added = session.policy.add_principal(name, role, by=session.access)
    session.audit(Action.PRINCIPALS.value, detail={"op": "add", "added": added.name, "role": added.role})
    return added


def deactivate_principal(session: Session, name: str) -> Principal:
    """Deactivate a principal: it can no longer act, and its tokens stop working with it."""
    session.decide(Action.PRINCIPALS)
    principal = session.policy.set_active(name, False, by=session.access)
    session.audit(Action.PRINCIPALS.value, detail={"op": "deactivate", "deactivated": principal.name})
    return principal


# --------------------------------------------------------------------------- tokens


def create_token(
    session: Session, principal: str, *, expires_days: int | None = None, label: str | None = None
) -> IssuedToken:
    """Issue a token for ``principal`` (shown once; only its hash is stored). The first token of a store must be
    an administrator's, and issuing it switches authentication on."""
    session.decide(Action.PRINCIPALS)
    issued = _identity(session).create(principal, by=session.access, expires_days=expires_days, label=label)
    session.audit(Action.PRINCIPALS.value,
                  detail={"op": "token.create", "issued_token_id": issued.info.id, "for": issued.info.principal,
                          "expires_days": expires_days, "enabled_auth": issued.enabled_auth})  # fmt: skip
    return issued


def list_tokens(session: Session, principal: str | None = None) -> tuple[TokenInfo, ...]:
    """Every token (of ``principal`` when given): id, owner, state, dates; never a secret."""
    session.decide(Action.PRINCIPALS)
    if principal and principal not in {p.name for p in session.policy.principals()}:
        raise ValidationError(f"unknown principal {principal!r} (see `sage-health principals list`)")
    found = tuple(_identity(session).tokens(principal))
    session.audit(Action.PRINCIPALS.value, detail={"op": "token.list", "listed": len(found)})
    return found


def revoke_token(session: Session, token_id: str) -> TokenInfo:
    """Revoke a token by its public id (idempotent: revoking a revoked token changes nothing)."""
    session.decide(Action.PRINCIPALS)
    info = _identity(session).revoke(token_id.strip(), by=session.access)
    session.audit(Action.PRINCIPALS.value, detail={"op": "token.revoke", "revoked_token_id": info.id,
                                                   "for": info.principal})  # fmt: skip
    return info


# --------------------------------------------------------------------------- the authentication switch


@dataclass(frozen=True)
class AuthStatus:
    required: bool
    """Whether this store requires credentials (``SAGE_TOKEN`` / a bearer token) from every caller."""
    tokens: int
    active_tokens: int
    session_mode: str
    """How the caller of this use case was identified: ``token`` or ``local`` (``--as`` on a store without
    authentication)."""
    changed: bool = False
    """``auth enable`` only: True when this call switched authentication on."""
    issued: IssuedToken | None = None
    """``auth enable`` on a store without an active administrator token: the token issued to the acting
    administrator (shown once), so switching authentication on never locks the administrators out."""

    def to_json(self) -> dict[str, Any]:
        out = {"required": self.required, "tokens": self.tokens, "active_tokens": self.active_tokens,
               "session_mode": self.session_mode, "changed": self.changed}  # fmt: skip
        if self.issued is not None:
            out["issued"] = {"token": self.issued.token, "id": self.issued.info.id,
                             "principal": self.issued.info.principal}  # fmt: skip
        return out


def _status(session: Session, identity: IdentityStore, *, changed: bool = False) -> AuthStatus:
    tokens = identity.tokens()
    return AuthStatus(required=identity.enabled(), tokens=len(tokens),
                      active_tokens=sum(1 for t in tokens if t.state == "active"), session_mode=session.mode,
                      changed=changed)  # fmt: skip


def auth_status(session: Session) -> AuthStatus:
    """Whether the store requires credentials, and how many tokens it has issued."""
    session.decide(Action.PRINCIPALS)
    status = _status(session, _identity(session))
    session.audit(Action.PRINCIPALS.value, detail={"op": "auth.status", "required": status.required})
    return status


def enable_auth(session: Session) -> AuthStatus:
    """Require credentials on this store from now on (it cannot be switched off through the platform). On a store
    without an active administrator token, one is issued to the acting administrator first and returned (shown
    once), so the people who issue tokens are never locked out."""
    session.decide(Action.PRINCIPALS)
    identity = _identity(session)
    issued = None
    admins = {p.name for p in session.policy.principals() if p.role == "admin" and p.active}
    if not any(t.principal in admins and t.state == "active" for t in identity.tokens()):
        issued = create_token(session, session.principal, label="issued by auth enable")
    changed = identity.enable(by=session.access) or (issued is not None and issued.enabled_auth)
    status = _status(session, identity, changed=changed)
    session.audit(Action.PRINCIPALS.value,
                  detail={"op": "auth.enable", "changed": changed,
                          "issued_token_id": issued.info.id if issued else None})  # fmt: skip
    return AuthStatus(**{**status.__dict__, "issued": issued})


# --------------------------------------------------------------------------- consent


@dataclass(frozen=True)
class ConsentList:
    consents: tuple[ConsentRecord, ...]
    opted_out: tuple[str, ...]
    """Patients opted out of research today."""

    def to_json(self) -> dict[str, Any]:
        return {"consents": [consent_json(c) for c in self.consents], "opted_out": list(self.opted_out)}


def _patient(session: Session, patient: str) -> str:
    """The stored patient id behind ``patient`` as the caller's view names it; refused when unknown."""
    governed = session.governed()
    real = governed.resolve_viewed_id(patient.strip())
    if not governed.has_patient(real):
        raise ValidationError(f"unknown patient {patient}: no such record in the store")
    return real


def set_consent(
    session: Session,
    patient: str,
    decision: str,
    *,
    effective_from: str | None = None,
    until: str | None = None,
    reason: str | None = None,
) -> ConsentRecord:
    """Record one consent decision (``opt_out`` or ``opt_in``) for a patient of the store."""
    session.decide(Action.CONSENT)
    if decision not in ("opt_out", "opt_in"):
        raise ValidationError(f"decision must be opt_out or opt_in, got {decision!r}")
    real = _patient(session, patient)
    choice: ConsentDecision = "opt_out" if decision == "opt_out" else "opt_in"
    rec = session.policy.record_consent(
        real, choice, by=session.access, effective_from=effective_from, effective_until=until, reason=reason
    )
    session.audit(Action.CONSENT.value, record_ids=[real], detail={"op": "set", "decision": rec.decision,
                                                                   "consent_id": rec.id})  # fmt: skip
    return rec


def import_consents(session: Session, file: Path) -> tuple[ConsentRecord, ...]:
    """Import consent decisions from a CSV, JSON or JSONL file: every row is checked first, then all are stored
    or none. The file is named in the audit log by the sha256 of its path only."""
    session.decide(Action.CONSENT)
    rows = read_consent_file(file)
    records = tuple(session.policy.import_consents(rows, by=session.access, where=f"{file.name}: "))
    session.audit(Action.CONSENT.value, record_ids=[r.patient_id for r in records],
                  detail={"op": "import", "imported": len(records),
                          "file_sha256": sha256_text(str(file.resolve()))})  # fmt: skip
    return records


def list_consents(session: Session, patient: str | None = None) -> ConsentList:
    """Consent decisions in the order recorded (of one patient when given), and who is opted out today."""
    session.decide(Action.CONSENT)
    real = session.governed().resolve_viewed_id(patient.strip()) if patient else None
    found = tuple(session.policy.consents(real))
    session.audit(Action.CONSENT.value, record_ids=[real] if real else [], detail={"op": "list",
                                                                                 "listed": len(found)})  # fmt: skip
    return ConsentList(consents=found, opted_out=session.policy.opted_out())
