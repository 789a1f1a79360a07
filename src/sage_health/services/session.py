"""Sessions: one authenticated principal acting for one declared purpose over one store.

Every use case in :mod:`sage_health.services` takes a :class:`Session`. The session is built from
:class:`Credentials` by :func:`open_session`, the only place where a caller becomes a principal:

- with a **token** (``SAGE_TOKEN`` on the CLI, ``Authorization: Bearer`` on the API) the principal is the token's;
  a name claimed beside it (``--as``) must be the same principal or the call is refused;
- without a token, on a store that **requires credentials** (it issued a token, or ``auth enable`` was run), the
  call is refused (:class:`AuthenticationError`, HTTP 401);
- without a token, on a store that does not (a fresh local store), the claimed name is used: the single-user
  *local* mode that keeps ``make demo`` two commands. An API server only runs this way with ``--no-auth`` on a
  loopback address.

Failed authentications are audited (the token's public id, never the token). The purpose is declared per call and
must be one the role allows; the policy engine decides each action and the session audits it.

A :class:`Runtime` holds what a process shares between sessions: opened stores and the generator pool (one model
load per process). The CLI makes one per command; the API one per application.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sage_health.core.config import Settings
from sage_health.core.errors import AuthenticationError, PolicyViolation
from sage_health.data.governance.access import GovernedStore, RecordView, append_event
from sage_health.data.governance.audit import AuditLog
from sage_health.data.governance.identity import IdentityStore, token_id_of
from sage_health.data.governance.policy import (
    RULES,
    Access,
    Action,
    Decision,
    PolicyEngine,
    Principal,
    allowed_purposes,
)
from sage_health.data.store.factory import open_store
from sage_health.data.store.health import require_store
from sage_health.data.store.protocol import GovernableStore
from sage_health.models.catalog import GeneratorPool
from sage_health.models.registry import ModelRegistry

Channel = Literal["cli", "api", "job"]


@dataclass(frozen=True)
class Credentials:
    """What a caller presents. ``principal`` is a *claim*: it only counts on a store without authentication."""

    token: str | None = None
    principal: str | None = None
    purpose: str | None = None
    channel: Channel = "cli"

    @classmethod
    def from_settings(cls, settings: Settings, *, channel: Channel = "cli") -> Credentials:
        token = settings.token.get_secret_value() if settings.token is not None else None
        return cls(token=token, principal=settings.principal, purpose=settings.purpose, channel=channel)


class Runtime:
    """Process-wide resources shared by the sessions of one process (thread-safe to build)."""

    def __init__(self, *, bm25_index: Literal["memory", "fts5"] | None = None) -> None:
        self._bm25_index = bm25_index
        self._stores: dict[str, GovernableStore] = {}
        self._pools: dict[str, GeneratorPool] = {}
        self._lock = threading.Lock()
        self.workflow_lock = threading.Lock()
        """Serialises agent workflows in one process (they share the store connection and the CPU)."""

    def store(self, settings: Settings, *, must_exist: bool = True) -> GovernableStore:
        key = str(settings.db_path.resolve())
        with self._lock:
            st = self._stores.get(key)
            if st is None:
                st = open_store(settings, must_exist=must_exist, bm25_index=self._bm25_index)
                self._stores[key] = st
        return st

    def pool(self, settings: Settings) -> GeneratorPool:
        key = str(settings.db_path.resolve())
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = GeneratorPool(settings, ModelRegistry(settings.db_path))
                self._pools[key] = pool
        return pool

    def close(self) -> None:
        with self._lock:
            for st in self._stores.values():
                st.close()
            self._stores.clear()


@dataclass
class Session:
    """An authenticated principal + declared purpose over the store of ``settings``. Cheap; one per command or
    request. Use cases reach data only through :attr:`governed` and decide/audit through :meth:`decide` and
    :meth:`audit`."""

    settings: Settings
    access: Access
    policy: PolicyEngine
    audit_log: AuditLog
    runtime: Runtime
    token_id: str | None = None
    mode: Literal["token", "local"] = "local"
    channel: Channel = "cli"
    owns_runtime: bool = False
    _governed: GovernedStore | None = field(default=None, repr=False)
    _view: RecordView | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ who
    @property
    def principal(self) -> str:
        return self.access.principal.name

    @property
    def role(self) -> str:
        return self.access.principal.role

    @property
    def purpose(self) -> str:
        return self.access.purpose

    def view(self) -> RecordView | None:
        """The de-identified view, for roles whose rules give one (built once per session)."""
        if self._view is None and any(r.view == "deidentified" for r in RULES if r.role == self.role):
            from sage_health.data.governance.views import build_view

            self._view = build_view(self.settings)
        return self._view

    # ------------------------------------------------------------------ data
    def governed(self, *, must_exist: bool = True) -> GovernedStore:
        """The governed store for this principal and purpose (the raw store never leaves the governance layer)."""
        if self._governed is None:
            raw = self.runtime.store(self.settings, must_exist=must_exist)
            self._governed = GovernedStore(
                store=raw,
                access=self.access,
                policy=self.policy,
                audit=self.audit_log,
                view=self.view(),
                actor=self.actor(),
            )
        return self._governed

    def pool(self) -> GeneratorPool:
        return self.runtime.pool(self.settings)

    @property
    def registry(self) -> ModelRegistry:
        return self.pool().registry

    # ------------------------------------------------------------------ policy + audit
    def decide(self, action: Action, *, detail: dict[str, Any] | None = None) -> Decision:
        """Ask the policy engine; a denial is audited and raised as :class:`PolicyViolation`."""
        decision = self.policy.decide(self.access, action)
        if not decision.allowed:
            self.audit(Action(action).value, detail={**(detail or {}), "denied": decision.reason}, outcome="denied")
            raise PolicyViolation(decision.reason)
        return decision

    def audit(
        self,
        action: str,
        *,
        record_ids: Sequence[str] = (),
        query: str | None = None,
        detail: dict[str, Any] | None = None,
        outcome: str = "ok",
    ) -> None:
        """Append one event (ids and hashes only: never record content, file paths or query text)."""
        append_event(self.audit_log, self.access, action, record_ids=record_ids, query=query, detail=detail,
                     outcome=outcome, actor=self.actor())  # fmt: skip

    def actor(self) -> dict[str, Any]:
        """How this session's principal was identified, for every audit event it writes."""
        actor: dict[str, Any] = {"channel": self.channel}
        if self.token_id is not None:
            actor["token_id"] = self.token_id
        return actor

    def close(self) -> None:
        """Forget the governed store; close the runtime's stores when this session made its own runtime (one
        CLI command), never a shared one (the API's)."""
        self._governed = None
        if self.owns_runtime:
            self.runtime.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def auth_required(settings: Settings) -> bool:
    """Whether the store of ``settings`` requires credentials."""
    return IdentityStore(settings.db_path).enabled()


def _audit_failure(
    settings: Settings, credentials: Credentials, reason: str, *, principal: str | None = None, action: str
) -> None:
    """One audit event for a refused session: ``authenticate`` (no valid credentials; the principal is unknown,
    ``-``) or ``purpose`` (an identified principal declaring a purpose its role may not act for)."""
    if not settings.db_path.parent.is_dir():
        return  # no store yet: nothing to append to (and nothing to protect)
    token_id = token_id_of(credentials.token) if credentials.token else None
    AuditLog.for_settings(settings).append(
        principal=principal or "-",
        purpose=credentials.purpose if credentials.purpose in ("treatment", "research", "operations") else None,
        action=action,
        record_ids=[],
        query=None,
        detail={"outcome": "denied", "reason": reason, "token_id": token_id, "channel": credentials.channel},
    )


def _identify(
    creds: Credentials, identity: IdentityStore, require_token: bool
) -> tuple[Principal, str | None, Literal["token", "local"]]:
    """Who the caller is: the token's principal, or the claimed name on a store without authentication."""
    if creds.token:
        auth = identity.authenticate(creds.token)
        if creds.principal and creds.principal != auth.principal.name:
            raise PolicyViolation(
                f"the token {auth.token_id} belongs to {auth.principal.name}, not {creds.principal}: "
                "identity comes from the token (drop --as / SAGE_PRINCIPAL)"
            )
        return auth.principal, auth.token_id, "token"
    if require_token or identity.enabled():
        raise AuthenticationError(
            "this store requires credentials: set SAGE_TOKEN to a token from "
            "`sage-health principals token create NAME` (API: `Authorization: Bearer <token>`)"
        )
    if not creds.principal:
        raise PolicyViolation(
            "no principal given: pass --as NAME or set SAGE_PRINCIPAL "
            "(built-ins: clinician, researcher, data_steward, admin)"
        )
    return identity.policy.principal(creds.principal), None, "local"


def _bind(policy: PolicyEngine, principal: Principal, purpose: str | None) -> Access:
    """The principal acting for ``purpose``, refused unless the role may act for it."""
    access = policy.access_for(principal, purpose)
    allowed = allowed_purposes(principal.role)
    if access.purpose not in allowed:
        raise PolicyViolation(
            f"{principal.name} ({principal.role}) may not act for purpose {access.purpose!r}; "
            f"allowed: {', '.join(allowed) or 'none'}"
        )
    return access


def open_session(
    settings: Settings,
    credentials: Credentials | None = None,
    *,
    runtime: Runtime | None = None,
    require_token: bool = False,
    must_exist: bool = False,
) -> Session:
    """Authenticate ``credentials`` (default: from ``settings``) and bind the principal and purpose.
    ``require_token`` refuses the local mode whatever the store says (the API server unless ``--no-auth``);
    ``must_exist`` refuses a store that does not exist yet (a read on a mistyped ``--store`` creates nothing).

    Raises :class:`AuthenticationError` (401) for missing or bad credentials on a store that requires them and
    :class:`PolicyViolation` (403) for an unknown principal, a claimed name that is not the token's, or a purpose
    the role may not act for. Failures are audited."""
    creds = credentials or Credentials.from_settings(settings)
    if must_exist:
        require_store(settings)
    policy = PolicyEngine(settings.db_path)
    try:
        principal, token_id, mode = _identify(creds, IdentityStore(settings.db_path, policy), require_token)
    except PolicyViolation as exc:  # AuthenticationError included
        _audit_failure(settings, creds, str(exc), action="authenticate")
        raise
    try:
        access = _bind(policy, principal, creds.purpose)
    except PolicyViolation as exc:
        _audit_failure(settings, creds, str(exc), principal=principal.name, action="purpose")
        raise
    return Session(
        settings=settings,
        access=access,
        policy=policy,
        audit_log=AuditLog.for_settings(settings),
        runtime=runtime or Runtime(),
        owns_runtime=runtime is None,
        token_id=token_id,
        mode=mode,
        channel=creds.channel,
    )
