"""The hash-chained audit log on a real SQLite file: every tampering case is detected at the right position."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from pydantic import SecretStr

from sage_health.core.config import Settings
from sage_health.data.governance.audit import AuditLog, query_hash

KEY = b"test-audit-key"


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    audit = AuditLog(tmp_path / "sage.db", key=KEY)
    for i in range(1, 6):
        audit.append(
            principal="clinician",
            purpose="treatment",
            action="read" if i % 2 else "search",
            record_ids=(f"synthea/Patient/p{i}",) if i % 2 else (),
            query=None if i % 2 else f"query {i}",
        )
    return audit


def _db(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "sage.db", isolation_level=None)


def test_intact_log_verifies_and_stores_no_query_text(log: AuditLog, tmp_path: Path) -> None:
    result = log.verify()
    assert (result.ok, result.events, result.first_bad_seq) == (True, 5, None)
    assert result.line() == "audit log intact: 5 events, chain and anchor verified"
    events = log.events()
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events[1].query_sha256 == query_hash("query 2")
    raw = (tmp_path / "sage.db").read_bytes()
    assert b"query 2" not in raw  # only the hash is stored
    assert [e.seq for e in log.events(record_id="synthea/Patient/p3")] == [3]


def test_edited_row_is_detected(log: AuditLog, tmp_path: Path) -> None:
    _db(tmp_path).execute("UPDATE audit_log SET principal = 'admin' WHERE seq = 3")
    result = log.verify()
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "row edited" in (result.reason or "")


def test_edited_detail_with_recomputed_hash_fails_without_the_key(log: AuditLog, tmp_path: Path) -> None:
    # An attacker who recomputes a plain sha256 still cannot produce the HMAC.
    conn = _db(tmp_path)
    conn.execute("UPDATE audit_log SET detail_json = ? WHERE seq = 2", (json.dumps({"x": 1}),))
    forged = AuditLog(tmp_path / "sage.db", key=b"attacker-key")
    assert forged.verify().ok is False
    assert log.verify().first_bad_seq == 2


def test_deleted_row_is_detected(log: AuditLog, tmp_path: Path) -> None:
    _db(tmp_path).execute("DELETE FROM audit_log WHERE seq = 2")
    result = log.verify()
    assert (result.ok, result.first_bad_seq) == (False, 2)
    assert "deleted or reordered" in (result.reason or "")


def test_reordered_rows_are_detected(log: AuditLog, tmp_path: Path) -> None:
    conn = _db(tmp_path)  # swap the 3rd and 4th events' positions
    conn.execute("UPDATE audit_log SET seq = -1 WHERE seq = 3")
    conn.execute("UPDATE audit_log SET seq = 3 WHERE seq = 4")
    conn.execute("UPDATE audit_log SET seq = 4 WHERE seq = -1")
    result = log.verify()
    assert (result.ok, result.first_bad_seq) == (False, 3)


def test_inserted_row_is_detected(log: AuditLog, tmp_path: Path) -> None:
    conn = _db(tmp_path)
    conn.execute("UPDATE audit_log SET seq = seq + 100 WHERE seq >= 3")
    conn.execute(
        "INSERT INTO audit_log VALUES (3, '2026-01-01T00:00:00+00:00', 'admin', 'operations', 'erase', '[]', NULL, "
        "'{}', (SELECT hash FROM audit_log WHERE seq = 2), 'f00d')"
    )
    conn.execute("UPDATE audit_log SET seq = seq - 99 WHERE seq > 100")
    result = log.verify()
    assert (result.ok, result.first_bad_seq) == (False, 3)


def test_truncated_tail_is_detected_by_the_anchor(log: AuditLog, tmp_path: Path) -> None:
    _db(tmp_path).execute("DELETE FROM audit_log WHERE seq >= 4")
    result = log.verify()
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert "truncated" in (result.reason or "")
    _db(tmp_path).execute("DELETE FROM audit_log")
    assert log.verify().ok is False  # an emptied log with an anchor is a truncation too


def test_missing_anchor_is_reported(log: AuditLog, tmp_path: Path) -> None:
    (tmp_path / "sage.db.audit-head").unlink()
    result = log.verify()
    assert result.ok is False
    assert result.reason == "the anchor file is missing"


def test_signed_events_after_a_stale_anchor_verify_and_move_the_anchor(log: AuditLog, tmp_path: Path) -> None:
    # A process stopped between its commit and the anchor update: the anchor is one event behind.
    anchor = tmp_path / "sage.db.audit-head"
    first_four = log.events()[3]
    anchor.write_text(f"4 {first_four.hash}\n", encoding="ascii")
    result = log.verify()
    assert result.ok is True
    assert result.note == "anchor was 1 event(s) behind; moved forward"
    assert anchor.read_text(encoding="ascii").startswith("5 ")


def test_key_file_is_created_private_when_no_key_is_configured(tmp_path: Path) -> None:
    audit = AuditLog.for_settings(Settings(store=tmp_path))
    audit.append(principal="data_steward", action="consent.change", record_ids=("synthea/Patient/p1",))
    key_file = tmp_path / "audit.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert AuditLog(tmp_path / "sage.db").verify().ok
    keyed = AuditLog.for_settings(Settings(store=tmp_path, audit_key=SecretStr("k")))
    assert keyed.verify().ok is False  # a different key: every signature fails from the first event
    assert keyed.verify().first_bad_seq == 1


def test_cli_verify_and_show(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sage_health.interfaces.cli import app

    audit = AuditLog.for_settings(Settings(store=tmp_path))
    for i in range(3):
        audit.append(principal="researcher", purpose="research", action="search", query=f"q{i}")
    runner = CliRunner(env={"SAGE_PRINCIPAL": "data_steward", "SAGE_PURPOSE": "operations"})
    denied = runner.invoke(
        app, ["audit", "verify", "--store", str(tmp_path), "--as", "clinician", "--purpose", "treatment"]
    )
    assert denied.exit_code == 1
    assert "may not audit" in denied.output
    ok = runner.invoke(app, ["audit", "verify", "--store", str(tmp_path), "--json"])
    assert ok.exit_code == 0, ok.output
    # the refused verify is itself an event (a denial), so 4
    assert json.loads(ok.stdout) == {"ok": True, "events": 4, "first_bad_seq": None, "reason": None, "note": None}
    shown = json.loads(runner.invoke(app, ["audit", "show", "--store", str(tmp_path), "--json"]).stdout)
    assert [e["query_sha256"] for e in shown[:3]] == [query_hash(f"q{i}") for i in range(3)]
    assert (shown[3]["principal"], shown[3]["action"], shown[3]["detail"]["outcome"]) == (
        "clinician",
        "audit",
        "denied",
    )
    _db(tmp_path).execute("UPDATE audit_log SET action = 'read' WHERE seq = 2")
    bad = runner.invoke(app, ["audit", "verify", "--store", str(tmp_path)])
    assert bad.exit_code == 1
    assert "audit log TAMPERED at position 2" in " ".join(bad.output.split())
