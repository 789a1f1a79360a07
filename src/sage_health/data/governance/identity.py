"""Credentials: who a caller *is* comes from a secret token, never from a name the caller types.

A token is ``sage_<id>_<secret>``: ``id`` is a public, random 12-hex-digit handle (shown in ``principals token
list``, written to the audit log); ``secret`` is 32 random bytes (URL-safe base64). Only the SHA-256 of the secret
is stored (table ``api_tokens``) — the secret has 256 bits of entropy, so a slow hash adds nothing — and it is
compared in constant time. The whole token is printed once, when it is created. Tokens expire (optional) and can
be revoked; a deactivated principal's tokens stop working with it.

**Authentication on or off.** A store *requires* credentials once it has issued a token, or after ``sage-health
auth enable``. A fresh local store has none, so ``make demo`` and a single user's first steps work with ``--as``
alone (the *local* mode). Once on, authentication cannot be switched off through the platform (only by a person
with the database file): on such a store ``--as`` grants nothing, and the CLI needs ``SAGE_TOKEN``.

The first token of a store must belong to an administrator: issuing it switches authentication on, and a store
whose only tokens belong to non-administrators would lock out the people who issue tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sage_health.core.errors import AuthenticationError, PolicyViolation, ValidationError
from sage_health.data.governance.policy import Access, Action, PolicyEngine, Principal
from sage_health.data.sqlite_tables import connect, immediate

TOKEN_PREFIX = "sage_"  # noqa: S105 (the public prefix of every token, not a secret)
_TOKEN = re.compile(r"^sage_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
MAX_EXPIRY_DAYS = 3650

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY,
    principal TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    label TEXT,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT,
    revoked_by TEXT,
    last_used_at TEXT
);
CREATE INDEX IF NOT EXISTS api_tokens_principal ON api_tokens(principal);
CREATE TABLE IF NOT EXISTS auth_settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    set_at TEXT NOT NULL,
    set_by TEXT NOT NULL
);
"""


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="seconds")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def token_id_of(token: str) -> str | None:
    """The public id inside a well-formed token (``None`` for anything else); safe to log."""
    match = _TOKEN.match(token.strip())
    return match.group(1) if match else None


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed: never the secret."""

    id: str
    principal: str
    label: str | None
    created_at: str
    created_by: str
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None

    @property
    def state(self) -> str:
        if self.revoked_at:
            return "revoked"
        if self.expires_at and datetime.fromisoformat(self.expires_at) <= _now():
            return "expired"
        return "active"


@dataclass(frozen=True)
class IssuedToken:
    """A newly created token: ``token`` is shown once and never stored."""

    info: TokenInfo
    token: str
    enabled_auth: bool
    """True when this token switched authentication on for the store."""


@dataclass(frozen=True)
class Authenticated:
    """The principal a valid token belongs to."""

    principal: Principal
    token_id: str


class IdentityStore:
    """API tokens and the store's authentication switch (tables in the store database)."""

    def __init__(self, db_path: Path, policy: PolicyEngine | None = None) -> None:
        self.db_path = db_path
        self.policy = policy or PolicyEngine(db_path)

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        with connect(self.db_path, schema=_SCHEMA, what="the token tables") as conn:
            yield conn

    # ------------------------------------------------------------------ the switch
    def enabled(self) -> bool:
        """Whether this store requires credentials (it issued a token, or ``auth enable`` was run)."""
        if not self.db_path.is_file():
            return False
        with self._conn() as conn:
            flag = conn.execute("SELECT value FROM auth_settings WHERE key = 'required'").fetchone()
            if flag is not None and flag["value"] == "1":
                return True
            return conn.execute("SELECT 1 FROM api_tokens LIMIT 1").fetchone() is not None

    def enable(self, *, by: Access) -> bool:
        """Require credentials from now on; returns False when they already were required."""
        self.policy.decide(by, Action.PRINCIPALS).require()
        self._require_admin_token_first(by, principal=None)
        was = self.enabled()
        with self._conn() as conn, immediate(conn):
            conn.execute(
                "INSERT INTO auth_settings(key, value, set_at, set_by) VALUES ('required', '1', ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = '1', set_at = excluded.set_at, set_by = excluded.set_by",
                (_iso(_now()), by.principal.name),
            )
        return not was

    def _require_admin_token_first(self, by: Access, principal: Principal | None) -> None:
        """Refuse to switch authentication on unless an active administrator token exists or is being issued."""
        if self.enabled():
            return
        if principal is not None and principal.role == "admin":
            return
        admins = {p.name for p in self.policy.principals() if p.role == "admin" and p.active}
        if not any(t.principal in admins and t.state == "active" for t in self.tokens()):
            raise ValidationError(
                "the first token of a store must belong to an administrator, because issuing it switches "
                "authentication on: run `sage-health principals token create admin` first"
            )

    # ------------------------------------------------------------------ tokens
    def create(
        self, principal: str, *, by: Access, expires_days: int | None = None, label: str | None = None
    ) -> IssuedToken:
        self.policy.decide(by, Action.PRINCIPALS).require()
        target = self.policy.principal(principal)  # unknown or deactivated: a clear error
        if expires_days is not None and not 1 <= expires_days <= MAX_EXPIRY_DAYS:
            raise ValidationError(f"--expires must be between 1 and {MAX_EXPIRY_DAYS} days, got {expires_days}")
        if label is not None and len(label) > 200:
            raise ValidationError("a token label is at most 200 characters")
        self._require_admin_token_first(by, target)
        was_enabled = self.enabled()
        now = _now()
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        expires = _iso(now + timedelta(days=expires_days)) if expires_days is not None else None
        with self._conn() as conn, immediate(conn):
            conn.execute(
                "INSERT INTO api_tokens(id, principal, secret_sha256, label, created_at, created_by, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (token_id, target.name, _digest(secret), label, _iso(now), by.principal.name, expires),
            )
        return IssuedToken(info=self.token(token_id), token=f"{TOKEN_PREFIX}{token_id}_{secret}",
                           enabled_auth=not was_enabled)  # fmt: skip

    @staticmethod
    def _info(row: sqlite3.Row) -> TokenInfo:
        return TokenInfo(
            id=row["id"],
            principal=row["principal"],
            label=row["label"],
            created_at=row["created_at"],
            created_by=row["created_by"],
            expires_at=row["expires_at"],
            revoked_at=row["revoked_at"],
            last_used_at=row["last_used_at"],
        )

    def token(self, token_id: str) -> TokenInfo:
        with self._conn() as conn:
            row = conn.execute("SELECT * FROM api_tokens WHERE id = ?", (token_id,)).fetchone()
        if row is None:
            raise ValidationError(f"unknown token id {token_id!r} (see `sage-health principals token list`)")
        return self._info(row)

    def tokens(self, principal: str | None = None) -> list[TokenInfo]:
        if not self.db_path.is_file():
            return []
        with self._conn() as conn:
            if principal:
                rows = conn.execute("SELECT * FROM api_tokens WHERE principal = ? ORDER BY created_at, rowid",
                                    (principal,))  # fmt: skip
            else:
                rows = conn.execute("SELECT * FROM api_tokens ORDER BY created_at, rowid")
            return [self._info(r) for r in rows]

    def revoke(self, token_id: str, *, by: Access) -> TokenInfo:
        self.policy.decide(by, Action.PRINCIPALS).require()
        info = self.token(token_id)
        if info.revoked_at is None:
            with self._conn() as conn, immediate(conn):
                conn.execute("UPDATE api_tokens SET revoked_at = ?, revoked_by = ? WHERE id = ?",
                             (_iso(_now()), by.principal.name, token_id))  # fmt: skip
        return self.token(token_id)

    # ------------------------------------------------------------------ authentication
    def authenticate(self, token: str | None) -> Authenticated:
        """The principal behind ``token``; :class:`AuthenticationError` (naming the token id, never the secret)
        for a missing, malformed, unknown, revoked or expired token or a deactivated principal."""
        if not token or not token.strip():
            raise AuthenticationError("no credentials: send `Authorization: Bearer <token>` (CLI: set SAGE_TOKEN)")
        match = _TOKEN.match(token.strip())
        if match is None:
            raise AuthenticationError("malformed token: expected `sage_<id>_<secret>` as printed by "
                                      "`sage-health principals token create`")  # fmt: skip
        token_id, secret = match.groups()
        with self._conn() as conn:
            row = conn.execute("SELECT * FROM api_tokens WHERE id = ?", (token_id,)).fetchone()
        # compare even when the id is unknown, so the answer takes the same time either way
        expected = row["secret_sha256"] if row is not None else _digest("")
        if not hmac.compare_digest(expected, _digest(secret)) or row is None:
            raise AuthenticationError(f"invalid token {token_id}")
        info = self._info(row)
        if info.state != "active":
            raise AuthenticationError(f"token {token_id} is {info.state}")
        try:
            principal = self.policy.principal(info.principal)
        except PolicyViolation as exc:  # deactivated or removed principal
            raise AuthenticationError(f"token {token_id}: its principal is not active") from exc
        with self._conn() as conn:
            conn.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", (_iso(_now()), token_id))
        return Authenticated(principal=principal, token_id=token_id)
