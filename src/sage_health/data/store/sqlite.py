"""``SqliteDocumentStore``: one SQLite database (WAL) holding records with every version and its
provenance, section-aware chunks, an FTS5 keyword index and the dense vectors.

Design notes

* Writes are atomic per call: chunking and embedding happen *before* ``BEGIN IMMEDIATE``; the
  transaction then stores records, chunks (FTS5 rows follow by trigger) and vectors, and bumps a
  generation counter. A crash or ``kill -9`` at any point leaves either the whole batch or none of it.
* Idempotency by content hash: a record whose current version has the same hash is skipped before any
  embedding work; a changed record gets version n+1, the old version stays with its provenance, and only
  the current version keeps chunks (so only it is searchable).
* Filters are SQL predicates on denormalised chunk columns. They select the candidate rows of both
  in-memory retrievers (cached per filter until the next write) or go inside the FTS5 query: never a
  post-filter of a global top-k.
* Keyword search: FTS5 (external content, maintained by triggers) is the persisted source of truth and is
  what ``check()`` verifies; queries are answered by an in-memory BM25 index
  (:class:`~sage_health.data.store.sparse.SparseBM25Index`) with FTS5's tokenizer, statistics and
  bm25() formula, so the ranking is FTS5's up to float32 rounding of ties, at ~2 ms instead of ~30 ms for
  100k chunks. It is built from the chunk texts at the first keyword search (seconds at 100k chunks; a
  line on stderr says so) and then refreshed incrementally. ``bm25_index="fts5"`` queries FTS5 directly
  (no build, no memory, slower).
* Dense search is exact (brute-force cosine with NumPy over an in-memory float32 matrix that is loaded
  lazily): recall vs exact is 1.0 by construction.
* Both in-memory indexes follow the ``generation`` / ``delete_generation`` counters in ``meta``, so a write
  by another store instance or process is seen at the next search: new chunk rows (ids above the last one
  seen) are appended; after a delete the rows of removed chunks are dropped. Refreshes run under the
  store's lock (the BM25 index: its own lock and a private read connection); searches read immutable
  snapshots, so concurrent searches from worker threads are safe.
"""

from __future__ import annotations

import json
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from sage_health.core.errors import ConfigError, RetrievalError, StoreError
from sage_health.core.hashing import sha256_text
from sage_health.core.provenance import Provenance, Transform
from sage_health.data.chunking import Chunk, Chunker
from sage_health.data.embed import Embedder, Vectors, cpu_supports_bf16
from sage_health.data.embed import _release_freed_memory as release_freed_memory
from sage_health.data.schema import RecordBase, iso_utc, record_from_json
from sage_health.data.store.protocol import (
    ErasedRecords,
    RecordLineage,
    SearchFilters,
    SearchHit,
    SearchQuery,
    StoredRecord,
    WriteResult,
)
from sage_health.data.store.sparse import Postings, SparseBM25Index

SCHEMA_VERSION = 1
_IN_BATCH = 500  # parameters per IN (...) list
FTS_TOKENIZE = "porter unicode61 remove_diacritics 2"
"""The FTS5 tokenizer of ``chunks_fts``; the in-memory BM25 index tokenises with exactly this."""
_TEXT_BATCH = 5000  # chunk texts fetched per query while building the in-memory BM25 index

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ingest_runs (
  id TEXT PRIMARY KEY, started_at TEXT NOT NULL, finished_at TEXT, status TEXT NOT NULL,
  command TEXT, stats TEXT);
CREATE TABLE IF NOT EXISTS ingest_errors (
  id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, path TEXT NOT NULL, locator TEXT, reason TEXT NOT NULL,
  created_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS ingest_errors_run ON ingest_errors(run_id);
CREATE TABLE IF NOT EXISTS files (
  path TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL, connector TEXT NOT NULL,
  run_id TEXT NOT NULL, records INTEGER NOT NULL, completed_at TEXT NOT NULL,
  PRIMARY KEY (path, sha256));
CREATE TABLE IF NOT EXISTS records (
  pk INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL, version INTEGER NOT NULL, is_current INTEGER NOT NULL,
  resource_type TEXT NOT NULL, source TEXT NOT NULL, patient_id TEXT, effective TEXT,
  content_hash TEXT NOT NULL, body TEXT NOT NULL, provenance TEXT NOT NULL, chunker TEXT,
  run_id TEXT, created_at TEXT NOT NULL,
  UNIQUE (id, version));
CREATE UNIQUE INDEX IF NOT EXISTS records_current ON records(id) WHERE is_current = 1;
CREATE INDEX IF NOT EXISTS records_patient ON records(patient_id, effective) WHERE is_current = 1;
CREATE INDEX IF NOT EXISTS records_type ON records(resource_type) WHERE is_current = 1;
CREATE TABLE IF NOT EXISTS chunks (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  record_id TEXT NOT NULL, section TEXT NOT NULL, ordinal INTEGER NOT NULL, text TEXT NOT NULL,
  start INTEGER NOT NULL, "end" INTEGER NOT NULL, text_hash TEXT NOT NULL,
  resource_type TEXT NOT NULL, source TEXT NOT NULL, patient_id TEXT, effective TEXT);
CREATE INDEX IF NOT EXISTS chunks_record ON chunks(record_id);
CREATE INDEX IF NOT EXISTS chunks_patient ON chunks(patient_id, effective);
CREATE INDEX IF NOT EXISTS chunks_type ON chunks(resource_type);
CREATE INDEX IF NOT EXISTS chunks_source ON chunks(source);
CREATE INDEX IF NOT EXISTS chunks_text_hash ON chunks(text_hash);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
  text, content='chunks', content_rowid='id', tokenize='{FTS_TOKENIZE}');
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
  INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
  INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
CREATE TABLE IF NOT EXISTS vectors (
  chunk_id INTEGER PRIMARY KEY REFERENCES chunks(id) ON DELETE CASCADE,
  model_id TEXT NOT NULL, vec BLOB NOT NULL);
"""

_STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just me more most
    my myself no nor not now of off on once only or other our ours ourselves out over own same she
    should so some such than that the their theirs them themselves then there these they this those
    through to too under until up very was we were what when where which while who whom why will with
    would you your yours yourself yourselves
    """.split()  # noqa: SIM905 - a word list reads best as text
)
_WORD = re.compile(r"[A-Za-z0-9]+")


def query_words(text: str, max_terms: int = 32) -> list[str]:
    """The distinct non-stopword words of ``text`` (lower-case ASCII, first ``max_terms``): the OR-ed terms
    of a keyword query.

    Single letters are dropped (possessive "s", initials); single digits are kept: "type 2", "stage 3"
    carry meaning (keeping them raised MedQuAD BM25 MRR from 0.485 to 0.495 in the retrieval benchmark).
    """
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if word not in _STOPWORDS and (len(word) > 1 or word.isdigit()):
            seen.setdefault(word, None)
    return list(seen)[:max_terms]


def fts_query(text: str, max_terms: int = 32) -> str | None:
    """An FTS5 OR-query of :func:`query_words` of ``text`` (each quoted), or None when there are none."""
    terms = query_words(text, max_terms)
    if not terms:
        return None
    return " OR ".join(f'"{t}"' for t in terms)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _batched(items: Sequence[Any], size: int = _IN_BATCH) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _parse_dt(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


_FILTER_CACHE_SIZE = 32


DEFAULT_DENSE_WEIGHT = 3.0
"""Weight of the dense ranking in hybrid RRF (BM25's is 1). Chosen on 1,000 MedQuAD questions disjoint from the
retrieval benchmark's evaluation queries (benchmarks/tune_fusion.py: MRR .634 at 1.0, .669 at 2.0, .678 at 3.0,
.675 at 5.0; dense alone .664, BM25 alone .512)."""

_BF16_MIN_ROWS = 20_000
_BF16_RERANK_POOL = 256


def _matvec(matrix: Vectors, vector: Vectors) -> Vectors:
    """``matrix @ vector`` in fp32 through torch: numpy 1.26 (pinned by spaCy/thinc for the labeler) runs this
    memory-bound mat-vec ~2-5x slower than torch here (100k x 384: ~15 ms vs 3.5-7 ms)."""
    import torch

    with torch.inference_mode():
        out: Vectors = torch.mv(torch.from_numpy(matrix), torch.from_numpy(vector)).numpy()
    return out


class _DenseMatrix:
    """In-memory copy of the vectors table: sorted chunk ids + a float32 matrix.

    ``filter_rows`` caches, per filter, the matrix rows that pass it (a broad filter such as a resource
    type selects most chunks, and fetching their ids from SQLite costs far more than the mat-vec); it is
    emptied whenever the matrix is refreshed, so it always describes the current ``ids``.
    """

    def __init__(self, dim: int) -> None:
        self.ids: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self.matrix: Vectors = np.zeros((0, dim), dtype=np.float32)
        self.generation = -1
        self.delete_generation = -1
        self.filter_rows: dict[str, npt.NDArray[np.intp]] = {}
        self.low: Any = None  # bf16 torch copy of ``matrix`` for the first scoring pass (see dense_precision)


class _SparseState:
    """The in-memory BM25 index's current snapshot, the counters it reflects, and its per-filter rows."""

    def __init__(self, postings: Postings, generation: int, delete_generation: int) -> None:
        self.postings = postings
        self.generation = generation
        self.delete_generation = delete_generation
        self.filter_rows: dict[str, npt.NDArray[np.intp]] = {}


class SqliteDocumentStore:
    """The embedded default store. Cheap to construct; the database is opened on first use."""

    def __init__(
        self,
        path: Path | str,
        embedder: Embedder,
        chunker: Chunker | None = None,
        rrf_k: int = 60,
        *,
        bm25_index: Literal["memory", "fts5"] = "memory",
        dense_precision: Literal["auto", "fp32", "bf16"] = "auto",
        dense_weight: float = DEFAULT_DENSE_WEIGHT,
    ) -> None:
        """``bm25_index``: "memory" (default) answers keyword queries from an in-memory BM25 index built
        at the first keyword search (fast queries; ~60 MiB and a few seconds per 100k chunks); "fts5" queries
        SQLite FTS5 directly (no build and no memory, 15-20x slower at 100k chunks). Rankings are the same.

        ``dense_precision``: "fp32" scores every vector exactly (torch mat-vec). "bf16" scores a bf16 copy of
        the matrix first (half the memory traffic; the mat-vec is memory-bound) and re-scores the best
        ``max(4n, 256)`` candidates exactly in fp32, so the returned scores are exact and only a vector whose
        bf16 score falls out of that pool can be missed (recall vs exact is measured by the latency benchmark).

        ``dense_weight``: weight of the dense ranking in hybrid reciprocal-rank fusion (BM25's is 1); see
        :data:`DEFAULT_DENSE_WEIGHT` for how the default was chosen.
        "auto" uses bf16 on CPUs with native bf16 instructions once the store holds >= 20,000 vectors."""
        if bm25_index not in ("memory", "fts5"):
            raise ConfigError(f"bm25_index must be 'memory' or 'fts5', got {bm25_index!r}")
        self.path = Path(path)
        self.rrf_k = rrf_k
        self.embedder = embedder
        self.chunker = chunker or Chunker()
        self.bm25_index = bm25_index
        if dense_precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"dense_precision must be auto, fp32 or bf16, got {dense_precision!r}")
        self.dense_precision = dense_precision
        if not dense_weight > 0:
            raise ConfigError(f"dense_weight must be > 0, got {dense_weight!r}")
        self.dense_weight = dense_weight
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._dense = _DenseMatrix(embedder.dim)
        self._sparse_index = SparseBM25Index(FTS_TOKENIZE)
        self._sparse_lock = threading.Lock()  # serialises refreshes of the BM25 index (not held by searches)
        self._sparse = _SparseState(self._sparse_index.postings, -1, -1)
        self._candidates: dict[tuple[str, int, int], npt.NDArray[np.int64]] = {}
        self._patients: tuple[int, frozenset[str]] | None = None

    # ------------------------------------------------------------------ connection & schema
    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA temp_store=MEMORY")
            conn.execute("PRAGMA cache_size=-65536")
            conn.execute("PRAGMA mmap_size=268435456")
            conn.executescript(_SCHEMA)  # idempotent (IF NOT EXISTS); runs outside a transaction
            with self._txn(conn):
                row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                if row is None:
                    conn.executemany(
                        "INSERT INTO meta(key, value) VALUES (?, ?)",
                        [
                            ("schema_version", str(SCHEMA_VERSION)),
                            ("generation", "0"),
                            ("delete_generation", "0"),
                            ("embedder", self.embedder.model_id),
                            ("created_at", _now()),
                        ],
                    )
                elif int(row["value"]) != SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path}: store schema version {row['value']} is not supported by this "
                        f"version of SAGE-Health (expects {SCHEMA_VERSION}); ingest into a new store"
                    )
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot open the store database: {exc}") from exc
        self._conn = conn
        return conn

    @contextmanager
    def _txn(self, conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        conn = conn or self._connect()
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._sparse_index.close()
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> SqliteDocumentStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """The raw connection, for read-only reporting (stats, tests)."""
        return self._connect()

    def _meta_int(self, conn: sqlite3.Connection, key: str) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return int(row["value"]) if row else 0

    def _bump(self, conn: sqlite3.Connection, key: str) -> None:
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key=?", (key,))

    # ------------------------------------------------------------------ write
    def _current_hashes(self, conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, tuple[int, str]]:
        out: dict[str, tuple[int, str]] = {}
        for part in _batched(ids):
            marks = ",".join("?" * len(part))
            rows = conn.execute(
                f"SELECT id, version, content_hash FROM records WHERE is_current=1 AND id IN ({marks})",
                tuple(part),
            )
            for row in rows:
                out[row["id"]] = (row["version"], row["content_hash"])
        return out

    def _reusable_vectors(self, conn: sqlite3.Connection, text_hashes: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        model_id = self.embedder.model_id
        for part in _batched(text_hashes):
            marks = ",".join("?" * len(part))
            rows = conn.execute(
                f"SELECT c.text_hash, v.vec FROM chunks c JOIN vectors v ON v.chunk_id = c.id "
                f"WHERE v.model_id = ? AND c.text_hash IN ({marks})",
                (model_id, *part),
            )
            for row in rows:
                out.setdefault(row["text_hash"], row["vec"])
        return out

    def plan_chunks(self, record: RecordBase) -> list[Chunk]:
        title = getattr(record, "title", None)
        return self.chunker.chunk(record.sections(), title=title if isinstance(title, str) else None)

    def write(self, records: Sequence[RecordBase], *, run_id: str | None = None) -> WriteResult:
        if not records:
            return WriteResult()
        conn = self._connect()
        by_id: dict[str, RecordBase] = {}
        hashes: dict[str, str] = {}
        for record in records:
            digest = record.content_hash()
            if record.id in by_id and hashes[record.id] != digest:
                raise StoreError(
                    f"record {record.id}: appears twice in one batch with different content; deduplicate the input"
                )
            by_id[record.id] = record
            hashes[record.id] = digest
        ids = list(by_id)
        existing = self._current_hashes(conn, ids)
        pending = [by_id[i] for i in ids if i not in existing or existing[i][1] != hashes[i]]

        # chunk + embed outside the transaction
        planned: list[tuple[RecordBase, list[Chunk], list[str]]] = []
        for record in pending:
            chunks = self.plan_chunks(record)
            planned.append((record, chunks, [sha256_text(c.text) for c in chunks]))
        all_hashes = sorted({h for _, _, hs in planned for h in hs})
        vectors = self._reusable_vectors(conn, all_hashes)
        texts: dict[str, str] = {}
        for _, chunks, hs in planned:
            for chunk, h in zip(chunks, hs, strict=True):
                if h not in vectors:
                    texts.setdefault(h, chunk.text)
        if texts:
            order = list(texts)
            matrix = self.embedder.embed([texts[h] for h in order])
            if matrix.shape != (len(order), self.embedder.dim):
                raise StoreError(f"embedder returned shape {matrix.shape}, expected {(len(order), self.embedder.dim)}")
            for h, row in zip(order, matrix, strict=True):
                vectors[h] = np.ascontiguousarray(row, dtype=np.float32).tobytes()

        inserted: list[str] = []
        updated: list[str] = []
        n_chunks = 0
        chunker_json = self.chunker.transform.model_dump_json()
        now = _now()
        try:
            with self._txn(conn):
                # re-read inside the transaction: another writer may have stored some meanwhile
                existing = self._current_hashes(conn, [r.id for r, _, _ in planned])
                seq_row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='chunks'").fetchone()
                next_chunk = (seq_row["seq"] if seq_row else 0) + 1
                chunk_rows: list[tuple[Any, ...]] = []
                vec_rows: list[tuple[Any, ...]] = []
                deleted_any = False
                for record, chunks, hs in planned:
                    digest = hashes[record.id]
                    version = 1
                    if record.id in existing:
                        old_version, old_hash = existing[record.id]
                        if old_hash == digest:
                            continue
                        version = old_version + 1
                        conn.execute("UPDATE records SET is_current=0 WHERE id=? AND is_current=1", (record.id,))
                        conn.execute("DELETE FROM chunks WHERE record_id=?", (record.id,))
                        deleted_any = True
                        updated.append(record.id)
                    else:
                        inserted.append(record.id)
                    prov = record.provenance.model_copy(
                        update={"content_hash": digest, "run_id": record.provenance.run_id or run_id}
                    )
                    effective = iso_utc(record.effective)
                    conn.execute(
                        "INSERT INTO records(id, version, is_current, resource_type, source, patient_id, "
                        "effective, content_hash, body, provenance, chunker, run_id, created_at) "
                        "VALUES (?,?,1,?,?,?,?,?,?,?,?,?,?)",
                        (
                            record.id,
                            version,
                            record.resource_type,  # type: ignore[attr-defined]
                            record.source,
                            record.patient_id,
                            effective,
                            digest,
                            record.model_dump_json(exclude={"provenance"}),
                            prov.model_dump_json(),
                            chunker_json,
                            prov.run_id,
                            now,
                        ),
                    )
                    for chunk, h in zip(chunks, hs, strict=True):
                        cid = next_chunk
                        next_chunk += 1
                        chunk_rows.append(
                            (
                                cid,
                                record.id,
                                chunk.section,
                                chunk.ordinal,
                                chunk.text,
                                chunk.start,
                                chunk.end,
                                h,
                                record.resource_type,  # type: ignore[attr-defined]
                                record.source,
                                record.patient_id,
                                effective,
                            )
                        )
                        vec_rows.append((cid, self.embedder.model_id, vectors[h]))
                conn.executemany(
                    'INSERT INTO chunks(id, record_id, section, ordinal, text, start, "end", text_hash, '
                    "resource_type, source, patient_id, effective) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    chunk_rows,
                )
                conn.executemany("INSERT INTO vectors(chunk_id, model_id, vec) VALUES (?,?,?)", vec_rows)
                n_chunks = len(chunk_rows)
                if inserted or updated:
                    self._bump(conn, "generation")
                if deleted_any:
                    self._bump(conn, "delete_generation")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: write of {len(planned)} records failed and was rolled back: {exc}") from exc
        return WriteResult(
            inserted=len(inserted),
            updated=len(updated),
            unchanged=len(ids) - len(inserted) - len(updated),
            chunks=n_chunks,
            embedded=len(texts),
            inserted_ids=tuple(inserted),
            updated_ids=tuple(updated),
        )

    # ------------------------------------------------------------------ read
    def _stored(self, row: sqlite3.Row, chunk_count: int) -> StoredRecord:
        record = record_from_json(row["body"])
        prov = Provenance.model_validate_json(row["provenance"])
        return StoredRecord(
            record=record.model_copy(update={"provenance": prov}),
            version=row["version"],
            is_current=bool(row["is_current"]),
            content_hash=row["content_hash"],
            created_at=datetime.strptime(row["created_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC),
            chunk_count=chunk_count,
        )

    def get(self, record_id: str, *, version: int | None = None) -> StoredRecord | None:
        conn = self._connect()
        if version is None:
            row = conn.execute("SELECT * FROM records WHERE id=? AND is_current=1", (record_id,)).fetchone()
        else:
            row = conn.execute("SELECT * FROM records WHERE id=? AND version=?", (record_id, version)).fetchone()
        if row is None:
            return None
        count = 0
        if row["is_current"]:
            count = conn.execute("SELECT count(*) FROM chunks WHERE record_id=?", (record_id,)).fetchone()[0]
        return self._stored(row, count)

    def history(self, record_id: str) -> list[StoredRecord]:
        """Every stored version of a record, oldest first."""
        conn = self._connect()
        rows = conn.execute("SELECT * FROM records WHERE id=? ORDER BY version", (record_id,)).fetchall()
        return [self._stored(r, 0) for r in rows]

    def chunks_of(self, record_id: str) -> list[Chunk]:
        rows = self._connect().execute(
            'SELECT section, ordinal, text, start, "end" FROM chunks WHERE record_id=? ORDER BY ordinal',
            (record_id,),
        )
        return [Chunk(section=r[0], ordinal=r[1], text=r[2], start=r[3], end=r[4]) for r in rows]

    def iter_records(self, filters: SearchFilters | None = None, *, batch: int = 1000) -> Iterator[StoredRecord]:
        """Current records matching ``filters`` (section filters are ignored), ordered by id."""
        where, params = self._where(filters or SearchFilters(), alias="r", for_records=True)
        conn = self._connect()
        last = ""
        while True:
            rows = conn.execute(
                f"SELECT r.* FROM records r WHERE r.is_current=1 AND r.id > ? {where} ORDER BY r.id LIMIT ?",
                (last, *params, batch),
            ).fetchall()
            if not rows:
                return
            for row in rows:
                yield self._stored(row, 0)
            last = rows[-1]["id"]

    def patient_ids(self) -> frozenset[str]:
        """Every patient id with a current record (cached per store generation)."""
        conn = self._connect()
        generation = self._meta_int(conn, "generation")
        cached = self._patients
        if cached is None or cached[0] != generation:
            rows = conn.execute(
                "SELECT DISTINCT patient_id FROM records WHERE is_current=1 AND patient_id IS NOT NULL"
            ).fetchall()
            cached = (generation, frozenset(r[0] for r in rows))
            self._patients = cached
        return cached[1]

    def delete(self, record_ids: Sequence[str], *, also: Sequence[tuple[str, Sequence[Any]]] = ()) -> int:
        """Remove every version, chunk, keyword entry and vector of ``record_ids`` in one transaction; ``also``
        holds further ``(sql, params)`` statements run inside the same transaction (erasure uses it to remove a
        patient's rows from the side tables atomically with the records)."""
        ids = list(dict.fromkeys(record_ids))
        if not ids and not also:
            return 0
        removed = 0
        try:
            with self._txn() as conn:
                for sql, params in also:
                    conn.execute(sql, tuple(params))
                for part in _batched(ids):
                    marks = ",".join("?" * len(part))
                    conn.execute(f"DELETE FROM chunks WHERE record_id IN ({marks})", tuple(part))
                    cur = conn.execute(f"SELECT count(DISTINCT id) FROM records WHERE id IN ({marks})", tuple(part))
                    removed += cur.fetchone()[0]
                    conn.execute(f"DELETE FROM records WHERE id IN ({marks})", tuple(part))
                if removed:
                    self._bump(conn, "generation")
                    self._bump(conn, "delete_generation")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: delete failed and was rolled back: {exc}") from exc
        return removed

    # ------------------------------------------------------------------ erasure, lineage (ErasureTarget, LineageSource)
    def patient_record_ids(self, patient_id: str) -> list[str]:
        """Every record id (any version) of ``patient_id``, including the Patient record itself, sorted."""
        rows = self._connect().execute(
            "SELECT DISTINCT id FROM records WHERE patient_id = ? OR id = ? ORDER BY id", (patient_id, patient_id)
        )
        return [r[0] for r in rows]

    def erase_records(self, record_ids: Sequence[str]) -> ErasedRecords:
        """Remove ``record_ids`` as :meth:`delete` does and, in the same transaction, forget the paths of their
        source files (a Synthea file name is the patient's name) when no other patient's record came from them:
        the ledger rows (``files``, ``ingest_errors``) go, and the records left from such a file (organisations,
        practitioners: no patient) keep ``erased:<sha256 of the path>`` as their provenance ``source_file``. Ids
        already gone are skipped, so a re-run after a crash is a no-op."""
        ids = list(dict.fromkeys(record_ids))
        removed = scrubbed = 0
        dropped: list[str] = []
        try:
            with self._txn() as conn:
                paths: set[str] = set()
                for part in _batched(ids):
                    marks = ",".join("?" * len(part))
                    paths.update(r[0] for r in conn.execute(
                        "SELECT DISTINCT json_extract(provenance, '$.source_file') FROM records "
                        f"WHERE id IN ({marks}) AND json_extract(provenance, '$.source_file') IS NOT NULL",
                        tuple(part),
                    ))  # fmt: skip
                    conn.execute(f"DELETE FROM chunks WHERE record_id IN ({marks})", tuple(part))
                    cur = conn.execute(f"SELECT count(DISTINCT id) FROM records WHERE id IN ({marks})", tuple(part))
                    removed += cur.fetchone()[0]
                    conn.execute(f"DELETE FROM records WHERE id IN ({marks})", tuple(part))
                for path in sorted(paths):
                    others = conn.execute(
                        "SELECT 1 FROM records WHERE json_extract(provenance, '$.source_file') = ? "
                        "AND patient_id IS NOT NULL LIMIT 1",
                        (path,),
                    ).fetchone()
                    if others is not None:
                        continue  # a file of several patients: its path is not this patient's
                    digest = sha256_text(path)
                    gone = conn.execute("DELETE FROM files WHERE path = ?", (path,)).rowcount
                    gone += conn.execute("DELETE FROM ingest_errors WHERE path = ?", (path,)).rowcount
                    scrubbed += conn.execute(
                        "UPDATE records SET provenance = json_set(provenance, '$.source_file', ?) "
                        "WHERE json_extract(provenance, '$.source_file') = ?",
                        (f"erased:{digest}", path),
                    ).rowcount
                    if gone:
                        dropped.append(digest)
                if removed:
                    self._bump(conn, "generation")
                    self._bump(conn, "delete_generation")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: erasure of records failed and was rolled back: {exc}") from exc
        return ErasedRecords(records=removed, files=len(dropped), files_sha256=tuple(dropped),
                             provenance_scrubbed=scrubbed)  # fmt: skip

    def record_lineage(self, record_id: str) -> RecordLineage | None:
        """Provenance, ingest run and chunk/vector counts of the current version of ``record_id``."""
        conn = self._connect()
        row = conn.execute(
            "SELECT id, resource_type, patient_id, run_id, provenance FROM records WHERE id = ? AND is_current = 1",
            (record_id,),
        ).fetchone()
        if row is None:
            return None
        chunks, vectors = conn.execute(
            "SELECT count(*), (SELECT count(*) FROM vectors v JOIN chunks c2 ON c2.id = v.chunk_id "
            "WHERE c2.record_id = ?) FROM chunks WHERE record_id = ?",
            (record_id, record_id),
        ).fetchone()
        prov = Provenance.model_validate_json(row["provenance"])
        return RecordLineage(record_id=row["id"], resource_type=row["resource_type"], patient_id=row["patient_id"],
                             run_id=row["run_id"] or prov.run_id, provenance=prov, chunks=int(chunks),
                             vectors=int(vectors))  # fmt: skip

    def records_from_file(self, path: str) -> list[str]:
        """Ids of the current records parsed from the source file ``path``, sorted."""
        rows = self._connect().execute(
            "SELECT DISTINCT id FROM records WHERE is_current = 1 AND json_extract(provenance, '$.source_file') = ? "
            "ORDER BY id",
            (path,),
        )
        return [r[0] for r in rows]

    def records_citing(self, record_id: str) -> list[str]:
        """Ids of the current records (other than ``record_id``) whose provenance ``derived_from`` names it."""
        rows = self._connect().execute(
            "SELECT id FROM records WHERE is_current = 1 AND id != ? AND EXISTS (SELECT 1 FROM "
            "json_each(records.provenance, '$.derived_from') WHERE value = ?) ORDER BY id",
            (record_id, record_id),
        )
        return [r[0] for r in rows]

    def source_files(self) -> list[str]:
        """Every distinct source file path of current records, sorted."""
        rows = self._connect().execute(
            "SELECT DISTINCT json_extract(provenance, '$.source_file') AS f FROM records "
            "WHERE is_current = 1 AND json_extract(provenance, '$.source_file') IS NOT NULL ORDER BY f"
        )
        return [r[0] for r in rows]

    # ------------------------------------------------------------------ search
    @staticmethod
    def _where(filters: SearchFilters, alias: str, for_records: bool = False) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        id_col = "id" if for_records else "record_id"
        if filters.patient_id:
            clauses.append(f"{alias}.patient_id = ?")
            params.append(filters.patient_id)
        for column, values in (
            ("resource_type", filters.resource_types),
            ("source", filters.sources),
            (id_col, filters.record_ids),
        ):
            if values:
                clauses.append(f"{alias}.{column} IN ({','.join('?' * len(values))})")
                params.extend(values)
        if filters.exclude_patients:
            marks = ",".join("?" * len(filters.exclude_patients))
            clauses.append(f"({alias}.patient_id IS NULL OR {alias}.patient_id NOT IN ({marks}))")
            params.extend(filters.exclude_patients)
        if filters.sections and not for_records:
            clauses.append(f"{alias}.section IN ({','.join('?' * len(filters.sections))})")
            params.extend(filters.sections)
        if filters.since:
            clauses.append(f"{alias}.effective >= ?")
            params.append(iso_utc(filters.since))
        if filters.until:
            clauses.append(f"{alias}.effective <= ?")
            params.append(iso_utc(filters.until))
        return ("AND " + " AND ".join(clauses)) if clauses else "", params

    def _bm25(self, text: str, filters: SearchFilters, n: int) -> list[tuple[int, float]]:
        if self.bm25_index == "fts5":
            return self._bm25_fts5(text, filters, n)
        words = query_words(text)
        if not words:
            return []
        state = self._refresh_sparse()
        postings = state.postings
        if postings.n_docs == 0:
            return []
        rows = None
        if not filters.is_empty():
            generations = (state.generation, state.delete_generation)
            rows = self._filter_rows(postings.ids, state.filter_rows, generations, filters)
            if rows.size == 0:
                return []
        return self._sparse_index.search(words, n, postings=postings, rows=rows)

    def _bm25_fts5(self, text: str, filters: SearchFilters, n: int) -> list[tuple[int, float]]:
        match = fts_query(text)
        if match is None:
            return []
        where, params = self._where(filters, alias="c")
        conn = self._connect()
        try:
            if where:
                sql = (
                    "SELECT c.id, bm25(chunks_fts) AS s FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid "
                    f"WHERE chunks_fts MATCH ? {where} ORDER BY s LIMIT ?"
                )
            else:
                sql = "SELECT rowid, bm25(chunks_fts) AS s FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY s LIMIT ?"
            rows = conn.execute(sql, (match, *params, n)).fetchall()
        except sqlite3.OperationalError as exc:
            raise RetrievalError(f"keyword search failed: {exc}") from exc
        return [(int(r[0]), -float(r[1])) for r in rows]

    def _generations(self, conn: sqlite3.Connection) -> tuple[int, int]:
        rows = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('generation', 'delete_generation')"))
        return int(rows.get("generation", 0)), int(rows.get("delete_generation", 0))

    def _refresh_sparse(self) -> _SparseState:
        """The in-memory BM25 index, brought up to the database's current generation.

        First call: built from every chunk text (lazily, with a line on stderr). Later: chunks above the
        last indexed id are appended; after a delete (``delete_generation`` moved) the removed chunks'
        rows are dropped first. The texts are read in one read transaction of a private connection, so
        counters and rows agree, the store's connection and lock stay free for writes meanwhile, and the
        pages read do not stay in the store's page cache. Refreshes are serialised by their own lock.
        """
        state = self._sparse
        with self._lock:  # the shared connection: one statement at a time
            generation = self._meta_int(self._connect(), "generation")
        if generation == state.generation:
            return state
        with self._sparse_lock:
            state = self._sparse  # another thread may have refreshed meanwhile
            index = self._sparse_index
            first = state.generation < 0
            started = time.perf_counter()
            try:
                reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
                try:
                    reader.execute("PRAGMA query_only=1")
                    reader.execute("BEGIN")  # deferred: one read snapshot for the counters and the rows
                    generation, delete_generation = self._generations(reader)
                    if generation == state.generation:
                        return state
                    if first:
                        print(
                            f"Building the in-memory BM25 index of {self.path.name} (first keyword search)...",
                            file=sys.stderr,
                            flush=True,
                        )
                    last = index.last_id
                    keep: npt.NDArray[np.int64] | None = None
                    if delete_generation != state.delete_generation and index.postings.n_docs:
                        keep = self._chunk_ids(reader, "WHERE id <= ?", (last,))
                    postings = index.update(keep_ids=keep, new=self._texts_after(reader, last))
                finally:
                    reader.close()  # ends the read transaction
            except sqlite3.DatabaseError as exc:
                raise RetrievalError(f"{self.path}: cannot load the chunk texts for keyword search: {exc}") from exc
            self._sparse = _SparseState(postings, generation, delete_generation)
            if first:
                release_freed_memory()  # the build's temporaries (~2x the index) back to the OS
                print(
                    f"In-memory BM25 index: {postings.n_docs} chunks, {postings.n_terms} terms, "
                    f"{postings.rows.size} postings, {index.nbytes / 2**20:.0f} MiB, "
                    f"{time.perf_counter() - started:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
            return self._sparse

    @staticmethod
    def _chunk_ids(conn: sqlite3.Connection, where: str, params: Sequence[Any]) -> npt.NDArray[np.int64]:
        cur = conn.cursor()
        cur.row_factory = None  # plain tuples: building sqlite3.Row objects dominates large fetches
        rows = cur.execute(f"SELECT id FROM chunks {where} ORDER BY id", tuple(params)).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    @staticmethod
    def _texts_after(conn: sqlite3.Connection, last: int) -> Iterator[tuple[npt.NDArray[np.int64], list[str]]]:
        """(ids, texts) of the chunks above ``last`` in ascending id order, in batches (bounded memory)."""
        cur = conn.cursor()
        cur.row_factory = None
        while True:
            rows = cur.execute(
                "SELECT id, text FROM chunks WHERE id > ? ORDER BY id LIMIT ?", (last, _TEXT_BATCH)
            ).fetchall()
            if not rows:
                return
            last = int(rows[-1][0])
            yield np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)), [r[1] for r in rows]

    def _refresh_dense(self) -> _DenseMatrix:
        conn = self._connect()
        dense = self._dense
        generation = self._meta_int(conn, "generation")
        if generation == dense.generation:
            return dense
        delete_generation = self._meta_int(conn, "delete_generation")
        model_id = self.embedder.model_id
        other = conn.execute("SELECT model_id FROM vectors WHERE model_id != ? LIMIT 1", (model_id,)).fetchone()
        if other is not None:
            raise RetrievalError(
                f"{self.path}: the store holds vectors of {other[0]!r} but the embedder is {model_id!r}; "
                "use the same embedder or ingest into a new store"
            )
        start = 0
        if delete_generation == dense.delete_generation and dense.ids.size:
            start = int(dense.ids[-1])
        rows = conn.execute(
            "SELECT chunk_id, vec FROM vectors WHERE chunk_id > ? ORDER BY chunk_id", (start,)
        ).fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        if rows:
            buf = bytearray()  # writable, so torch can wrap it without a copy
            for r in rows:
                buf += r[1]
            mat = np.frombuffer(buf, dtype=np.float32).reshape(len(rows), -1)
        else:
            mat = np.zeros((0, self.embedder.dim), dtype=np.float32)
        if start:
            dense.ids = np.concatenate([dense.ids, ids])
            dense.matrix = np.concatenate([dense.matrix, mat])
        else:
            dense.ids, dense.matrix = ids, np.ascontiguousarray(mat)
        dense.generation = generation
        dense.delete_generation = delete_generation
        dense.filter_rows = {}
        dense.low = None
        return dense

    def _use_bf16(self, rows: int) -> bool:
        if self.dense_precision == "bf16":
            return True
        return self.dense_precision == "auto" and rows >= _BF16_MIN_ROWS and cpu_supports_bf16()

    def _low_matrix(self, dense: _DenseMatrix) -> Any:
        """The bf16 copy of the dense matrix (built once per refresh, under the store lock)."""
        with self._lock:
            if dense.low is None:
                import torch

                dense.low = torch.from_numpy(dense.matrix).to(torch.bfloat16)
            return dense.low

    def _candidate_ids(self, filters: SearchFilters, generation: int, delete_generation: int) -> npt.NDArray[np.int64]:
        """Sorted ids of the chunks passing ``filters``, cached per filter and generation (shared by both
        in-memory retrievers: at 100k chunks a broad filter's SQL costs far more than a search)."""
        key = (filters.model_dump_json(), generation, delete_generation)
        with self._lock:
            cached = self._candidates.get(key)
        if cached is not None:
            return cached
        where, params = self._where(filters, alias="c")
        cur = self._connect().cursor()
        cur.row_factory = None  # plain tuples: building sqlite3.Row objects dominates large fetches
        rows = cur.execute(f"SELECT c.id FROM chunks c WHERE 1=1 {where}", params).fetchall()
        ids = np.sort(np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)))
        with self._lock:
            while len(self._candidates) >= _FILTER_CACHE_SIZE:
                self._candidates.pop(next(iter(self._candidates)))
            self._candidates[key] = ids
        return ids

    def _filter_rows(
        self,
        ids: npt.NDArray[np.int64],
        cache: dict[str, npt.NDArray[np.intp]],
        generations: tuple[int, int],
        filters: SearchFilters,
    ) -> npt.NDArray[np.intp]:
        """Positions in ``ids`` (one retriever's snapshot) of the chunks passing ``filters``, cached in ``cache``
        (the snapshot's own dict, replaced with the snapshot: it always describes ``ids``)."""
        key = filters.model_dump_json()
        with self._lock:
            cached = cache.get(key)
        if cached is not None:
            return cached
        cand = self._candidate_ids(filters, *generations)
        rows = np.minimum(np.searchsorted(ids, cand), max(ids.size - 1, 0))
        rows = rows[ids[rows] == cand] if ids.size else rows[:0]
        with self._lock:
            if len(cache) >= _FILTER_CACHE_SIZE:
                cache.pop(next(iter(cache)))
            cache[key] = rows
        return rows

    def _dense_search(self, text: str, filters: SearchFilters, n: int) -> list[tuple[int, float]]:
        with self._lock:
            dense = self._refresh_dense()
            ids, matrix, cache = dense.ids, dense.matrix, dense.filter_rows
            generations = (dense.generation, dense.delete_generation)
        if ids.size == 0:
            return []
        query = self.embedder.embed([text])[0]
        rows: npt.NDArray[np.intp] | None = None
        if not filters.is_empty():
            rows = self._filter_rows(ids, cache, generations, filters)
            if rows.size == 0:
                return []
        cand: npt.NDArray[np.intp] | None
        if rows is not None and rows.size * 8 < ids.size:
            # few candidates: score just their rows, exactly
            cand, scores = rows, matrix[rows] @ query
        elif self._use_bf16(ids.size):
            import torch

            low = self._low_matrix(dense)
            with torch.inference_mode():
                approx = torch.mv(low, torch.from_numpy(query).to(torch.bfloat16)).float().numpy()
            base = approx if rows is None else approx[rows]
            pool = min(max(4 * n, _BF16_RERANK_POOL), base.size)
            sel = np.argpartition(-base, pool - 1)[:pool]
            cand = sel if rows is None else rows[sel]
            scores = matrix[cand] @ query  # exact fp32 re-scoring of the pool
        else:
            full = _matvec(matrix, query)
            cand, scores = (None, full) if rows is None else (rows, full[rows])
        top = min(n, scores.size)
        if top == 0:
            return []
        idx = np.argpartition(-scores, top - 1)[:top]
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        chosen = idx if cand is None else cand[idx]
        return [(int(ids[i]), float(s)) for i, s in zip(chosen, scores[idx], strict=True)]

    def search(self, query: SearchQuery) -> list[SearchHit]:
        n = query.candidates or max(50, 4 * query.k)
        bm25: list[tuple[int, float]] = []
        dense: list[tuple[int, float]] = []
        if query.mode in ("bm25", "hybrid"):
            bm25 = self._bm25(query.text, query.filters, n)
        if query.mode in ("dense", "hybrid"):
            dense = self._dense_search(query.text, query.filters, n)
        fused = (
            reciprocal_rank_fusion([bm25, dense], k=self.rrf_k, weights=(1.0, self.dense_weight))
            if query.mode == "hybrid"
            else []
        )
        bm25_info = {cid: (rank, score) for rank, (cid, score) in enumerate(bm25, start=1)}
        dense_info = {cid: (rank, score) for rank, (cid, score) in enumerate(dense, start=1)}
        if query.mode == "bm25":
            ordered = [(cid, s) for cid, s in bm25]
        elif query.mode == "dense":
            ordered = [(cid, s) for cid, s in dense]
        else:
            ordered = fused
        rows = self._hydrate([cid for cid, _ in ordered])
        hits: list[SearchHit] = []
        seen: set[str] = set()
        for cid, score in ordered:
            row = rows.get(cid)
            if row is None:
                continue
            if query.one_per_record:
                if row["record_id"] in seen:
                    continue
                seen.add(row["record_id"])
            b = bm25_info.get(cid)
            d = dense_info.get(cid)
            prov = Provenance.model_validate_json(row["provenance"])
            transforms: list[Transform] = []
            if row["chunker"]:
                transforms.append(Transform.model_validate_json(row["chunker"]))
            if d is not None:
                transforms.append(Transform(name="embed", version=self.embedder.model_id))
            prov = prov.model_copy(
                update={
                    "transforms": (*prov.transforms, *transforms),
                    "derived_from": (row["record_id"],),
                    "model_id": self.embedder.model_id if d is not None else prov.model_id,
                }
            )
            hits.append(
                SearchHit(
                    rank=len(hits) + 1,
                    score=score,
                    chunk_id=cid,
                    record_id=row["record_id"],
                    record_version=row["version"],
                    resource_type=row["resource_type"],
                    source=row["source"],
                    patient_id=row["patient_id"],
                    effective=_parse_dt(row["effective"]),
                    section=row["section"],
                    text=row["text"],
                    bm25_score=b[1] if b else None,
                    bm25_rank=b[0] if b else None,
                    dense_score=d[1] if d else None,
                    dense_rank=d[0] if d else None,
                    provenance=prov,
                )
            )
            if len(hits) >= query.k:
                break
        return hits

    def _hydrate(self, chunk_ids: Sequence[int]) -> dict[int, sqlite3.Row]:
        out: dict[int, sqlite3.Row] = {}
        conn = self._connect()
        for part in _batched(list(chunk_ids)):
            marks = ",".join("?" * len(part))
            rows = conn.execute(
                "SELECT c.id, c.record_id, c.section, c.text, c.resource_type, c.source, c.patient_id, "
                "c.effective, r.version, r.provenance, r.chunker FROM chunks c "
                f"JOIN records r ON r.id = c.record_id AND r.is_current = 1 WHERE c.id IN ({marks})",
                tuple(part),
            )
            for row in rows:
                out[int(row["id"])] = row
        return out

    # ------------------------------------------------------------------ runs, files, reporting
    def start_run(self, run_id: str, command: str) -> None:
        with self._txn() as conn:
            conn.execute(
                "INSERT INTO ingest_runs(id, started_at, status, command) VALUES (?,?,?,?)",
                (run_id, _now(), "running", command),
            )

    def finish_run(self, run_id: str, status: str, stats: dict[str, Any]) -> None:
        with self._txn() as conn:
            conn.execute(
                "UPDATE ingest_runs SET finished_at=?, status=?, stats=? WHERE id=?",
                (_now(), status, json.dumps(stats, sort_keys=True), run_id),
            )

    def record_error(self, run_id: str, path: str, locator: str | None, reason: str) -> None:
        with self._txn() as conn:
            conn.execute(
                "INSERT INTO ingest_errors(run_id, path, locator, reason, created_at) VALUES (?,?,?,?,?)",
                (run_id, path, locator, reason, _now()),
            )

    def run_errors(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._connect().execute(
            "SELECT path, locator, reason FROM ingest_errors WHERE run_id=? ORDER BY id", (run_id,)
        )
        return [dict(r) for r in rows]

    def file_done(self, path: str, sha256: str) -> bool:
        row = self._connect().execute("SELECT 1 FROM files WHERE path=? AND sha256=?", (path, sha256)).fetchone()
        return row is not None

    def mark_file(self, path: str, sha256: str, size: int, connector: str, run_id: str, records: int) -> None:
        with self._txn() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO files(path, sha256, size, connector, run_id, records, completed_at) "
                "VALUES (?,?,?,?,?,?,?)",
                (path, sha256, size, connector, run_id, records, _now()),
            )

    def memory_indexes(self) -> dict[str, int]:
        """Sizes of the in-memory indexes as loaded now (zeros before the first search that needs them)."""
        postings = self._sparse.postings
        return {
            "bm25_chunks": postings.n_docs,
            "bm25_terms": postings.n_terms,
            "bm25_postings": int(postings.rows.size),
            "bm25_bytes": self._sparse_index.nbytes,
            "dense_chunks": int(self._dense.ids.size),
            "dense_bytes": int(self._dense.matrix.nbytes + self._dense.ids.nbytes),
        }

    def stats(self) -> dict[str, Any]:
        conn = self._connect()

        def scalar(sql: str) -> int:
            return int(conn.execute(sql).fetchone()[0])

        by_type = {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT resource_type, count(*) FROM records WHERE is_current=1 GROUP BY 1 ORDER BY 1"
            )
        }
        by_source = {
            r[0]: r[1]
            for r in conn.execute("SELECT source, count(*) FROM records WHERE is_current=1 GROUP BY 1 ORDER BY 1")
        }
        last_run = conn.execute(
            "SELECT id, status, started_at, finished_at FROM ingest_runs ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
        size = sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.is_file())
        return {
            "store": str(self.path),
            "schema_version": SCHEMA_VERSION,
            "records": scalar("SELECT count(*) FROM records WHERE is_current=1"),
            "record_versions": scalar("SELECT count(*) FROM records"),
            "patients": scalar(
                "SELECT count(DISTINCT patient_id) FROM records WHERE is_current=1 AND patient_id IS NOT NULL"
            ),
            "chunks": scalar("SELECT count(*) FROM chunks"),
            "vectors": scalar("SELECT count(*) FROM vectors"),
            "files": scalar("SELECT count(*) FROM files"),
            "runs": scalar("SELECT count(*) FROM ingest_runs"),
            "by_type": by_type,
            "by_source": by_source,
            "embedder": self.embedder.model_id,
            "last_run": dict(last_run) if last_run else None,
            "bytes_on_disk": size,
        }

    def check(self) -> dict[str, Any]:
        """Consistency check: orphan chunks/vectors, chunks of non-current versions, FTS integrity."""
        conn = self._connect()
        problems: list[str] = []
        orphan_chunks = conn.execute(
            "SELECT count(*) FROM chunks c WHERE NOT EXISTS "
            "(SELECT 1 FROM records r WHERE r.id = c.record_id AND r.is_current = 1)"
        ).fetchone()[0]
        if orphan_chunks:
            problems.append(f"{orphan_chunks} chunks without a current record")
        missing_vectors = conn.execute(
            "SELECT count(*) FROM chunks c WHERE NOT EXISTS (SELECT 1 FROM vectors v WHERE v.chunk_id = c.id)"
        ).fetchone()[0]
        if missing_vectors:
            problems.append(f"{missing_vectors} chunks without a vector")
        orphan_vectors = conn.execute(
            "SELECT count(*) FROM vectors v WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.id = v.chunk_id)"
        ).fetchone()[0]
        if orphan_vectors:
            problems.append(f"{orphan_vectors} vectors without a chunk")
        try:
            conn.execute("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)")
        except sqlite3.DatabaseError as exc:
            problems.append(f"FTS index inconsistent with chunks: {exc}")
        integrity = conn.execute("PRAGMA quick_check").fetchone()[0]
        if integrity != "ok":
            problems.append(f"sqlite quick_check: {integrity}")
        return {"ok": not problems, "problems": problems}


def reciprocal_rank_fusion(
    rankings: Iterable[Sequence[tuple[int, float]]], k: int = 60, weights: Sequence[float] | None = None
) -> list[tuple[int, float]]:
    """Fuse ranked lists by (weighted) RRF: score(d) = sum over lists of w / (k + rank_d). Ties keep first-seen
    order. ``weights`` default to 1 per list."""
    scores: dict[int, float] = {}
    for i, ranking in enumerate(rankings):
        w = 1.0 if weights is None else weights[i]
        for rank, (cid, _) in enumerate(ranking, start=1):
            scores[cid] = scores.get(cid, 0.0) + w / (k + rank)
    return sorted(scores.items(), key=lambda item: -item[1])
