"""Lineage edges between artifacts, taint marks (tables ``lineage_edges`` and ``taints`` in the store database), and
the lineage walk.

Most lineage is already in the data: a record's provenance names its source file and ingest run; chunks and
vectors belong to records; a signed report's provenance ``derived_from`` lists the evidence it cites; a model
version names its dataset snapshot. What is *not* in a row of its own — which records went into a dataset
snapshot, which records trained a model — is written here as explicit edges ``parent → child``. Node ids are
prefixed by kind so one walk crosses kinds: ``file:<path>``, ``record:<id>``, ``chunks:<record id>``,
``snapshot:<name>@<hash>``, ``model:<name>@<version>``, ``run:<run id>``.

**The walk** (:func:`walk`) asks every :class:`~sage_health.data.governance.hooks.LineageHook` for the
neighbours of each node: the document store's (:class:`StoreLineageHook`: files, records, chunks, citations), the
explicit edges' (:class:`EdgeLineageHook`), and those the other layers register in
:mod:`sage_health.services.hooks` (agent runs, feedback, the model registry). Governance writes no SQL against
another layer's tables.

**The governed walk** (:func:`governed_lineage`, reached through ``GovernedStore.lineage``) names nodes as the
caller's view does: in the de-identified view a patient is named by pseudonym only (a real patient id is not
found), file paths become ``file:<sha256 of the path, 12 digits>`` (Synthea names its files after the patient)
and a path is not accepted as a start; records of patients who opted out of research are withheld when the
decision excludes them. The audit event holds ids and hashes only.

A **taint** marks a snapshot or model version built from data that was later erased: it stays visible
(``models list``, ``dataset list``) and blocks promotion until a retrained version replaces it.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sage_health.core.errors import RecordNotFoundError, ValidationError
from sage_health.core.hashing import sha256_text
from sage_health.data.governance.hooks import LineageHook
from sage_health.data.sqlite_tables import connect, immediate
from sage_health.data.store.protocol import LineageSource, RecordLineage

if TYPE_CHECKING:
    from sage_health.data.governance.access import GovernedStore
    from sage_health.data.governance.policy import Decision

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

MAX_CHILDREN = 50
"""Children listed per node; the count of all of them is in the node's detail."""
FILE_HASH_CHARS = 12
_HEX = re.compile(r"^[0-9a-f]{8,64}$")


def record_node(record_id: str) -> str:
    return f"record:{record_id}"


def snapshot_node(name: str, digest: str) -> str:
    return f"snapshot:{name}@{digest}"


def model_node(name: str, version: str) -> str:
    return f"model:{name}@{version}"


def file_node(path: str) -> str:
    return f"file:{path}"


def path_hash(path: str) -> str:
    """How a source file path is named where paths may not appear (audit log, de-identified view)."""
    return sha256_text(path)


def as_node(start: str) -> str:
    """A node id from what a user typed: ``kind:ident``, or a bare record id (record ids hold ``/`` but no ``:``
    before the first ``/``)."""
    text = start.strip()
    if not text:
        raise ValidationError("empty lineage node: give a record id, file:PATH, snapshot:NAME@HASH or model:NAME@VER")
    return text if ":" in text.split("/")[0] else record_node(text)


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


# ---------------------------------------------------------------------------------------------------------- hooks


class EdgeLineageHook:
    """The explicit edges of :class:`LineageStore` (record → snapshot, record → model, …)."""

    name = "lineage_edges"

    def __init__(self, lineage: LineageStore) -> None:
        self._lineage = lineage

    def neighbours(self, node: str, *, up: bool) -> list[tuple[str, str, str]]:
        if node.partition(":")[0] not in ("record", "snapshot", "model", "run"):
            return []
        if up:
            return [(e.parent, "contains" if e.relation == "in_snapshot" else e.relation, "")
                    for e in self._lineage.parents(node)]  # fmt: skip
        return [(e.child, e.relation, "") for e in self._lineage.children(node)]


class StoreLineageHook:
    """The document store's edges: source file → records → chunks and vectors; records citing records; the model
    that generated a record. Typed on :class:`~sage_health.data.store.protocol.LineageSource`."""

    name = "document_store"

    def __init__(self, source: LineageSource) -> None:
        self._source = source
        self._records: dict[str, RecordLineage | None] = {}

    def record(self, record_id: str) -> RecordLineage | None:
        if record_id not in self._records:
            self._records[record_id] = self._source.record_lineage(record_id)
        return self._records[record_id]

    def describe(self, node: str) -> str:
        kind, _, ident = node.partition(":")
        if kind != "record":
            return ""
        info = self.record(ident)
        if info is None:
            return "not in the store (erased or unknown)"
        return f"{info.resource_type}; ingest/job run {info.run_id or '-'}"

    def neighbours(self, node: str, *, up: bool) -> list[tuple[str, str, str]]:
        kind, _, ident = node.partition(":")
        if kind == "file":
            return [] if up else [(record_node(i), "parsed into", "") for i in self._source.records_from_file(ident)]
        if kind != "record":
            return []
        info = self.record(ident)
        if info is None:
            return []
        prov = info.provenance
        if up:
            out: list[tuple[str, str, str]] = []
            if prov.source_file:
                out.append((file_node(prov.source_file), "from file", ""))
            out += [(record_node(d), "derived from", "") for d in prov.derived_from]
            if prov.model_id:
                out.append((f"model:{prov.model_id}", "generated by", ""))
            return out
        return [
            (f"chunks:{ident}", f"{info.chunks} chunks, {info.vectors} vectors", ""),
            *((record_node(r), "cited by", "") for r in self._source.records_citing(ident)),
        ]


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

    def count(self) -> int:
        """Nodes in this tree."""
        return 1 + sum(c.count() for c in self.children)


@dataclass
class _Walk:
    hooks: Sequence[LineageHook]
    describe: Callable[[str], str]
    taint_of: Callable[[str], Taint | None]
    visible: Callable[[str], bool]
    up: bool
    seen: set[str] = field(default_factory=set)
    withheld: int = 0

    def node(self, node: str, relation: str, edge_detail: str, depth: int) -> LineageNode:
        if node in self.seen:
            return LineageNode(node, relation, "seen above")
        self.seen.add(node)
        kids: dict[tuple[str, str], str] = {}
        if depth > 0:
            for hook in self.hooks:
                for child, rel, detail in hook.neighbours(node, up=self.up):
                    kids.setdefault((child, rel), detail)
        shown = [(k, d) for k, d in kids.items() if self.visible(k[0])]
        hidden = len(kids) - len(shown)
        self.withheld += hidden
        notes = [edge_detail, self.describe(node)]
        if len(shown) > MAX_CHILDREN:
            notes.append(f"{len(shown)} in all, first {MAX_CHILDREN} shown")
            shown = shown[:MAX_CHILDREN]
        if hidden:
            notes.append(f"{hidden} withheld (research opt-out)")
        taint = self.taint_of(node)
        if taint is not None:
            notes.append(f"TAINTED: {taint.reason}")
        children = tuple(self.node(child, rel, detail, depth - 1) for (child, rel), detail in shown)
        return LineageNode(node, relation, "; ".join(n for n in notes if n), children)


def walk(
    start: str,
    *,
    up: bool,
    depth: int = 4,
    hooks: Sequence[LineageHook],
    lineage: LineageStore,
    describe: Callable[[str], str] | None = None,
    visible: Callable[[str], bool] | None = None,
) -> LineageNode:
    """The lineage tree of ``start`` (a record id, ``file:PATH``, ``snapshot:NAME@HASH``, ``model:NAME@VER`` or
    ``run:ID``), ``depth`` steps from it, with the neighbours every hook gives.

    Down: file → records → chunks and vectors, snapshots, model versions, records and agent runs that cite the
    record. Up: generated report → cited evidence records and model; model → snapshot → records; record → source
    file and ingest run. Children are capped at :data:`MAX_CHILDREN` per node (the count is in ``detail``); a node
    met twice is listed once and then as "seen above"; ``visible`` withholds nodes (counted in the parent's detail).
    """
    return _walk(start, up=up, depth=depth, hooks=hooks, lineage=lineage, describe=describe, visible=visible)[0]


def _walk(
    start: str,
    *,
    up: bool,
    depth: int,
    hooks: Sequence[LineageHook],
    lineage: LineageStore,
    describe: Callable[[str], str] | None,
    visible: Callable[[str], bool] | None,
) -> tuple[LineageNode, int]:
    state = _Walk(hooks=hooks, describe=describe or (lambda _n: ""), taint_of=lineage.taint_of,
                  visible=visible or (lambda _n: True), up=up)  # fmt: skip
    return state.node(as_node(start), "start", "", depth), state.withheld


# ---------------------------------------------------------------------------------------------------------- governed


@dataclass(frozen=True)
class LineageResult:
    """A governed walk: the tree as the caller's view names it, and what was withheld."""

    tree: LineageNode
    up: bool
    depth: int
    view: str
    withheld: int
    """Nodes left out because their patient opted out of research (secondary use)."""


def _rename(node: LineageNode, name: Callable[[str], str]) -> LineageNode:
    return LineageNode(name(node.node), node.relation, node.detail, tuple(_rename(c, name) for c in node.children))


def governed_lineage(
    governed: GovernedStore,
    source: LineageSource,
    start: str,
    *,
    up: bool,
    depth: int,
    hooks: Sequence[LineageHook],
    patients: frozenset[str],
    resolve: Callable[[str, Decision], str | None],
    detail: dict[str, Any] | None = None,
) -> LineageResult:
    """Decide ``lineage``, walk from ``start`` as the caller's view names it and audit the walk (ids and hashes
    only). ``source`` is the governed store's own backend, ``patients`` its current patient ids, ``resolve`` how the
    caller's view names a record (``GovernedStore._resolve_id``: a pseudonym → the real id, a real patient id in
    the de-identified view → ``None``)."""
    from sage_health.data.governance.policy import Action
    from sage_health.data.governance.views import is_patient_ref

    if not 0 <= depth <= 10:
        raise ValidationError(f"--depth must be between 0 and 10, got {depth}")
    decision = governed.decide(Action.LINEAGE)
    view = governed.view if decision.view == "deidentified" else None
    withheld_patients = frozenset(governed.opted_out()) if decision.exclude_opted_out else frozenset()
    store_hook = StoreLineageHook(source)
    node = as_node(start)
    kind, _, ident = node.partition(":")
    audit: dict[str, Any] = {**(detail or {}), "direction": "up" if up else "down", "depth": depth,
                             "view": decision.view, "start_kind": kind}  # fmt: skip
    record_ids: list[str] = []

    def not_found(message: str) -> RecordNotFoundError:
        governed.log(Action.LINEAGE.value, detail={**audit, "found": False}, outcome="not_found")
        return RecordNotFoundError(message)

    if kind == "record":
        real = resolve(ident, decision)
        if real is None:
            raise not_found(f"no record {ident!r} in your view: patients are named by pseudonym (pseudo-…)")
        info = store_hook.record(real)
        if info is not None and info.patient_id in withheld_patients:
            raise not_found(f"no record {ident!r} in your view (withheld: research opt-out)")
        node = record_node(real)
        record_ids.append(real)
    elif kind == "file":
        if _HEX.match(ident):
            matches = [f for f in source.source_files() if path_hash(f).startswith(ident)]
            if not matches:
                raise not_found(f"no source file whose path hash starts with {ident!r}")
            if len(matches) > 1:
                raise not_found(f"{len(matches)} source files have a path hash starting with {ident!r}; "
                                "give more digits")  # fmt: skip
            node = file_node(matches[0])
        elif view is not None:
            raise not_found("in the de-identified view a source file is named by the hash of its path "
                            f"(file:<{FILE_HASH_CHARS} hex digits>, as lineage shows it), not by its path")  # fmt: skip
        audit["file_sha256"] = path_hash(node.removeprefix("file:"))
    elif kind in ("snapshot", "model", "run", "chunks"):
        audit["start"] = node if kind != "chunks" else "chunks"
    else:
        raise ValidationError(f"unknown lineage node kind {kind!r}: use a record id, file:…, snapshot:NAME@HASH, "
                              "model:NAME@VERSION or run:ID")  # fmt: skip

    def visible(child: str) -> bool:
        child_kind, _, child_id = child.partition(":")
        if not withheld_patients or child_kind not in ("record", "chunks"):
            return True
        info = store_hook.record(child_id)
        return info is None or info.patient_id not in withheld_patients

    edges = LineageStore(governed.path)
    tree, withheld = _walk(node, up=up, depth=depth, hooks=[store_hook, EdgeLineageHook(edges), *hooks],
                           lineage=edges, describe=store_hook.describe, visible=visible)  # fmt: skip
    if view is not None:
        pseudonym = view.patient

        def name(n: str) -> str:
            k, _, i = n.partition(":")
            if k == "file":
                return f"file:{path_hash(i)[:FILE_HASH_CHARS]}"
            if k in ("record", "chunks") and is_patient_ref(i, patients):
                return f"{k}:{pseudonym(i) or i}"
            return n

        tree = _rename(tree, name)
    governed.log(Action.LINEAGE.value, record_ids=record_ids,
                 detail={**audit, "nodes": tree.count(), "withheld": withheld})  # fmt: skip
    return LineageResult(tree=tree, up=up, depth=depth, view=decision.view, withheld=withheld)
