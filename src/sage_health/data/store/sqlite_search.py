"""Keyword and dense search of :class:`~sage_health.data.store.sqlite.SqliteDocumentStore` (the
:class:`SqliteSearchMixin`), the keyword-query helpers and reciprocal-rank fusion.

Design notes

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

import re
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from sage_health.core.errors import RetrievalError
from sage_health.core.provenance import Provenance, Transform
from sage_health.data.embed import Vectors, cpu_supports_bf16
from sage_health.data.embed import _release_freed_memory as release_freed_memory
from sage_health.data.schema import iso_utc
from sage_health.data.store.protocol import SearchFilters, SearchHit, SearchQuery
from sage_health.data.store.sparse import Postings, SparseBM25Index
from sage_health.data.store.sqlite_schema import SqliteDatabase, _batched, _parse_dt

_TEXT_BATCH = 5000  # chunk texts fetched per query while building the in-memory BM25 index

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


class SqliteSearchMixin(SqliteDatabase):
    """``search`` (bm25 | dense | hybrid) over the in-memory indexes (or FTS5), with the filter caches they share.
    The store's constructor sets the attributes declared here."""

    rrf_k: int
    bm25_index: Literal["memory", "fts5"]
    dense_precision: Literal["auto", "fp32", "bf16"]
    dense_weight: float
    _dense: _DenseMatrix
    _sparse_index: SparseBM25Index
    _sparse_lock: threading.Lock
    _sparse: _SparseState
    _candidates: dict[tuple[str, int, int], npt.NDArray[np.int64]]

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
