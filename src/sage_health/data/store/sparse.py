"""``SparseBM25Index``: an in-memory BM25 index over chunk texts that scores exactly like SQLite FTS5's bm25().

Why: FTS5 answers an OR-query by walking the posting list of every query term through SQLite pages and
evaluating ``bm25()`` row by row; common medical words match tens of thousands of chunks, so keyword search
took p50 26-34 ms at 100k chunks. This index keeps the same statistics in NumPy arrays (bm25s' idea) and
scores a query with one weighted ``np.bincount`` over the query terms' postings plus a partial sort.

Same tokens, same formula as FTS5 (``SqliteDocumentStore`` keeps FTS5 as the persisted source of truth):

* Tokens come from SQLite's own tokenizer, configured with the store's ``tokenize=`` string, run in a private
  in-memory FTS5 table (read back through ``fts5vocab``). Pure-ASCII texts take a fast path: their tokens are
  the runs of ``[a-z0-9]`` of the lower-cased text (what unicode61 produces for ASCII), and each distinct word
  is stemmed once by that FTS5 table and cached. Any text with a non-ASCII character is tokenised by the FTS5
  table itself, so diacritics, case folding and Unicode categories follow SQLite exactly.
* ``score = sum over query phrases of idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))`` with
  ``idf = log((N - df + 0.5) / (df + 0.5))`` clamped to 1e-6 when not positive, k1 = 1.2, b = 0.75, N the
  number of chunks and avgdl their mean token count (FTS5's ``fts5Bm25Function``). Two query words with the
  same stem are two phrases for FTS5 and count twice here too.

Layout: a term-major (CSC) posting matrix, ``indptr`` (int64, per term) + ``rows`` (int32, chunk row) + ``tf``
(uint16) + ``weights`` (float32, the length-normalised tf part). idf is computed per query from the posting
counts, so it is always current. Because avgdl is global, every change recomputes ``weights`` (O(postings),
vectorised). New chunks are merged in O(postings) without re-tokenising the rest and deleted chunks are
dropped (compacted) the same way: ~0.05 s to append 100 chunks and ~0.13 s to drop 3 at 100k chunks, and the
result equals a fresh build. Snapshots are immutable and swapped whole, so a search running in another
thread always sees one consistent index.

Cost, measured on the latency benchmark's 100k-chunk store (7.73 M tokens, 4.81 M postings, 32,680 terms):
10 bytes per posting + 12 per chunk = 47 MiB of arrays, plus ~8 MiB of word/term dictionaries: 55 MiB per
100k chunks. The build takes ~3.5 s on one core (tokenising is most of it); its temporaries peak at about
twice the index and are returned to the OS afterwards (process RSS +80 MiB after the build, SQLite's page
cache of the chunk texts included). A refresh builds the new snapshot beside the old one (2x transiently).
"""

from __future__ import annotations

import itertools
import math
import sqlite3
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from sage_health.core.errors import RetrievalError

K1 = 1.2
B = 0.75
# ASCII fast path: bytes.translate lower-cases A-Z and turns every byte that is not [a-z0-9] into a space, so
# bytes.split() yields exactly unicode61's tokens of an ASCII text (letters and digits are its only token
# characters there); ~1.6x faster than re.findall and no str objects per token.
_ASCII_FOLD = bytes(c + 32 if 65 <= c <= 90 else c if 48 <= c <= 57 or 97 <= c <= 122 else 32 for c in range(256))
_STEM_BATCH = 20_000  # words per scratch-table row when stemming
_QUERY_CACHE_SIZE = 10_000  # stems of query words that never occur in the corpus

RowArray = npt.NDArray[np.intp]


@dataclass(frozen=True)
class Postings:
    """One immutable state of the index. Rows are chunks in ascending chunk-id order."""

    ids: npt.NDArray[np.int64]
    """Chunk id of each row (ascending)."""
    lengths: npt.NDArray[np.int32]
    """Tokens per chunk (FTS5's document size)."""
    indptr: npt.NDArray[np.int64]
    """Postings of term t are ``[indptr[t], indptr[t + 1])``; len = terms + 1."""
    rows: npt.NDArray[np.int32]
    tf: npt.NDArray[np.integer[Any]]
    weights: npt.NDArray[np.float32]
    """``tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))`` per posting (idf is applied per query)."""
    total_tokens: int

    @property
    def n_docs(self) -> int:
        return int(self.ids.size)

    @property
    def n_terms(self) -> int:
        return int(self.indptr.size - 1)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.ids, self.lengths, self.indptr, self.rows, self.tf, self.weights))

    @staticmethod
    def empty() -> Postings:
        return Postings(
            ids=np.zeros(0, dtype=np.int64),
            lengths=np.zeros(0, dtype=np.int32),
            indptr=np.zeros(1, dtype=np.int64),
            rows=np.zeros(0, dtype=np.int32),
            tf=np.zeros(0, dtype=np.uint16),
            weights=np.zeros(0, dtype=np.float32),
            total_tokens=0,
        )


@dataclass(frozen=True)
class _Batch:
    """Postings of a batch of new chunks, term-major: (term, doc) pairs sorted by term then doc."""

    ids: npt.NDArray[np.int64]
    lengths: npt.NDArray[np.int32]
    terms: npt.NDArray[np.int32]
    docs: npt.NDArray[np.int32]
    tf: npt.NDArray[np.int32]


class Fts5Vocabulary:
    """Maps text to FTS5 tokens (term ids) with SQLite's own tokenizer; term ids are dense and stable."""

    def __init__(self, tokenize: str) -> None:
        self.tokenize = tokenize
        self.term_ids: dict[str, int] = {}
        """FTS5 token (stemmed) -> term id."""
        self._word_terms: dict[bytes, int] = {}
        """Lower-case ASCII word seen in the corpus -> term id of its stem."""
        self._query_stems: dict[str, str] = {}
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _scratch(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            tokenize = self.tokenize.replace("'", "''")
            try:
                conn.execute(f"CREATE VIRTUAL TABLE scratch USING fts5(text, tokenize='{tokenize}')")
                conn.execute("CREATE VIRTUAL TABLE scratch_vocab USING fts5vocab(scratch, 'instance')")
            except sqlite3.OperationalError as exc:
                raise RetrievalError(
                    f"cannot create an FTS5 table with tokenize={self.tokenize!r}: {exc}; "
                    "this SQLite build needs FTS5 and fts5vocab"
                ) from exc
            self._conn = conn
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @property
    def nbytes(self) -> int:
        """Bytes held by the dictionaries: tables, keys and term-id ints (O(terms) to compute)."""
        total = 0
        for table in (self.term_ids, self._word_terms, self._query_stems):
            total += sys.getsizeof(table) + sum(sys.getsizeof(k) for k in table)
        ids = itertools.chain(self.term_ids.values(), self._word_terms.values())
        total += sum(sys.getsizeof(v) for v in ids if v > 256)  # CPython caches ints <= 256
        return total + sum(sys.getsizeof(v) for v in self._query_stems.values())

    def _stem(self, words: Sequence[str]) -> list[str]:
        """FTS5 tokens of ASCII ``[a-z0-9]+`` words, one each (caller holds the lock)."""
        conn = self._scratch()
        out: list[str] = []
        for start in range(0, len(words), _STEM_BATCH):
            part = words[start : start + _STEM_BATCH]
            stems: list[str | None] = [None] * len(part)
            conn.execute("BEGIN")
            try:
                conn.execute("INSERT INTO scratch(rowid, text) VALUES (1, ?)", (" ".join(part),))
                for term, offset in conn.execute('SELECT term, "offset" FROM scratch_vocab'):
                    if offset >= len(stems) or stems[offset] is not None:
                        stems[0] = None  # more tokens than words: reported below
                        break
                    stems[offset] = term
            finally:
                conn.execute("ROLLBACK")  # the scratch table is only a tokenizer: leave it empty
            if any(s is None for s in stems):
                raise RetrievalError(
                    f"the FTS5 tokenizer {self.tokenize!r} did not produce one token per ASCII word; "
                    "the in-memory BM25 index cannot mirror it (use bm25_index='fts5')"
                )
            out.extend(s for s in stems if s is not None)
        return out

    def _learn(self, words: Iterable[bytes]) -> None:
        unseen = [w for w in words if w not in self._word_terms]
        if not unseen:
            return
        for word, stem in zip(unseen, self._stem([w.decode("ascii") for w in unseen]), strict=True):
            self._word_terms[word] = self.term_ids.setdefault(stem, len(self.term_ids))

    def _tokenize_with_sqlite(self, texts: Sequence[str]) -> tuple[list[int], list[int], list[int]]:
        """(doc, term id, tf) triples of ``texts`` tokenised by the FTS5 scratch table (caller holds the lock)."""
        conn = self._scratch()
        conn.execute("BEGIN")
        try:
            conn.executemany("INSERT INTO scratch(rowid, text) VALUES (?, ?)", enumerate(texts, start=1))
            rows = conn.execute("SELECT doc, term, count(*) FROM scratch_vocab GROUP BY doc, term").fetchall()
        finally:
            conn.execute("ROLLBACK")  # the scratch table is only a tokenizer: leave it empty
        term_ids = self.term_ids
        docs = [doc - 1 for doc, _, _ in rows]
        terms = [term_ids.setdefault(term, len(term_ids)) for _, term, _ in rows]
        counts = [n for _, _, n in rows]
        return docs, terms, counts

    def postings(self, ids: npt.NDArray[np.int64], texts: Sequence[str]) -> _Batch:
        """Tokenise a batch of chunk texts into term-major postings (new terms get new ids)."""
        n = len(texts)
        with self._lock:
            ascii_rows = [i for i, t in enumerate(texts) if t.isascii()]
            other_rows = [i for i, t in enumerate(texts) if not t.isascii()]
            word_lists = [texts[i].encode("ascii").translate(_ASCII_FOLD).split() for i in ascii_rows]
            flat = list(itertools.chain.from_iterable(word_lists))
            self._learn(dict.fromkeys(flat))
            word_terms = self._word_terms
            terms = np.fromiter(map(word_terms.__getitem__, flat), dtype=np.int64, count=len(flat))
            per_doc = np.fromiter(map(len, word_lists), dtype=np.int64, count=len(word_lists))
            docs = np.repeat(np.asarray(ascii_rows, dtype=np.int64), per_doc)
            lengths = np.zeros(n, dtype=np.int64)
            lengths[ascii_rows] = per_doc
            if other_rows:
                o_docs, o_terms, o_counts = self._tokenize_with_sqlite([texts[i] for i in other_rows])
                o_doc_rows = np.asarray(other_rows, dtype=np.int64)[np.asarray(o_docs, dtype=np.int64)]
                o_tf = np.asarray(o_counts, dtype=np.int64)
                np.add.at(lengths, o_doc_rows, o_tf)
                terms = np.concatenate([terms, np.repeat(np.asarray(o_terms, dtype=np.int64), o_tf)])
                docs = np.concatenate([docs, np.repeat(o_doc_rows, o_tf)])
        # (term, doc) pairs with their counts, sorted by term then doc
        keys, tf = np.unique(terms * max(n, 1) + docs, return_counts=True)
        return _Batch(
            ids=np.asarray(ids, dtype=np.int64),
            lengths=lengths.astype(np.int32),
            terms=(keys // max(n, 1)).astype(np.int32),
            docs=(keys % max(n, 1)).astype(np.int32),
            tf=tf.astype(np.int32),
        )

    def query_terms(self, words: Sequence[str]) -> list[int]:
        """Term ids of lower-case ASCII query words (one per word, repeats kept; unknown stems dropped)."""
        out: list[int] = []
        missing: list[str] = []
        for word in words:
            term = self._word_terms.get(word.encode("ascii"))
            if term is not None:
                out.append(term)
            else:
                missing.append(word)
        if missing:
            with self._lock:
                unseen = [w for w in dict.fromkeys(missing) if w not in self._query_stems]
                if unseen:
                    if len(self._query_stems) + len(unseen) > _QUERY_CACHE_SIZE:
                        self._query_stems.clear()
                    self._query_stems.update(zip(unseen, self._stem(unseen), strict=True))
                stems = [self._query_stems.get(w) for w in missing]
            out.extend(t for t in (self.term_ids.get(s) for s in stems if s is not None) if t is not None)
        return out


class SparseBM25Index:
    """The keyword retriever: exact FTS5-compatible BM25 over in-memory postings. Cheap to construct.

    Not thread-safe for updates (the owner serialises ``update`` calls); ``search`` may run concurrently
    with an update and uses the snapshot it is given.
    """

    def __init__(self, tokenize: str, *, k1: float = K1, b: float = B) -> None:
        self.k1 = k1
        self.b = b
        self.vocabulary = Fts5Vocabulary(tokenize)
        self.postings = Postings.empty()

    def close(self) -> None:
        self.vocabulary.close()

    @property
    def last_id(self) -> int:
        ids = self.postings.ids
        return int(ids[-1]) if ids.size else 0

    @property
    def nbytes(self) -> int:
        return self.postings.nbytes + self.vocabulary.nbytes

    def update(
        self, *, keep_ids: npt.NDArray[np.int64] | None, new: Iterable[tuple[npt.NDArray[np.int64], Sequence[str]]]
    ) -> Postings:
        """Drop every chunk not in ``keep_ids`` (None: keep all), append ``new`` (ids above ``last_id``, ascending)
        batch by batch, recompute the weights, and swap in the new snapshot (returned)."""
        cur = self.postings
        if keep_ids is not None:
            cur = _retain(cur, np.isin(cur.ids, keep_ids, assume_unique=True))
        batches = [self.vocabulary.postings(ids, texts) for ids, texts in new if len(texts)]
        if batches:
            cur = _append(cur, batches, len(self.vocabulary.term_ids))
        if cur is not self.postings:
            cur = self._reweighted(cur)
            self.postings = cur
        return cur

    def _reweighted(self, p: Postings) -> Postings:
        if p.n_docs == 0 or p.rows.size == 0:
            return Postings(p.ids, p.lengths, p.indptr, p.rows, p.tf, np.zeros(p.rows.size, np.float32), p.total_tokens)
        avgdl = p.total_tokens / p.n_docs
        k1, b = self.k1, self.b
        norm = (k1 * (1.0 - b) + (k1 * b / avgdl) * p.lengths.astype(np.float64)).astype(np.float32)
        tf = p.tf.astype(np.float32)
        weights = tf * np.float32(k1 + 1.0) / (tf + norm[p.rows])
        return Postings(p.ids, p.lengths, p.indptr, p.rows, p.tf, weights.astype(np.float32), p.total_tokens)

    def search(
        self, words: Sequence[str], n: int, *, postings: Postings | None = None, rows: RowArray | None = None
    ) -> list[tuple[int, float]]:
        """Top ``n`` (chunk id, score) by BM25 for the OR of ``words`` (lower-case ASCII, as given to FTS5).

        ``rows`` restricts the ranking to those rows of ``postings`` (the filter's candidates): filtering
        happens before the top-n is taken. Ties are broken by chunk id. Chunks matching no word are never
        returned.
        """
        p = self.postings if postings is None else postings
        if n <= 0 or p.n_docs == 0 or not words:
            return []
        terms = Counter(t for t in self.vocabulary.query_terms(words) if t < p.n_terms)
        n_docs = p.n_docs
        hit_rows: list[npt.NDArray[np.int32]] = []
        hit_weights: list[npt.NDArray[np.float64]] = []
        for term, repeats in terms.items():
            start, end = int(p.indptr[term]), int(p.indptr[term + 1])
            df = end - start
            if df == 0:
                continue
            idf = math.log((n_docs - df + 0.5) / (df + 0.5))
            if idf <= 0.0:
                idf = 1e-6  # FTS5's clamp
            hit_rows.append(p.rows[start:end])
            hit_weights.append(p.weights[start:end].astype(np.float64) * (idf * repeats))
        if not hit_rows:
            return []
        touched: RowArray
        scores: npt.NDArray[np.float64]
        if rows is None and len(hit_rows) == 1:  # one term: its postings are the matches
            touched, scores = hit_rows[0].astype(np.intp), hit_weights[0]
        else:
            all_scores = np.bincount(
                np.concatenate(hit_rows), weights=np.concatenate(hit_weights), minlength=n_docs
            ).astype(np.float64, copy=False)  # float64 already; the cast is for the type checker
            if rows is None:
                touched = np.flatnonzero(all_scores > 0.0)
                scores = all_scores[touched]
            else:  # the filter's candidates only: filtering happens before the top-n
                sub = all_scores[rows]
                keep = np.flatnonzero(sub > 0.0)
                touched, scores = rows[keep], sub[keep]
        if scores.size == 0:
            return []
        if scores.size > n:
            # the n-th best score, then every row scoring at least that (ties at the cut included), so that
            # ties resolve to the lowest chunk id as FTS5's ORDER BY over ascending rowids does
            nth = scores[np.argpartition(-scores, n - 1)[n - 1]]
            keep = np.flatnonzero(scores >= nth)
            touched, scores = touched[keep], scores[keep]
        order = np.lexsort((touched, -scores))[:n]
        return [(int(p.ids[r]), float(s)) for r, s in zip(touched[order], scores[order], strict=True)]


def _retain(p: Postings, keep: npt.NDArray[np.bool_]) -> Postings:
    """``p`` without the rows where ``keep`` is False (rows renumbered, term ids unchanged)."""
    if keep.all():
        return p
    new_row = np.cumsum(keep, dtype=np.int64) - 1
    live = keep[p.rows]
    csum = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(live, dtype=np.int64)])
    indptr = csum[p.indptr]
    lengths = p.lengths[keep]
    return Postings(
        ids=p.ids[keep],
        lengths=lengths,
        indptr=indptr,
        rows=new_row[p.rows[live]].astype(np.int32),
        tf=p.tf[live],
        weights=p.weights[live],
        total_tokens=int(lengths.sum(dtype=np.int64)),
    )


def _append(p: Postings, batches: list[_Batch], n_terms: int) -> Postings:
    """``p`` with the chunks of ``batches`` appended as new rows, in order (ids above ``p``'s, ascending).

    O(postings), no sort: each term's new postings go after its old ones, batch after batch, so rows stay
    ascending within every term. New postings are placed batch by batch (temporaries of one batch); the old
    ones then fill the remaining slots in order through one boolean mask. ``batches`` is emptied as it goes.
    """
    ids = np.concatenate([p.ids, *(b.ids for b in batches)])
    if ids.size > 1 and not bool(np.all(ids[1:] > ids[:-1])):
        raise RetrievalError("in-memory BM25 index: new chunk ids must be ascending and above the indexed ones")
    if ids.size >= 2**31:
        raise RetrievalError("in-memory BM25 index: more than 2^31 chunks; use bm25_index='fts5'")
    lengths = np.concatenate([p.lengths, *(b.lengths for b in batches)])
    total_tokens = p.total_tokens + sum(int(b.lengths.sum(dtype=np.int64)) for b in batches)
    old_counts = np.zeros(n_terms, dtype=np.int64)
    old_counts[: p.n_terms] = np.diff(p.indptr)
    batch_counts = [np.bincount(b.terms, minlength=n_terms) for b in batches]
    indptr = np.zeros(n_terms + 1, dtype=np.int64)
    np.cumsum(old_counts + sum(batch_counts, np.zeros(n_terms, dtype=np.int64)), out=indptr[1:])
    tf_max = max([int(p.tf.max(initial=0)), *(int(b.tf.max(initial=0)) for b in batches)])
    tf_dtype: type[np.integer[Any]] = np.uint16 if tf_max < 2**16 else np.int32
    rows = np.empty(int(indptr[-1]), dtype=np.int32)
    tf: npt.NDArray[np.integer[Any]] = np.empty(rows.size, dtype=tf_dtype)
    is_old = np.ones(rows.size, dtype=bool)
    fill = indptr[:-1] + old_counts  # next free slot of each term
    first_row = p.n_docs
    batches.reverse()  # pop() from the end = in order, freeing each batch once placed
    for counts in batch_counts:
        batch = batches.pop()
        run_start = np.zeros(n_terms + 1, dtype=np.int64)
        np.cumsum(counts, out=run_start[1:])
        terms = batch.terms.astype(np.intp)
        # the batch is sorted by term: a posting's rank within its term's run is its index minus the run start
        pos = fill[terms] + (np.arange(terms.size, dtype=np.int64) - run_start[terms])
        rows[pos] = batch.docs + np.int32(first_row)
        tf[pos] = batch.tf
        is_old[pos] = False
        fill += counts
        first_row += batch.ids.size
    rows[is_old] = p.rows
    tf[is_old] = p.tf
    return Postings(
        ids=ids,
        lengths=lengths,
        indptr=indptr,
        rows=rows,
        tf=tf,
        weights=p.weights,  # recomputed by the caller
        total_tokens=total_tokens,
    )
