"""Lineage edges between artifacts, and taint marks (table ``lineage_edges`` and ``taints`` in the store database).

Most lineage is already in the data: a record's provenance names its source file and ingest run; chunks and
vectors belong to records; a signed report's provenance ``derived_from`` lists the evidence it cites; a model
version names its dataset snapshot. What is *not* in a row of its own — which records went into a dataset
snapshot, which records trained a model — is written here as explicit edges ``parent → child``. Node ids are
prefixed by kind so one walk crosses kinds: ``file:<path>``, ``record:<id>``, ``snapshot:<name>@<hash>``,
``model:<name>@<version>``, ``run:<run id>``.

A **taint** marks a snapshot or model version built from data that was later erased: it stays visible
(``models list``, ``dataset list``) and blocks promotion until a retrained version replaces it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sage_health.data.sqlite_tables import connect, immediate

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lineage_edges (
    parent TEXT NOT NULL,
    child TEXT NOT NULL,
    relation TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (parent, child, relation)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS lineage_child ON lineage_edges(child);
CREATE TABLE IF NOT EXISTS taints (
    node TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    erasure_event INTEGER,
    created_at TEXT NOT NULL
);
"""


def record_node(record_id: str) -> str:
    return f"record:{record_id}"


def snapshot_node(name: str, digest: str) -> str:
    return f"snapshot:{name}@{digest}"


def model_node(name: str, version: str) -> str:
    return f"model:{name}@{version}"


@dataclass(frozen=True)
class Edge:
    parent: str
    child: str
    relation: str


@dataclass(frozen=True)
class Taint:
    node: str
    reason: str
    erasure_event: int | None
    created_at: str


class LineageStore:
    """Explicit lineage edges and taint marks. Cheap to construct; each call opens a short-lived connection."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        with connect(self.db_path, schema=_SCHEMA, what="the lineage tables") as conn:
            yield conn

    def add(self, edges: Iterable[Edge], *, conn: sqlite3.Connection | None = None) -> int:
        """Add edges (duplicates ignored); inside ``conn``'s transaction when given, else in one of its own."""
        rows = [(e.parent, e.child, e.relation, datetime.now(UTC).isoformat(timespec="seconds")) for e in edges]
        sql = "INSERT OR IGNORE INTO lineage_edges(parent, child, relation, created_at) VALUES (?, ?, ?, ?)"
        if conn is not None:
            for statement in _SCHEMA.split(";"):  # executescript would commit the caller's transaction
                if statement.strip():
                    conn.execute(statement)
            return conn.executemany(sql, rows).rowcount
        with self._conn() as own, immediate(own):
            return own.executemany(sql, rows).rowcount

    def children(self, node: str) -> list[Edge]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT parent, child, relation FROM lineage_edges WHERE parent = ? ORDER BY child", (node,)
            ).fetchall()
        return [Edge(r[0], r[1], r[2]) for r in rows]

    def parents(self, node: str) -> list[Edge]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT parent, child, relation FROM lineage_edges WHERE child = ? ORDER BY parent", (node,)
            ).fetchall()
        return [Edge(r[0], r[1], r[2]) for r in rows]

    def children_of_any(self, nodes: Sequence[str]) -> list[Edge]:
        out: list[Edge] = []
        with self._conn() as conn:
            for i in range(0, len(nodes), 500):
                part = list(nodes[i : i + 500])
                marks = ",".join("?" * len(part))
                rows = conn.execute(
                    f"SELECT parent, child, relation FROM lineage_edges WHERE parent IN ({marks})", part
                ).fetchall()
                out.extend(Edge(r[0], r[1], r[2]) for r in rows)
        return out

    def descendants(self, nodes: Sequence[str], *, max_nodes: int = 100_000) -> set[str]:
        """Every node reachable from ``nodes`` by explicit edges (not including ``nodes`` themselves)."""
        seen: set[str] = set()
        frontier = list(dict.fromkeys(nodes))
        while frontier and len(seen) < max_nodes:
            nxt = [e.child for e in self.children_of_any(frontier) if e.child not in seen]
            seen.update(nxt)
            frontier = list(dict.fromkeys(nxt))
        return seen

    # ------------------------------------------------------------------ taints
    def taint(self, nodes: Iterable[str], reason: str, *, erasure_event: int | None = None) -> int:
        rows = [(n, reason, erasure_event, datetime.now(UTC).isoformat(timespec="seconds")) for n in nodes]
        with self._conn() as conn, immediate(conn):
            return conn.executemany(
                "INSERT OR IGNORE INTO taints(node, reason, erasure_event, created_at) VALUES (?, ?, ?, ?)", rows
            ).rowcount

    def taint_of(self, node: str) -> Taint | None:
        with self._conn() as conn:
            row = conn.execute("SELECT * FROM taints WHERE node = ?", (node,)).fetchone()
        return Taint(row["node"], row["reason"], row["erasure_event"], row["created_at"]) if row else None

    def taints(self) -> list[Taint]:
        with self._conn() as conn:
            rows = conn.execute("SELECT * FROM taints ORDER BY created_at, node").fetchall()
        return [Taint(r["node"], r["reason"], r["erasure_event"], r["created_at"]) for r in rows]


# ---------------------------------------------------------------------------------------------------------- walks


@dataclass(frozen=True)
class LineageNode:
    node: str
    """``file:…``, ``record:…``, ``chunks:<record id>``, ``snapshot:…``, ``model:…``, ``run:…``."""
    relation: str
    detail: str = ""
    children: tuple[LineageNode, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {"node": self.node, "relation": self.relation, "detail": self.detail,
                "children": [c.as_dict() for c in self.children]}  # fmt: skip


def _has(conn: sqlite3.Connection, table: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone() is not None


def walk(conn: sqlite3.Connection, lineage: LineageStore, start: str, *, up: bool, depth: int = 4) -> LineageNode:
    """The lineage tree of ``start`` (a record id, ``file:PATH``, ``snapshot:NAME@HASH`` or ``model:NAME@VER``).

    Down: file → records → chunks and vectors, snapshots, model versions, generated reports and agent runs that
    cite the record. Up: generated report → cited evidence records and model; model → snapshot → records;
    record → source file and ingest run. Lists are capped at 50 entries per node (the count is in ``detail``)."""
    node = start if ":" in start.split("/")[0] else record_node(start)
    return _walk(conn, lineage, node, "start", up=up, depth=depth, seen=set())


def _cap(items: list[str], limit: int = 50) -> tuple[list[str], str]:
    return items[:limit], (f"{len(items)} in all, first {limit} shown" if len(items) > limit else "")


def _walk(
    conn: sqlite3.Connection, lineage: LineageStore, node: str, relation: str, *, up: bool, depth: int, seen: set[str]
) -> LineageNode:
    if node in seen or depth < 0:
        return LineageNode(node, relation, "seen above" if node in seen else "")
    seen.add(node)
    kids: list[tuple[str, str]] = []
    detail = ""
    kind, _, ident = node.partition(":")
    if kind == "file":
        if not up:
            ids = [r[0] for r in conn.execute(
                "SELECT DISTINCT id FROM records WHERE json_extract(provenance, '$.source_file') = ? ORDER BY id",
                (ident,),
            )]  # fmt: skip
            shown, detail = _cap(ids)
            kids += [(record_node(i), "parsed into") for i in shown]
    elif kind == "record":
        row = conn.execute(
            "SELECT provenance, run_id, resource_type FROM records WHERE id = ? AND is_current = 1", (ident,)
        ).fetchone()
        if row is None:
            detail = "not in the store (erased or unknown)"
        else:
            import json

            prov = json.loads(row[0])
            detail = f"{row[2]}; ingest/job run {row[1] or prov.get('run_id') or '-'}"
            if up:
                if prov.get("source_file"):
                    kids.append((f"file:{prov['source_file']}", "from file"))
                for cited in prov.get("derived_from") or []:
                    kids.append((record_node(cited), "derived from"))
                if prov.get("model_id"):
                    kids.append((f"model:{prov['model_id']}", "generated by"))
            else:
                n_chunks, n_vec = conn.execute(
                    "SELECT count(*), (SELECT count(*) FROM vectors v JOIN chunks c2 ON c2.id = v.chunk_id "
                    "WHERE c2.record_id = ?) FROM chunks WHERE record_id = ?",
                    (ident, ident),
                ).fetchone()
                kids.append((f"chunks:{ident}", f"{n_chunks} chunks, {n_vec} vectors"))
                reports = [r[0] for r in conn.execute(
                    "SELECT id FROM records WHERE is_current = 1 AND id != ? AND EXISTS (SELECT 1 FROM "
                    "json_each(records.provenance, '$.derived_from') WHERE value = ?)", (ident, ident)
                )]  # fmt: skip
                kids += [(record_node(r), "cited by") for r in _cap(reports)[0]]
                if _has(conn, "agent_steps"):
                    runs = [r[0] for r in conn.execute(
                        "SELECT DISTINCT run_id FROM agent_steps WHERE EXISTS (SELECT 1 FROM "
                        "json_each(agent_steps.evidence_ids_json) WHERE value = ?)", (ident,)
                    )]  # fmt: skip
                    kids += [(f"run:{r}", "evidence in agent run") for r in _cap(runs)[0]]
    elif kind == "snapshot" and up:
        parents = [e.parent for e in lineage.parents(node)]
        shown, detail = _cap(parents)
        kids += [(p, "contains") for p in shown]
    elif kind == "model" and up and _has(conn, "model_versions"):
        name, _, version = ident.partition("@")
        row = conn.execute(
            "SELECT dataset_snapshot_id FROM model_versions WHERE name = ? AND version = ?", (name, version)
        ).fetchone()
        if row is not None and row[0]:
            kids.append((f"snapshot:{row[0]}", "trained on"))
    if not up and kind in ("record", "snapshot", "model"):
        kids += [(e.child, e.relation) for e in lineage.children(node)]
        if kind == "snapshot" and _has(conn, "model_versions"):
            for name, version in conn.execute(
                "SELECT name, version FROM model_versions WHERE dataset_snapshot_id = ?", (ident,)
            ):
                kids.append((model_node(name, version), "trained"))
    taint = lineage.taint_of(node)
    if taint is not None:
        detail = (detail + "; " if detail else "") + f"TAINTED: {taint.reason}"
    children = tuple(
        _walk(conn, lineage, child, rel, up=up, depth=depth - 1, seen=seen) for child, rel in dict.fromkeys(kids)
    )
    return LineageNode(node, relation, detail, children)
