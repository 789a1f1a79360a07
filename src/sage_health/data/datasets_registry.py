"""The dataset snapshot registry (table ``dataset_snapshots``), look-ups by ``NAME[@HASH]``, and the snapshots' share of
an erasure (:class:`SnapshotErasureHook`)."""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sage_health.core.config import Settings
from sage_health.core.errors import RecordNotFoundError, StoreError, ValidationError
from sage_health.core.hashing import canonical_json, sha256_text
from sage_health.data.datasets_types import _HASH, ERASURE_NOTE, SPLITS, SnapshotInfo, check_name
from sage_health.data.governance.hooks import ErasureScope, HookReport
from sage_health.data.governance.lineage import LineageStore, snapshot_node
from sage_health.data.sqlite_tables import connect, immediate

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dataset_snapshots (
    name TEXT NOT NULL,
    hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    purpose TEXT,
    task TEXT NOT NULL,
    selector TEXT NOT NULL,
    params_json TEXT NOT NULL,
    counts_json TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (name, hash)
);
"""

# ---------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class _Registry:
    settings: Settings

    def _conn(self) -> AbstractContextManager[sqlite3.Connection]:
        return connect(self.settings.db_path, schema=_SCHEMA, what="the dataset snapshot registry")

    def add(self, info: SnapshotInfo) -> None:
        rel = os.path.relpath(info.path, self.settings.store)
        with self._conn() as conn, immediate(conn):
            conn.execute(
                "INSERT OR IGNORE INTO dataset_snapshots(name, hash, created_at, created_by, purpose, task, selector, "
                "params_json, counts_json, path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (info.name, info.hash, info.created_at, info.created_by, info.purpose, info.task, info.selector,
                 canonical_json(info.params), canonical_json(info.counts), rel),
            )  # fmt: skip

    def rows(self, name: str | None = None) -> list[sqlite3.Row]:
        sql = "SELECT * FROM dataset_snapshots"
        params: list[str] = []
        if name is not None:
            sql += " WHERE name = ?"
            params.append(name)
        with self._conn() as conn:
            rows: list[sqlite3.Row] = conn.execute(sql + " ORDER BY created_at DESC, rowid DESC", params).fetchall()
        return rows

    def info(self, row: sqlite3.Row, lineage: LineageStore) -> SnapshotInfo:
        path = Path(row["path"])
        taint = lineage.taint_of(snapshot_node(row["name"], row["hash"]))
        return SnapshotInfo(
            name=row["name"],
            hash=row["hash"],
            path=path if path.is_absolute() else self.settings.store / path,
            created_at=row["created_at"],
            created_by=row["created_by"],
            purpose=row["purpose"],
            task=row["task"],
            selector=row["selector"],
            params=json.loads(row["params_json"]),
            counts=json.loads(row["counts_json"]),
            taint=taint.reason if taint is not None else None,
        )


def list_snapshots(settings: Settings, *, name: str | None = None) -> list[SnapshotInfo]:
    """Every registered snapshot (of ``name`` when given), newest first, with its taint."""
    registry, lineage = _Registry(settings), LineageStore(settings.db_path)
    return [registry.info(r, lineage) for r in registry.rows(name)]


def get_snapshot(settings: Settings, ref: str) -> SnapshotInfo:
    """``NAME`` (the newest version) or ``NAME@HASH`` (a unique hash prefix of at least 4 digits is enough)."""
    name, _, digest = (ref or "").strip().partition("@")
    check_name(name)
    if digest and not _HASH.match(digest):
        raise ValidationError(f"invalid snapshot hash {digest!r}: 4-64 lower-case hex digits")
    versions = list_snapshots(settings, name=name)
    if not versions:
        raise RecordNotFoundError(f"no dataset snapshot named {name!r}; see `sage-health dataset list`")
    if not digest:
        return versions[0]
    found = [v for v in versions if v.hash.startswith(digest)]
    if not found:
        raise RecordNotFoundError(
            f"dataset {name!r} has no version {digest!r}; versions: {', '.join(v.hash for v in versions)}"
        )
    if len(found) > 1:
        raise ValidationError(f"hash prefix {digest!r} matches {len(found)} versions of {name!r}; give more digits")
    return found[0]


class SnapshotErasureHook:
    """Erasure of snapshot files: every registered snapshot among the scope's tainted nodes (the snapshots holding
    one of the patient's records) loses its item files (``train``/``val``/``test.jsonl``, which hold the items
    themselves). A snapshot is content-addressed and immutable, so its files are deleted rather than rewritten
    without the patient; the manifest and datasheet (counts, parameters, no item content) stay, with an
    ``ERASURE.json`` beside them recording what was removed (counts, reason hash, path hashes). The registry row
    stays too, tainted: the snapshot is listed, cannot be exported or trained on, and a new one replaces it.
    Idempotent: files already gone are not counted again."""

    name = "dataset_snapshots"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def erase(self, scope: ErasureScope) -> HookReport:
        wanted = {n for n in scope.tainted if n.startswith("snapshot:")}
        if not wanted:
            return HookReport(hook=self.name, removed={"snapshots": 0, "snapshot_files": 0})
        registry, lineage = _Registry(self._settings), LineageStore(self._settings.db_path)
        infos = [registry.info(r, lineage) for r in registry.rows()]
        removed: list[str] = []
        touched = 0
        for info in infos:
            if snapshot_node(info.name, info.hash) not in wanted:
                continue
            gone = [info.path / f"{s}.jsonl" for s in SPLITS if (info.path / f"{s}.jsonl").exists()]
            if not gone:
                continue
            touched += 1
            try:
                for path in gone:
                    path.unlink()
                note = info.path / ERASURE_NOTE
                entries = json.loads(note.read_text(encoding="utf-8")) if note.is_file() else []
                entries.append({"at": datetime.now(UTC).isoformat(timespec="seconds"),
                                "reason_sha256": scope.reason_sha256,
                                "files_removed": [p.name for p in gone],
                                "files_sha256": [sha256_text(str(p.resolve())) for p in gone]})  # fmt: skip
                note.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
            except (OSError, json.JSONDecodeError) as exc:
                raise StoreError(
                    f"erasure: cannot remove the item files of snapshot {info.ref} ({type(exc).__name__}); "
                    "fix the folder's permissions and erase again"
                ) from exc
            removed += [sha256_text(str(p.resolve())) for p in gone]
        return HookReport(hook=self.name, removed={"snapshots": touched, "snapshot_files": len(removed)},
                          files_sha256=tuple(removed))  # fmt: skip
