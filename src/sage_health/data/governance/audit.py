"""A tamper-evident, append-only audit log (table ``audit_log`` in the store database).

Every event — who (principal), why (purpose), what (action), which record ids or the hash of a query, when —
is one row. Rows form a chain: each row's ``hash`` is an HMAC-SHA256 over its canonical content *and the previous
row's hash*, so editing, deleting, reordering or inserting a row breaks the chain at that row. Truncating the tail
leaves a valid chain, so the head ``(seq, hash)`` is also written to an **anchor file** beside the database after
every append; :meth:`AuditLog.verify` compares the chain's end to it.

The HMAC key is ``SAGE_AUDIT_KEY`` when set (keep it outside the store: then nobody holding only the database can
forge a consistent chain); otherwise a random key is created in ``<store>/audit.key`` (mode 0600) — tampering is
still detected, but someone with the whole store directory could re-sign it. For the same reason, copy the anchor
to write-once storage in a real deployment.

Payloads hold ids and hashes only — never record content or query text (a search is logged by the sha256 of its
query), so the log itself carries no PHI.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sage_health.core.config import Settings
from sage_health.data.governance.keys import key_from_file
from sage_health.data.sqlite_tables import connect, immediate

GENESIS = "0" * 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    principal TEXT NOT NULL,
    purpose TEXT,
    action TEXT NOT NULL,
    record_ids_json TEXT NOT NULL DEFAULT '[]',
    query_sha256 TEXT,
    detail_json TEXT NOT NULL DEFAULT '{}',
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
"""


class AuditEvent(BaseModel):
    model_config = ConfigDict(frozen=True)

    seq: int
    at: str
    principal: str
    purpose: str | None
    action: str
    record_ids: tuple[str, ...] = ()
    query_sha256: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class Verification:
    ok: bool
    events: int
    first_bad_seq: int | None = None
    """The position (1-based ``seq``) where the log stops being trustworthy."""
    reason: str | None = None
    note: str | None = None

    def line(self) -> str:
        if self.ok:
            extra = f" ({self.note})" if self.note else ""
            return f"audit log intact: {self.events} events, chain and anchor verified{extra}"
        return f"audit log TAMPERED at position {self.first_bad_seq}: {self.reason}"


def query_hash(text: str) -> str:
    """How a search is logged: the sha256 of its query text, never the text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _canonical(
    seq: int,
    at: str,
    principal: str,
    purpose: str | None,
    action: str,
    record_ids: Sequence[str],
    query_sha256: str | None,
    detail: dict[str, Any],
    prev_hash: str,
) -> bytes:
    body = [seq, at, principal, purpose, action, list(record_ids), query_sha256, detail, prev_hash]
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class AuditLog:
    """Append and verify. Cheap to construct; each call opens a short-lived connection."""

    def __init__(self, db_path: Path, *, key: bytes | None = None) -> None:
        self._path = db_path
        self._anchor = db_path.with_name(db_path.name + ".audit-head")
        self._key = key

    @classmethod
    def for_settings(cls, settings: Settings) -> AuditLog:
        """The store's log, signed with ``SAGE_AUDIT_KEY`` when set (else the key file beside the database)."""
        key = settings.audit_key.get_secret_value().encode("utf-8") if settings.audit_key else None
        return cls(settings.db_path, key=key)

    # -- key and anchor -------------------------------------------------------------------------------------------

    def _secret(self) -> bytes:
        if self._key is not None:
            return self._key
        self._key = key_from_file(self._path.with_name("audit.key"), what="audit")
        return self._key

    def _sign(self, payload: bytes) -> str:
        return hmac.new(self._secret(), payload, hashlib.sha256).hexdigest()

    def _write_anchor(self, seq: int, digest: str) -> None:
        tmp = self._anchor.with_name(self._anchor.name + ".tmp")
        tmp.write_text(f"{seq} {digest}\n", encoding="ascii")
        tmp.replace(self._anchor)

    def _read_anchor(self) -> tuple[int, str] | None:
        if not self._anchor.exists():
            return None
        seq, _, digest = self._anchor.read_text(encoding="ascii").strip().partition(" ")
        return int(seq), digest

    # -- storage --------------------------------------------------------------------------------------------------

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        with connect(self._path, schema=_SCHEMA, what="the audit log") as conn:
            yield conn

    def append(
        self,
        *,
        principal: str,
        action: str,
        purpose: str | None = None,
        record_ids: Sequence[str] = (),
        query: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> AuditEvent:
        """Append one event (``query`` is stored as its sha256 only) and move the anchor to it."""
        detail = dict(detail or {})
        qhash = query_hash(query) if query is not None else None
        with self._conn() as conn, immediate(conn):
            last = conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
            seq = (last["seq"] + 1) if last else 1
            prev = last["hash"] if last else GENESIS
            at = datetime.now(UTC).isoformat(timespec="microseconds")
            digest = self._sign(_canonical(seq, at, principal, purpose, action, record_ids, qhash, detail, prev))
            conn.execute(
                "INSERT INTO audit_log (seq, at, principal, purpose, action, record_ids_json, query_sha256, "
                "detail_json, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, at, principal, purpose, action, json.dumps(list(record_ids)), qhash,
                 json.dumps(detail, sort_keys=True), prev, digest),
            )  # fmt: skip
        self._write_anchor(seq, digest)
        return AuditEvent(
            seq=seq,
            at=at,
            principal=principal,
            purpose=purpose,
            action=action,
            record_ids=tuple(record_ids),
            query_sha256=qhash,
            detail=detail,
            prev_hash=prev,
            hash=digest,
        )

    def events(
        self, *, record_id: str | None = None, since: str | None = None, action: str | None = None
    ) -> list[AuditEvent]:
        sql, params = "SELECT * FROM audit_log", []
        where: list[str] = []
        if since:
            where.append("at >= ?")
            params.append(since)
        if action:
            where.append("action = ?")
            params.append(action)
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._conn() as conn:
            rows = conn.execute(sql + " ORDER BY seq", params).fetchall()
        out = [self._event(r) for r in rows]
        if record_id:
            out = [e for e in out if record_id in e.record_ids]
        return out

    @staticmethod
    def _event(r: sqlite3.Row) -> AuditEvent:
        return AuditEvent(
            seq=r["seq"],
            at=r["at"],
            principal=r["principal"],
            purpose=r["purpose"],
            action=r["action"],
            record_ids=tuple(json.loads(r["record_ids_json"])),
            query_sha256=r["query_sha256"],
            detail=json.loads(r["detail_json"]),
            prev_hash=r["prev_hash"],
            hash=r["hash"],
        )

    def verify(self) -> Verification:
        """Walk the chain from the first row; report the first position that fails, or confirm the whole log."""
        with self._conn() as conn:
            rows = conn.execute("SELECT rowid AS physical, * FROM audit_log ORDER BY rowid").fetchall()
        prev = GENESIS
        for position, r in enumerate(rows, 1):
            try:
                event = self._event(r)
            except (json.JSONDecodeError, ValueError) as exc:
                return Verification(False, len(rows), position, f"row is not readable ({type(exc).__name__})")
            if event.seq != position:
                return Verification(
                    False, len(rows), position, f"expected seq {position}, found {event.seq} (row deleted or reordered)"
                )
            if event.prev_hash != prev:
                return Verification(False, len(rows), position, "previous-hash link broken (row deleted or inserted)")
            payload = _canonical(
                event.seq, event.at, event.principal, event.purpose, event.action, event.record_ids,
                event.query_sha256, event.detail, event.prev_hash,
            )  # fmt: skip
            if not hmac.compare_digest(self._sign(payload), event.hash):
                return Verification(False, len(rows), position, "content does not match its signature (row edited)")
            prev = event.hash
        anchor = self._read_anchor()
        if anchor is None:
            if rows:
                return Verification(False, len(rows), 1, "the anchor file is missing")
            return Verification(True, 0)
        seq, digest = anchor
        if seq > len(rows):
            return Verification(
                False, len(rows), len(rows) + 1, f"log ends at {len(rows)} but the anchor is at {seq} (truncated)"
            )
        if seq < 1 or rows[seq - 1]["hash"] != digest:
            return Verification(False, len(rows), max(seq, 1), "the anchored event is not in the chain")
        if seq < len(rows):
            # Signed events after the anchor: a process stopped between its commit and the anchor update. Their
            # signatures verified above (forging them needs the key), so the anchor is moved forward.
            self._write_anchor(len(rows), rows[-1]["hash"])
            return Verification(True, len(rows), note=f"anchor was {len(rows) - seq} event(s) behind; moved forward")
        return Verification(True, len(rows))


# ---------------------------------------------------------------------------------------------- the governed read


_PATIENT_IN_TEXT = re.compile(r"[^\s/\"'(),;:=]+/Patient/[^\s/\"'(),;:=]+")


@dataclass(frozen=True)
class AuditTrail:
    """Audit events as the reader's view names them."""

    events: tuple[AuditEvent, ...]
    view: str
    """``identified`` (data stewards) or ``deidentified`` (administrators: patient ids are pseudonyms)."""


def _renamer(pseudonym: Callable[[str], str], known: frozenset[str]) -> Callable[[Any], Any]:
    """Replace every real patient id inside a value (strings, lists, dicts) by its pseudonym."""
    cache: dict[str, str] = {}

    def alias(patient_id: str) -> str:
        if patient_id not in cache:
            cache[patient_id] = pseudonym(patient_id)
        return cache[patient_id]

    # ids not shaped like <source>/Patient/<id> are found by substring (short ones could occur inside other values)
    odd = sorted(k for k in known if len(k) >= 8 and not _PATIENT_IN_TEXT.fullmatch(k))

    def text(value: str) -> str:
        if value in known:
            return alias(value)
        out = _PATIENT_IN_TEXT.sub(lambda m: alias(m.group(0)), value)
        for real in odd:
            if real in out:
                out = out.replace(real, alias(real))
        return out

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return text(value)
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        return value

    return walk


def read_events(
    log: AuditLog,
    *,
    deidentified: bool,
    pseudonym: Callable[[str], str] | None,
    known_patients: frozenset[str],
    record_ids_of: Callable[[str], set[str]],
    record_id: str | None = None,
    since: str | None = None,
    action: str | None = None,
    patient: str | None = None,
) -> tuple[AuditTrail, str | None]:
    """Events filtered by record, time, action and patient, named as the reader's view does; also returns the real
    patient id behind ``patient`` (for the reader's own audit event).

    In the de-identified view every patient id in an event (its record ids, and any value of its detail) is
    replaced by the patient's pseudonym, and ``patient`` / ``record_id`` name a patient by pseudonym only: a real
    patient id is refused (:class:`ValidationError`), so the log cannot be used to link a pseudonym to a person.
    ``known_patients`` are the store's patient ids; patients already erased are recognised by the shape of their
    id and resolved from the ids the events hold."""
    from sage_health.core.errors import ValidationError
    from sage_health.data.governance.views import PSEUDONYM_PREFIX, is_patient_ref

    events = log.events(since=since, action=action)
    if deidentified and pseudonym is None:
        raise ValidationError("the de-identified view of the audit log needs the de-identification key")

    def resolve(ref: str, what: str) -> str:
        if not deidentified or pseudonym is None:
            return ref
        if ref.startswith(PSEUDONYM_PREFIX):
            candidates = set(known_patients)
            for e in events:
                candidates.update(i for i in e.record_ids if is_patient_ref(i, known_patients))
            for real in sorted(candidates):
                if pseudonym(real) == ref:
                    return real
            return f"unknown-pseudonym:{ref}"  # matches nothing, never everything
        if is_patient_ref(ref, known_patients):
            raise ValidationError(f"{what} takes a patient's pseudonym (pseudo-…) in the de-identified view of the "
                                  "audit log, as `audit show` lists it")  # fmt: skip
        return ref

    real_patient = resolve(patient.strip(), "--patient") if patient else None
    if record_id:
        real_record = resolve(record_id.strip(), "--record")
        events = [e for e in events if real_record in e.record_ids]
    if real_patient:
        ids = {real_patient} | record_ids_of(real_patient)
        events = [e for e in events if ids.intersection(e.record_ids)]
    if deidentified and pseudonym is not None:
        rename = _renamer(pseudonym, known_patients)
        events = [e.model_copy(update={"record_ids": tuple(rename(list(e.record_ids))), "detail": rename(e.detail)})
                  for e in events]  # fmt: skip
    view = "deidentified" if deidentified else "identified"
    return AuditTrail(events=tuple(events), view=view), real_patient
