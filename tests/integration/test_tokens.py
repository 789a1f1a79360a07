"""Identities through the real CLI: tokens are shown once and stored hashed; once a store has issued a token, ``--as``
alone grants nothing; the right token works, a token naming someone else, a revoked, expired or forged token does
not; the first token must be an administrator's; a fresh store keeps the single-user ``--as`` mode; the audit log
holds token ids and never a token."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from sage_health.core.config import Settings
from sage_health.data.governance.audit import AuditLog
from sage_health.interfaces.cli import app
from sage_health.interfaces.cli.governance import auth_app

pytestmark = pytest.mark.integration

ADMIN = ["--as", "admin", "--purpose", "operations"]


def _run(args: list[str], store: Path, *, token: str | None = None, sub: object = app) -> Result:
    env = {"SAGE_TOKEN": token} if token else {}
    return CliRunner().invoke(sub, [*args, "--store", str(store)], env=env)  # type: ignore[arg-type]


def _json(result: Result) -> object:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _error(result: Result) -> str:
    assert result.exit_code == 1, result.output
    return " ".join(result.output.split())


def _db_bytes(store: Path) -> bytes:
    """Every byte of the store database, its WAL and shared-memory files."""
    return b"".join(p.read_bytes() for p in sorted(store.glob("sage.db*")) if p.is_file())


def test_fresh_store_keeps_the_single_user_mode(tmp_path: Path) -> None:
    store = tmp_path / "store"
    listed = _json(_run(["principals", "list", *ADMIN, "--json"], store))
    assert {p["name"] for p in listed} >= {"admin", "researcher", "clinician", "data_steward"}  # type: ignore[union-attr]
    status = _json(_run(["status", *ADMIN, "--json"], store, sub=auth_app))
    assert status == {"required": False, "tokens": 0, "active_tokens": 0, "session_mode": "local", "changed": False}
    assert _json(_run(["audit", "verify", "--as", "data_steward", "--purpose", "operations", "--json"], store))
    # the first token must be an administrator's: anything else is refused and switches nothing on
    refused = _error(_run(["principals", "token", "create", "researcher", *ADMIN], store))
    assert "the first token of a store must belong to an administrator" in refused
    assert _json(_run(["principals", "token", "list", *ADMIN, "--json"], store)) == []
    assert _json(_run(["principals", "list", *ADMIN, "--json"], store))  # still the local mode
    # a clinician may not manage principals (and the refusal is audited)
    denied = _error(_run(["principals", "token", "create", "admin", "--as", "clinician", "--purpose", "treatment"],
                         store))  # fmt: skip
    assert "clinician (clinician, treatment) may not principals" in denied
    events = AuditLog.for_settings(Settings(store=store)).events(action="principals")
    assert events[-1].detail["outcome"] == "denied"
    assert events[-1].principal == "clinician"
    # `auth enable` on a store without an admin token issues one to the acting admin (shown once) and switches on,
    # so switching authentication on can never lock the administrators out
    enabled = _json(_run(["enable", *ADMIN, "--json"], store, sub=auth_app))
    assert isinstance(enabled, dict)
    assert (enabled["required"], enabled["changed"], enabled["issued"]["principal"]) == (True, True, "admin")
    token = str(enabled["issued"]["token"])
    assert "requires credentials" in _error(_run(["principals", "list", *ADMIN, "--json"], store))
    assert _json(_run(["principals", "list", "--purpose", "operations", "--json"], store, token=token))
    again = _json(_run(["enable", "--purpose", "operations", "--json"], store, token=token, sub=auth_app))
    assert isinstance(again, dict)
    assert (again["changed"], "issued" in again) == (False, False)
    assert token.encode() not in _db_bytes(store)


def test_tokens_replace_names_once_a_store_has_one(tmp_path: Path) -> None:
    store = tmp_path / "store"
    created = _json(_run(["principals", "token", "create", "admin", "--label", "ops laptop", *ADMIN, "--json"], store))
    assert isinstance(created, dict)
    admin_token, admin_id = str(created["token"]), str(created["id"])
    assert admin_token.startswith(f"sage_{admin_id}_")
    assert created["enabled_auth"] is True
    assert (created["principal"], created["state"], created["expires_at"]) == ("admin", "active", None)

    # --as alone grants nothing now, for any command
    for args in (["principals", "list", *ADMIN], ["audit", "verify", "--as", "data_steward", "--purpose", "operations"],
                 ["dataset", "list", "--as", "researcher", "--purpose", "research"]):  # fmt: skip
        assert "this store requires credentials: set SAGE_TOKEN" in _error(_run(args, store))
    # the right token works; --as naming someone else is refused; --as naming the token's principal is fine
    listed = _json(_run(["principals", "list", "--purpose", "operations", "--json"], store, token=admin_token))
    assert "admin" in {p["name"] for p in listed}  # type: ignore[union-attr]
    other = _error(_run(["principals", "list", "--as", "researcher", "--purpose", "operations"], store,
                        token=admin_token))  # fmt: skip
    assert f"the token {admin_id} belongs to admin, not researcher" in other
    assert _json(_run(["principals", "list", *ADMIN, "--json"], store, token=admin_token))
    status = _json(_run(["status", "--purpose", "operations", "--json"], store, token=admin_token, sub=auth_app))
    assert status == {"required": True, "tokens": 1, "active_tokens": 1, "session_mode": "token", "changed": False}
    enabled = _json(_run(["enable", "--purpose", "operations", "--json"], store, token=admin_token, sub=auth_app))
    assert (enabled["required"], enabled["changed"]) == (True, False)  # type: ignore[index]

    # a researcher's token: it acts as the researcher, for the purposes the role allows
    issued = _json(_run(["principals", "token", "create", "researcher", "--expires", "30", "--purpose", "operations",
                         "--json"], store, token=admin_token))  # fmt: skip
    assert isinstance(issued, dict)
    researcher_token, researcher_id = str(issued["token"]), str(issued["id"])
    assert issued["expires_at"] is not None
    assert issued["enabled_auth"] is False
    assert _json(_run(["dataset", "list", "--purpose", "research", "--json"], store, token=researcher_token)) == []
    assert "may not act for purpose 'operations'" in _error(
        _run(["dataset", "list", "--purpose", "operations"], store, token=researcher_token)
    )
    assert "may not principals" in _error(
        _run(["principals", "token", "list", "--purpose", "research"], store, token=researcher_token)
    )

    # token list: id, owner, state, dates; never a secret
    tokens = _json(_run(["principals", "token", "list", "--purpose", "operations", "--json"], store,
                        token=admin_token))  # fmt: skip
    assert isinstance(tokens, list)
    assert [(t["id"], t["principal"], t["state"]) for t in tokens] == [
        (admin_id, "admin", "active"),
        (researcher_id, "researcher", "active"),
    ]
    assert tokens[0]["last_used_at"] is not None
    assert tokens[0]["label"] == "ops laptop"
    table = _run(["principals", "token", "list", "--principal", "researcher", "--purpose", "operations"], store,
                 token=admin_token)  # fmt: skip
    assert table.exit_code == 0, table.output
    assert researcher_id[:6] in table.stdout
    assert admin_id[:6] not in table.stdout
    for t in (admin_token, researcher_token):
        assert t.split("_", 2)[2] not in json.dumps(tokens) + table.stdout

    # revoked: refused at once
    revoked = _json(_run(["principals", "token", "revoke", researcher_id, "--purpose", "operations", "--json"],
                         store, token=admin_token))  # fmt: skip
    assert revoked["state"] == "revoked"  # type: ignore[index]
    assert f"token {researcher_id} is revoked" in _error(
        _run(["dataset", "list", "--purpose", "research"], store, token=researcher_token)
    )
    # expired: the clock is moved past the expiry by editing the stored date (the row, not our code)
    late = _json(_run(["principals", "token", "create", "data_steward", "--expires", "1", "--purpose", "operations",
                       "--json"], store, token=admin_token))  # fmt: skip
    assert isinstance(late, dict)
    with sqlite3.connect(store / "sage.db") as conn:
        conn.execute("UPDATE api_tokens SET expires_at = '2020-01-01T00:00:00+00:00' WHERE id = ?", (late["id"],))
    assert f"token {late['id']} is expired" in _error(
        _run(["audit", "verify", "--purpose", "operations"], store, token=str(late["token"]))
    )
    # forged: a well-formed token with a wrong secret, and a malformed one
    forged = f"sage_{admin_id}_{'A' * 43}"
    assert f"invalid token {admin_id}" in _error(_run(["principals", "list", "--purpose", "operations"], store,
                                                      token=forged))  # fmt: skip
    malformed = "not-a-token"
    assert "malformed token" in _error(_run(["principals", "list", "--purpose", "operations"], store, token=malformed))
    zero = ["principals", "token", "create", "clinician", "--expires", "0", "--purpose", "operations"]
    assert "--expires must be between 1 and 3650 days" in _error(_run(zero, store, token=admin_token))

    # the audit log names tokens by id (successes and failures) and the database never holds a secret
    events = AuditLog.for_settings(Settings(store=store)).events()
    issued_ids = {e.detail.get("issued_token_id") for e in events if e.detail.get("op") == "token.create"}
    assert issued_ids == {admin_id, researcher_id, late["id"]}
    acting = {e.detail.get("token_id") for e in events if e.detail.get("outcome") == "ok"}
    assert {admin_id, researcher_id} <= acting
    failures = [e for e in events if e.action == "authenticate"]
    assert {e.detail["token_id"] for e in failures} >= {researcher_id, late["id"], admin_id, None}
    assert all(e.detail["outcome"] == "denied" for e in failures)
    raw = _db_bytes(store)
    for secret in (admin_token, researcher_token, str(late["token"]), forged):
        assert secret.encode() not in raw
        assert secret.split("_", 2)[2].encode() not in raw
    assert AuditLog.for_settings(Settings(store=store)).verify().ok
