"""The model registry: every model version, where it came from, how it scored, and who put it in production.

Stored in the store's own SQLite database (tables ``model_versions``, ``model_evaluations``,
``model_events``), so a model's lineage sits beside the data snapshot it was trained on.

Stages: ``candidate`` → ``production`` → ``archived``. One production version per model name. Gates:

- a candidate is promoted only if it has an evaluation on **every evaluation set the current production
  version was evaluated on** (otherwise there is nothing to compare and promotion is refused);
- every stage change is an event with actor, reason and time; ``rollback`` restores the version that was
  production before the current one.

Taint (data erased after a model was trained on it, see :mod:`sage_health.data.governance.lineage`) is
inherited: a version is tainted by its own mark, by its dataset snapshot's mark, or by the taint of the adapter it
was continued from (``config["parent"]``), transitively. A tainted version cannot be promoted or rolled back to,
and :meth:`ModelRegistry.demote_tainted` takes a tainted production version out of service (restoring the newest
earlier production version that is not tainted, if any).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sage_health.core.errors import RegistryError
from sage_health.core.hashing import sha256_file
from sage_health.data.governance.lineage import Edge, LineageStore, model_node
from sage_health.data.sqlite_tables import connect, immediate

Stage = Literal["candidate", "production", "archived"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_versions (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    backend TEXT NOT NULL,
    base_model TEXT,
    adapter_path TEXT,
    adapter_sha256 TEXT,
    dataset_snapshot_id TEXT,
    config_json TEXT NOT NULL DEFAULT '{}',
    stage TEXT NOT NULL DEFAULT 'candidate' CHECK (stage IN ('candidate', 'production', 'archived')),
    description TEXT,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    promoted_by TEXT,
    promoted_at TEXT,
    seq INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE UNIQUE INDEX IF NOT EXISTS one_production ON model_versions(name) WHERE stage = 'production';
CREATE TABLE IF NOT EXISTS model_evaluations (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    eval_set TEXT NOT NULL,
    run_id TEXT NOT NULL,
    metrics_json TEXT NOT NULL,
    report_path TEXT,
    created_at TEXT NOT NULL,
    FOREIGN KEY (name, version) REFERENCES model_versions(name, version)
);
CREATE INDEX IF NOT EXISTS model_evaluations_model ON model_evaluations(name, version, eval_set);
CREATE TABLE IF NOT EXISTS model_events (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    action TEXT NOT NULL,
    from_stage TEXT,
    to_stage TEXT,
    actor TEXT NOT NULL,
    reason TEXT,
    at TEXT NOT NULL
);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Evaluation(BaseModel):
    model_config = ConfigDict(frozen=True)

    eval_set: str
    run_id: str
    metrics: dict[str, Any]
    report_path: str | None = None
    created_at: str


class ModelVersion(BaseModel):
    """One registered model version with its lineage and evaluations."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    backend: str
    base_model: str | None = None
    adapter_path: str | None = None
    adapter_sha256: str | None = None
    dataset_snapshot_id: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    stage: Stage = "candidate"
    description: str | None = None
    created_at: str
    created_by: str
    promoted_by: str | None = None
    promoted_at: str | None = None
    evaluations: tuple[Evaluation, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def metrics_for(self, eval_set: str) -> dict[str, Any] | None:
        """Metrics of the newest evaluation on ``eval_set`` (None when never evaluated there)."""
        found = [e for e in self.evaluations if e.eval_set == eval_set]
        return found[-1].metrics if found else None


class ModelEvent(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    action: str
    from_stage: str | None
    to_stage: str | None
    actor: str
    reason: str | None
    at: str


@dataclass(frozen=True)
class Demotion:
    """A tainted production version taken out of service."""

    demoted: str
    """The tainted version (now ``archived``)."""
    restored: str | None
    """The earlier, untainted production version put back in production (``None``: no production left)."""
    taint: str


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``name`` or ``name@version``."""
    name, _, version = ref.partition("@")
    if not name:
        raise RegistryError(f"invalid model reference {ref!r}: use NAME or NAME@VERSION")
    return name, version or None


class ModelRegistry:
    """Registry over the store database at ``db_path`` (created if missing)."""

    def __init__(self, db_path: Path) -> None:
        self._path = db_path
        with self._conn():
            pass  # creates the tables

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        with connect(self._path, schema=_SCHEMA, what="the model registry") as conn:
            yield conn

    @contextmanager
    def _txn(self) -> Iterator[sqlite3.Connection]:
        with self._conn() as conn, immediate(conn):
            yield conn

    # -- writes -------------------------------------------------------------------------------------
    def register(
        self,
        name: str,
        *,
        backend: str,
        version: str | None = None,
        base_model: str | None = None,
        adapter_path: Path | None = None,
        dataset_snapshot_id: str | None = None,
        config: Mapping[str, Any] | None = None,
        description: str | None = None,
        actor: str = "cli",
        inputs: Sequence[tuple[str, str]] = (),
    ) -> ModelVersion:
        """Add a new ``candidate`` version (``version`` defaults to the next integer).

        ``inputs`` are lineage edges ``(parent node, relation)`` into the new version's node (e.g. the image
        records an image model was trained on), written in the same transaction so a registered model never
        lacks its lineage."""
        if not name or "@" in name or "/" in name:
            raise RegistryError(f"invalid model name {name!r}: use letters, digits, '-', '_' and '.'")
        adapter_sha = None
        if adapter_path is not None:
            weights = adapter_path / "adapter_model.safetensors"
            if not weights.is_file():
                raise RegistryError(f"{adapter_path} has no adapter_model.safetensors: is it a LoRA adapter folder?")
            adapter_sha = sha256_file(weights)
        with self._txn() as conn:
            seq = int(
                conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM model_versions WHERE name=?", (name,)).fetchone()[0]
            )
            version = version or str(seq)
            if conn.execute("SELECT 1 FROM model_versions WHERE name=? AND version=?", (name, version)).fetchone():
                raise RegistryError(f"{name}@{version} is already registered: pick another version")
            now = _now()
            conn.execute(
                "INSERT INTO model_versions(name, version, backend, base_model, adapter_path, adapter_sha256,"
                " dataset_snapshot_id, config_json, stage, description, created_at, created_by, seq)"
                " VALUES (?,?,?,?,?,?,?,?,'candidate',?,?,?,?)",
                (
                    name,
                    version,
                    backend,
                    base_model,
                    str(adapter_path) if adapter_path else None,
                    adapter_sha,
                    dataset_snapshot_id,
                    json.dumps(dict(config or {}), sort_keys=True),
                    description,
                    now,
                    actor,
                    seq,
                ),
            )
            self._event(conn, name, version, "register", None, "candidate", actor, description)
            if inputs:
                node = model_node(name, version)
                LineageStore(self._path).add((Edge(parent, node, relation) for parent, relation in inputs), conn=conn)
        return self.get(name, version)

    def ensure(self, name: str, *, backend: str, version: str, **kwargs: Any) -> ModelVersion:
        """Register ``name@version`` unless it exists (idempotent; used for built-in base models)."""
        existing = self._find(name, version)
        return existing if existing is not None else self.register(name, backend=backend, version=version, **kwargs)

    def record_evaluation(
        self,
        name: str,
        version: str,
        *,
        eval_set: str,
        run_id: str,
        metrics: Mapping[str, Any],
        report_path: str | None = None,
    ) -> None:
        self.get(name, version)
        with self._txn() as conn:
            conn.execute(
                "INSERT INTO model_evaluations(name, version, eval_set, run_id, metrics_json, report_path, created_at)"
                " VALUES (?,?,?,?,?,?,?)",
                (name, version, eval_set, run_id, json.dumps(dict(metrics), sort_keys=True), report_path, _now()),
            )

    def promote(self, name: str, version: str, *, actor: str, reason: str | None = None) -> ModelVersion:
        """Make ``name@version`` production (the previous production version is archived)."""
        candidate = self.get(name, version)
        if candidate.stage == "production":
            raise RegistryError(f"{candidate.ref} is already in production")
        taint = self.taint(candidate)
        if taint is not None:
            raise RegistryError(f"refusing to promote {candidate.ref}: it is tainted ({taint}); retrain it first")
        current = self.production(name)
        if current is not None:
            required = sorted({e.eval_set for e in current.evaluations})
            missing = [s for s in required if candidate.metrics_for(s) is None]
            if missing:
                raise RegistryError(
                    f"refusing to promote {candidate.ref}: it has no evaluation on {', '.join(missing)}, the "
                    f"evaluation set(s) of production {current.ref}; run `sage-health eval` on the same test file "
                    "first"
                )
        with self._txn() as conn:
            if current is not None:
                self._move(conn, name, current.version, "archive", "production", "archived", actor, reason)
            self._move(conn, name, version, "promote", candidate.stage, "production", actor, reason)
        return self.get(name, version)

    def taint(self, mv: ModelVersion) -> str | None:
        """Why ``mv`` is tainted, or ``None``: its own mark, its dataset snapshot's mark (after an erasure), or
        the taint of the adapter it was continued from (transitively)."""
        return self._taint(mv, LineageStore(self._path), seen=set())

    def _taint(self, mv: ModelVersion, lineage: LineageStore, *, seen: set[str]) -> str | None:
        seen.add(mv.ref)
        own = lineage.taint_of(model_node(mv.name, mv.version))
        if own is not None:
            return own.reason
        if mv.dataset_snapshot_id:
            snap = lineage.taint_of(f"snapshot:{mv.dataset_snapshot_id}")
            if snap is not None:
                return f"snapshot {mv.dataset_snapshot_id}: {snap.reason}"
        parent = self.parent_of(mv)
        if parent is not None and parent.ref not in seen:
            why = self._taint(parent, lineage, seen=seen)
            if why is not None:
                return f"continued from {parent.ref}, which is tainted: {why}"
        return None

    def parent_of(self, mv: ModelVersion) -> ModelVersion | None:
        """The registered version ``mv``'s adapter was continued from (``config["parent"]``), if any."""
        ref = mv.config.get("parent")
        if not isinstance(ref, str) or not ref:
            return None
        name, version = parse_ref(ref)
        return self.find(name, version) if version else None

    def rollback(self, name: str, *, actor: str, reason: str | None = None) -> ModelVersion:
        """Restore the version that was production before the current one; the current one is archived."""
        current = self.production(name)
        if current is None:
            raise RegistryError(f"{name} has no production version to roll back")
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT version FROM model_events WHERE name=? AND action='promote' AND version != ? ORDER BY id DESC",
                (name, current.version),
            ).fetchall()
        previous = next((r["version"] for r in rows if self.get(name, r["version"]).stage == "archived"), None)
        if previous is None:
            raise RegistryError(f"{name} has no earlier production version to roll back to")
        target = self.get(name, previous)
        taint = self.taint(target)
        if taint is not None:
            raise RegistryError(
                f"refusing to roll {name} back to {target.ref}: it is tainted ({taint}); promote an untainted "
                "version or retrain"
            )
        with self._txn() as conn:
            self._move(conn, name, current.version, "rollback", "production", "archived", actor, reason)
            self._move(conn, name, previous, "restore", "archived", "production", actor, reason)
        return self.get(name, previous)

    def demote_tainted(self, name: str, *, actor: str, reason: str | None = None) -> Demotion | None:
        """Take a tainted production version of ``name`` out of service: it is archived, and the newest earlier
        production version that is not tainted (if any) is restored; ``None`` when production is not tainted (or
        there is none). Idempotent."""
        current = self.production(name)
        if current is None:
            return None
        taint = self.taint(current)
        if taint is None:
            return None
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT version FROM model_events WHERE name=? AND to_stage='production' AND version != ? "
                "ORDER BY id DESC",
                (name, current.version),
            ).fetchall()
        restored: ModelVersion | None = None
        for version in dict.fromkeys(r["version"] for r in rows):
            earlier = self.get(name, version)
            if earlier.stage == "archived" and self.taint(earlier) is None:
                restored = earlier
                break
        why = reason or f"tainted: {taint}"
        with self._txn() as conn:
            self._move(conn, name, current.version, "demote", "production", "archived", actor, why)
            if restored is not None:
                self._move(conn, name, restored.version, "restore", "archived", "production", actor, why)
        return Demotion(demoted=current.ref, restored=restored.ref if restored else None, taint=taint)

    def archive(self, name: str, version: str, *, actor: str, reason: str | None = None) -> ModelVersion:
        mv = self.get(name, version)
        if mv.stage == "production":
            raise RegistryError(f"{mv.ref} is in production: promote another version or roll back first")
        if mv.stage == "archived":
            raise RegistryError(f"{mv.ref} is already archived")
        with self._txn() as conn:
            self._move(conn, name, version, "archive", mv.stage, "archived", actor, reason)
        return self.get(name, version)

    @classmethod
    def _move(
        cls,
        conn: sqlite3.Connection,
        name: str,
        version: str,
        action: str,
        from_stage: str,
        to_stage: Stage,
        actor: str,
        reason: str | None,
    ) -> None:
        """Change a version's stage (recording who promoted it when it enters production) and log the event."""
        if to_stage == "production":
            conn.execute(
                "UPDATE model_versions SET stage='production', promoted_by=?, promoted_at=? WHERE name=? AND version=?",
                (actor, _now(), name, version),
            )
        else:
            conn.execute("UPDATE model_versions SET stage=? WHERE name=? AND version=?", (to_stage, name, version))
        cls._event(conn, name, version, action, from_stage, to_stage, actor, reason)

    @staticmethod
    def _event(
        conn: sqlite3.Connection,
        name: str,
        version: str,
        action: str,
        from_stage: str | None,
        to_stage: str | None,
        actor: str,
        reason: str | None,
    ) -> None:
        conn.execute(
            "INSERT INTO model_events(name, version, action, from_stage, to_stage, actor, reason, at)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (name, version, action, from_stage, to_stage, actor, reason, _now()),
        )

    # -- reads --------------------------------------------------------------------------------------
    def _find(self, name: str, version: str) -> ModelVersion | None:
        with self._conn() as conn:
            row = conn.execute("SELECT * FROM model_versions WHERE name=? AND version=?", (name, version)).fetchone()
            if row is None:
                return None
            evals = conn.execute(
                "SELECT * FROM model_evaluations WHERE name=? AND version=? ORDER BY id", (name, version)
            ).fetchall()
        return ModelVersion(
            name=row["name"],
            version=row["version"],
            backend=row["backend"],
            base_model=row["base_model"],
            adapter_path=row["adapter_path"],
            adapter_sha256=row["adapter_sha256"],
            dataset_snapshot_id=row["dataset_snapshot_id"],
            config=json.loads(row["config_json"]),
            stage=row["stage"],
            description=row["description"],
            created_at=row["created_at"],
            created_by=row["created_by"],
            promoted_by=row["promoted_by"],
            promoted_at=row["promoted_at"],
            evaluations=tuple(
                Evaluation(
                    eval_set=e["eval_set"],
                    run_id=e["run_id"],
                    metrics=json.loads(e["metrics_json"]),
                    report_path=e["report_path"],
                    created_at=e["created_at"],
                )
                for e in evals
            ),
        )

    def find(self, name: str, version: str) -> ModelVersion | None:
        """``name@version``, or ``None`` when it is not registered."""
        return self._find(name, version)

    def get(self, name: str, version: str) -> ModelVersion:
        found = self._find(name, version)
        if found is None:
            raise RegistryError(f"unknown model {name}@{version}: see `sage-health models list`")
        return found

    def production(self, name: str) -> ModelVersion | None:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT version FROM model_versions WHERE name=? AND stage='production'", (name,)
            ).fetchone()
        return self.get(name, row["version"]) if row else None

    def resolve(self, ref: str) -> ModelVersion:
        """``name@version``, or ``name``: its production version, else its newest version."""
        name, version = parse_ref(ref)
        if version is not None:
            return self.get(name, version)
        prod = self.production(name)
        if prod is not None:
            return prod
        with self._conn() as conn:
            row = conn.execute(
                "SELECT version FROM model_versions WHERE name=? ORDER BY seq DESC LIMIT 1", (name,)
            ).fetchone()
        if row is None:
            raise RegistryError(f"unknown model {name!r}: see `sage-health models list`")
        return self.get(name, row["version"])

    def list_versions(self, name: str | None = None) -> list[ModelVersion]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT name, version FROM model_versions WHERE (? IS NULL OR name = ?) ORDER BY name, seq",
                (name, name),
            ).fetchall()
        return [self.get(r["name"], r["version"]) for r in rows]

    def trained_on(self, snapshot_id: str) -> list[ModelVersion]:
        """Versions whose training dataset snapshot is ``snapshot_id`` (``NAME@HASH``)."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT name, version FROM model_versions WHERE dataset_snapshot_id = ? ORDER BY name, seq",
                (snapshot_id,),
            ).fetchall()
        return [self.get(r["name"], r["version"]) for r in rows]

    def continued_from(self, ref: str) -> list[ModelVersion]:
        """Versions whose adapter was continued from ``ref`` (``NAME@VERSION``): its children in the lineage."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT name, version FROM model_versions WHERE json_extract(config_json, '$.parent') = ? "
                "ORDER BY name, seq",
                (ref,),
            ).fetchall()
        return [self.get(r["name"], r["version"]) for r in rows]

    def events(self, name: str) -> list[ModelEvent]:
        with self._conn() as conn:
            rows = conn.execute("SELECT * FROM model_events WHERE name=? ORDER BY id", (name,)).fetchall()
        return [
            ModelEvent(
                name=r["name"],
                version=r["version"],
                action=r["action"],
                from_stage=r["from_stage"],
                to_stage=r["to_stage"],
                actor=r["actor"],
                reason=r["reason"],
                at=r["at"],
            )
            for r in rows
        ]
