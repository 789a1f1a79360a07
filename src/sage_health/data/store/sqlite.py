"""``SqliteDocumentStore``: one SQLite database (WAL) holding records with every version and its
provenance, section-aware chunks, an FTS5 keyword index and the dense vectors.

The store is assembled from parts along its seams, each in its own module:

* :mod:`~sage_health.data.store.sqlite_schema`: the schema, module helpers and the shared connection;
* :mod:`~sage_health.data.store.sqlite_search`: keyword + dense search, the in-memory indexes, fusion;
* :mod:`~sage_health.data.store.sqlite_ledger`: the ingest ledger, ``stats`` and ``check``;
* :mod:`~sage_health.data.store.sqlite_erasure`: erasure and lineage;
* this module: the store itself (construction, writes, reads, deletes).

Design notes

* Writes are atomic per call: chunking and embedding happen *before* ``BEGIN IMMEDIATE``; the
  transaction then stores records, chunks (FTS5 rows follow by trigger) and vectors, and bumps a
  generation counter. A crash or ``kill -9`` at any point leaves either the whole batch or none of it.
* Idempotency by content hash: a record whose current version has the same hash is skipped before any
  embedding work; a changed record gets version n+1, the old version stays with its provenance, and only
  the current version keeps chunks (so only it is searchable).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from sage_health.core.errors import ConfigError, StoreError
from sage_health.core.hashing import sha256_text
from sage_health.core.provenance import Provenance
from sage_health.data.chunking import Chunk, Chunker
from sage_health.data.embed import Embedder
from sage_health.data.schema import RecordBase, iso_utc, record_from_json
from sage_health.data.store.protocol import SearchFilters, StoredRecord, WriteResult
from sage_health.data.store.sparse import SparseBM25Index
from sage_health.data.store.sqlite_erasure import SqliteErasureMixin
from sage_health.data.store.sqlite_ledger import SqliteLedgerMixin
from sage_health.data.store.sqlite_schema import FTS_TOKENIZE, SCHEMA_VERSION, _batched, _now
from sage_health.data.store.sqlite_search import (
    DEFAULT_DENSE_WEIGHT,
    SqliteSearchMixin,
    _DenseMatrix,
    _SparseState,
    fts_query,
    query_words,
    reciprocal_rank_fusion,
)

__all__ = [
    "DEFAULT_DENSE_WEIGHT",
    "FTS_TOKENIZE",
    "SCHEMA_VERSION",
    "SqliteDocumentStore",
    "fts_query",
    "query_words",
    "reciprocal_rank_fusion",
]


class SqliteDocumentStore(SqliteSearchMixin, SqliteLedgerMixin, SqliteErasureMixin):
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
