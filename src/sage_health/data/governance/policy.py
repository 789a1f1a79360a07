"""Principals, purposes of use, patient consent and the one policy engine that decides every access.

Every path that touches patient data — CLI, REST API, agents, evaluations, exports, dataset snapshots — asks
:meth:`PolicyEngine.decide` first, with an :class:`Access` (who, acting for which purpose) and an
:class:`Action`. The answer is a :class:`Decision`: allowed or not (with the reason), the **view** the caller
gets (``identified`` or ``deidentified``), and whether patients who opted out of research must be excluded. The
callers push that exclusion into their queries (store filters), they never fetch and then hide.

The rules (one table, :data:`RULES`):

==================  ==========  ======================================================  ===============
role                purpose     actions                                                 view
==================  ==========  ======================================================  ===============
clinician           treatment   read, search, generate, review                          identified
researcher          research    read, search, export, generate, evaluate, snapshot,     de-identified
                                train, lineage
data_steward        operations  read, search, export, ingest, consent, audit, erase,     identified
                                snapshot, lineage, evaluate
admin               operations  ingest, train, promote, evaluate, audit, principals,    de-identified
                                snapshot, lineage, read, search, generate
==================  ==========  ======================================================  ===============

Consent: a patient's ``research`` opt-out removes them from every **secondary use** — every action under the
``research`` purpose, and export, snapshot, train and evaluate under any purpose. Treatment access is unaffected.
Consent rows are append-only; the latest row whose effective window covers the time asked about decides.

Principals and consent live in the store database (tables ``principals`` and ``consents``). A fresh store has one
built-in principal per role, named after the role, so ``--as researcher --purpose research`` works out of the box.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, get_args

from sage_health.core.errors import PolicyViolation, ValidationError
from sage_health.data.sqlite_tables import connect, immediate

Role = Literal["clinician", "researcher", "data_steward", "admin"]
Purpose = Literal["treatment", "research", "operations"]
View = Literal["identified", "deidentified"]
ConsentDecision = Literal["opt_out", "opt_in"]
ConsentScope = Literal["research"]

ROLES: tuple[Role, ...] = get_args(Role)
PURPOSES: tuple[Purpose, ...] = get_args(Purpose)
CONSENT_SCOPES: tuple[ConsentScope, ...] = get_args(ConsentScope)


class Action(StrEnum):
    READ = "read"
    SEARCH = "search"
    EXPORT = "export"
    GENERATE = "generate"
    EVALUATE = "evaluate"
    INGEST = "ingest"
    REVIEW = "review"
    TRAIN = "train"
    PROMOTE = "promote"
    ERASE = "erase"
    CONSENT = "consent"
    AUDIT = "audit"
    PRINCIPALS = "principals"
    SNAPSHOT = "snapshot"
    LINEAGE = "lineage"


A = Action


@dataclass(frozen=True)
class Rule:
    role: Role
    purpose: Purpose
    actions: frozenset[Action]
    view: View


RULES: tuple[Rule, ...] = (
    Rule("clinician", "treatment", frozenset({A.READ, A.SEARCH, A.GENERATE, A.REVIEW}), "identified"),
    Rule(
        "researcher",
        "research",
        frozenset({A.READ, A.SEARCH, A.EXPORT, A.GENERATE, A.EVALUATE, A.SNAPSHOT, A.TRAIN, A.LINEAGE}),
        "deidentified",
    ),
    Rule(
        "data_steward",
        "operations",
        frozenset(
            {A.READ, A.SEARCH, A.EXPORT, A.INGEST, A.CONSENT, A.AUDIT, A.ERASE, A.SNAPSHOT, A.LINEAGE, A.EVALUATE}
        ),
        "identified",
    ),
    Rule(
        "admin",
        "operations",
        frozenset(
            {
                A.INGEST,
                A.TRAIN,
                A.PROMOTE,
                A.EVALUATE,
                A.AUDIT,
                A.PRINCIPALS,
                A.SNAPSHOT,
                A.LINEAGE,
                A.READ,
                A.SEARCH,
                A.GENERATE,
            }
        ),
        "deidentified",
    ),
)

SECONDARY_USE: frozenset[Action] = frozenset({A.EXPORT, A.SNAPSHOT, A.TRAIN, A.EVALUATE})
"""Actions that are secondary use of patient data whatever the purpose: research opt-outs apply."""

_NAME = re.compile(r"^[a-z][a-z0-9_.-]{1,63}$")


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    active: bool = True
    builtin: bool = False
    created_at: str = ""
    created_by: str | None = None


@dataclass(frozen=True)
class Access:
    """Who is acting, and for which purpose of use."""

    principal: Principal
    purpose: Purpose

    @property
    def label(self) -> str:
        return f"{self.principal.name} ({self.principal.role}, {self.purpose})"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    action: Action
    reason: str
    view: View = "identified"
    exclude_opted_out: bool = False
    """True when patients who opted out of research must be filtered out (inside the query)."""

    def require(self) -> Decision:
        if not self.allowed:
            raise PolicyViolation(self.reason)
        return self


@dataclass(frozen=True)
class ConsentRecord:
    id: int
    patient_id: str
    scope: ConsentScope
    decision: ConsentDecision
    effective_from: str
    effective_until: str | None
    recorded_by: str
    reason: str | None
    recorded_at: str


_SCHEMA = """
CREATE TABLE IF NOT EXISTS principals (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 1,
    builtin INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    created_by TEXT
);
CREATE TABLE IF NOT EXISTS consents (
    id INTEGER PRIMARY KEY,
    patient_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    decision TEXT NOT NULL,
    effective_from TEXT NOT NULL,
    effective_until TEXT,
    recorded_by TEXT NOT NULL,
    reason TEXT,
    recorded_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS consents_patient ON consents(patient_id, id);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _day(value: str | date | datetime | None, *, what: str) -> str | None:
    """An ISO date (``YYYY-MM-DD``) from a date, datetime or string; a clear error otherwise."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    text = str(value).strip()
    try:
        return date.fromisoformat(text[:10]).isoformat()
    except ValueError as exc:
        raise ValidationError(f"{what}: {text!r} is not a date (use YYYY-MM-DD)") from exc


def rule_for(role: Role, purpose: Purpose) -> Rule | None:
    for rule in RULES:
        if rule.role == role and rule.purpose == purpose:
            return rule
    return None


def allowed_purposes(role: str) -> tuple[Purpose, ...]:
    """The purposes a role may act for (the policy table's rows for that role)."""
    return tuple(r.purpose for r in RULES if r.role == role)


class PolicyEngine:
    """The single place access decisions are made; principals and consent are read from the store database."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        with connect(self.db_path, schema=_SCHEMA, what="the principal and consent tables") as conn:
            self._ensure_builtins(conn)
            yield conn

    @staticmethod
    def _ensure_builtins(conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT OR IGNORE INTO principals(name, role, active, builtin, created_at, created_by) "
            "VALUES (?, ?, 1, 1, ?, 'system')",
            [(role, role, _now()) for role in ROLES],
        )

    # ------------------------------------------------------------------ principals
    @staticmethod
    def _principal(row: sqlite3.Row) -> Principal:
        return Principal(
            name=row["name"],
            role=row["role"],
            active=bool(row["active"]),
            builtin=bool(row["builtin"]),
            created_at=row["created_at"],
            created_by=row["created_by"],
        )

    def principals(self) -> list[Principal]:
        with self._conn() as conn:
            return [self._principal(r) for r in conn.execute("SELECT * FROM principals ORDER BY name")]

    def principal(self, name: str) -> Principal:
        """The active principal called ``name``; :class:`PolicyViolation` if unknown or deactivated."""
        with self._conn() as conn:
            row = conn.execute("SELECT * FROM principals WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise PolicyViolation(
                f"unknown principal {name!r}; built-ins are {', '.join(ROLES)} "
                "(add others with `sage-health principals add NAME --role ROLE`)"
            )
        principal = self._principal(row)
        if not principal.active:
            raise PolicyViolation(f"principal {name!r} is deactivated")
        return principal

    def add_principal(self, name: str, role: str, *, by: Access) -> Principal:
        self.decide(by, A.PRINCIPALS).require()
        if role not in ROLES:
            raise ValidationError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        if not _NAME.match(name):
            raise ValidationError(
                f"invalid principal name {name!r}: 2-64 characters, lower-case letters, digits, '_', '.', '-'"
            )
        with self._conn() as conn, immediate(conn):
            exists = conn.execute("SELECT 1 FROM principals WHERE name = ?", (name,)).fetchone()
            if exists is not None:
                raise ValidationError(f"principal {name!r} already exists")
            conn.execute(
                "INSERT INTO principals(name, role, active, builtin, created_at, created_by) VALUES (?, ?, 1, 0, ?, ?)",
                (name, role, _now(), by.principal.name),
            )
        return self.principal(name)

    def set_active(self, name: str, active: bool, *, by: Access) -> Principal:
        self.decide(by, A.PRINCIPALS).require()
        with self._conn() as conn, immediate(conn):
            row = conn.execute("SELECT builtin FROM principals WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise ValidationError(f"unknown principal {name!r}")
            if row["builtin"] and not active:
                raise ValidationError(f"built-in principal {name!r} cannot be deactivated")
            conn.execute("UPDATE principals SET active = ? WHERE name = ?", (int(active), name))
        with self._conn() as conn:
            return self._principal(conn.execute("SELECT * FROM principals WHERE name = ?", (name,)).fetchone())

    def access(self, principal: str, purpose: str | None) -> Access:
        """Resolve ``--as`` / ``--purpose`` into an :class:`Access`; clear errors for a missing or unknown value."""
        return self.access_for(self.principal(principal), purpose)

    @staticmethod
    def access_for(principal: Principal, purpose: str | None) -> Access:
        """An :class:`Access` for an already identified principal; a missing or unknown purpose is a clear error
        (the purpose is always declared, never assumed: it is what the audit log records the access for)."""
        if not purpose:
            allowed = ", ".join(allowed_purposes(principal.role)) or "none"
            raise PolicyViolation(
                f"a purpose of use is required ({', '.join(PURPOSES)}; {principal.role} may act for: {allowed}); "
                "pass --purpose (API: header X-Sage-Purpose)"
            )
        if purpose not in PURPOSES:
            raise PolicyViolation(f"unknown purpose {purpose!r}; purposes: {', '.join(PURPOSES)}")
        p: Purpose = purpose
        return Access(principal=principal, purpose=p)

    # ------------------------------------------------------------------ decisions
    def decide(self, access: Access, action: Action | str) -> Decision:
        act = Action(action)
        role, purpose = access.principal.role, access.purpose
        rule = rule_for(role, purpose)
        if rule is None:
            allowed_purposes = [r.purpose for r in RULES if r.role == role]
            return Decision(
                allowed=False,
                action=act,
                reason=f"{access.principal.name} ({role}) may not act for purpose {purpose!r}; "
                f"allowed: {', '.join(allowed_purposes)}",
            )
        if act not in rule.actions:
            return Decision(
                allowed=False,
                action=act,
                reason=f"{access.principal.name} ({role}, {purpose}) may not {act.value}; "
                f"allowed: {', '.join(sorted(a.value for a in rule.actions))}",
                view=rule.view,
            )
        exclude = purpose == "research" or act in SECONDARY_USE
        return Decision(
            allowed=True,
            action=act,
            reason=f"{role} acting for {purpose} may {act.value}",
            view=rule.view,
            exclude_opted_out=exclude,
        )

    # ------------------------------------------------------------------ consent
    def record_consent(
        self,
        patient_id: str,
        decision: ConsentDecision,
        *,
        by: Access,
        scope: ConsentScope = "research",
        effective_from: str | date | None = None,
        effective_until: str | date | None = None,
        reason: str | None = None,
    ) -> ConsentRecord:
        return self.import_consents(
            [
                {
                    "patient_id": patient_id,
                    "scope": scope,
                    "decision": decision,
                    "effective_from": effective_from,
                    "effective_until": effective_until,
                    "reason": reason,
                }
            ],
            by=by,
        )[0]

    def import_consents(self, rows: Sequence[dict[str, Any]], *, by: Access, where: str = "") -> list[ConsentRecord]:
        """Validate every row first, then store them all in one transaction (all or nothing)."""
        self.decide(by, A.CONSENT).require()
        clean: list[tuple[str, str, str, str, str | None, str | None]] = []
        for i, row in enumerate(rows, start=1):
            at = f"{where}row {i}" if where else f"consent row {i}"
            if not isinstance(row, dict):
                raise ValidationError(f"{at}: expected an object with patient_id, decision, scope")
            patient = str(row.get("patient_id") or "").strip()
            if not patient:
                raise ValidationError(f"{at}: patient_id is missing")
            decision = str(row.get("decision") or "").strip().replace("-", "_")
            if decision not in ("opt_out", "opt_in"):
                raise ValidationError(f"{at}: decision must be opt_out or opt_in, got {decision or 'nothing'!r}")
            scope = str(row.get("scope") or "research").strip()
            if scope not in CONSENT_SCOPES:
                raise ValidationError(f"{at}: unknown scope {scope!r}; scopes: {', '.join(CONSENT_SCOPES)}")
            start = _day(row.get("effective_from"), what=f"{at}: effective_from") or date.today().isoformat()
            end = _day(row.get("effective_until"), what=f"{at}: effective_until")
            if end is not None and end <= start:
                raise ValidationError(f"{at}: effective_until {end} is not after effective_from {start}")
            reason = row.get("reason")
            clean.append((patient, scope, decision, start, end, str(reason) if reason else None))
        now = _now()
        ids: list[int] = []
        with self._conn() as conn, immediate(conn):
            for patient, scope, decision, start, end, reason in clean:
                cur = conn.execute(
                    "INSERT INTO consents(patient_id, scope, decision, effective_from, effective_until, recorded_by, "
                    "reason, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (patient, scope, decision, start, end, by.principal.name, reason, now),
                )
                ids.append(int(cur.lastrowid or 0))
        with self._conn() as conn:
            marks = ",".join("?" * len(ids))
            return [self._consent(r) for r in conn.execute(f"SELECT * FROM consents WHERE id IN ({marks})", ids)]

    @staticmethod
    def _consent(row: sqlite3.Row) -> ConsentRecord:
        return ConsentRecord(
            id=row["id"],
            patient_id=row["patient_id"],
            scope=row["scope"],
            decision=row["decision"],
            effective_from=row["effective_from"],
            effective_until=row["effective_until"],
            recorded_by=row["recorded_by"],
            reason=row["reason"],
            recorded_at=row["recorded_at"],
        )

    def consents(self, patient_id: str | None = None) -> list[ConsentRecord]:
        with self._conn() as conn:
            if patient_id:
                rows = conn.execute("SELECT * FROM consents WHERE patient_id = ? ORDER BY id", (patient_id,))
            else:
                rows = conn.execute("SELECT * FROM consents ORDER BY id")
            return [self._consent(r) for r in rows]

    def opted_out(self, *, at: date | None = None, scope: ConsentScope = "research") -> tuple[str, ...]:
        """Patients whose latest consent row in effect on ``at`` (default today) is an opt-out, sorted."""
        day = (at or date.today()).isoformat()
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT patient_id, decision FROM consents WHERE scope = ? AND effective_from <= ? "
                "AND (effective_until IS NULL OR effective_until > ?) ORDER BY id",
                (scope, day, day),
            ).fetchall()
        latest: dict[str, str] = {}
        for row in rows:
            latest[row["patient_id"]] = row["decision"]
        return tuple(sorted(p for p, d in latest.items() if d == "opt_out"))


def read_consent_file(path: Path) -> list[dict[str, Any]]:
    """Consent rows from a CSV (header ``patient_id,decision[,scope,effective_from,effective_until,reason]``),
    a JSON list or JSON lines file. Raises :class:`ValidationError` naming the file and the problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"{path}: cannot read the consent file: {type(exc).__name__}") from exc
    if not text.strip():
        raise ValidationError(f"{path}: the consent file is empty")
    rows: list[dict[str, Any]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "patient_id" not in reader.fieldnames or "decision" not in reader.fieldnames:
            raise ValidationError(f"{path}: the CSV header must name patient_id and decision")
        rows = [dict(r) for r in reader]
    elif path.suffix.lower() == ".jsonl":
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValidationError(f"{path}: line {n} is not valid JSON ({exc.msg})") from exc
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc
        if not isinstance(data, list):
            raise ValidationError(f"{path}: expected a JSON list of consent objects")
        rows = data
    return rows


def audit_record_ids(ids: Iterable[str], limit: int = 1000) -> list[str]:
    """Record ids for an audit event, de-duplicated in order, capped (the event notes the total)."""
    return list(dict.fromkeys(ids))[:limit]
