"""Retrieval-quality evaluation on real public QA data: BM25, dense and hybrid search of a fresh store.

:func:`evaluate_retrieval` builds a new :class:`~sage_health.data.store.sqlite.SqliteDocumentStore` from
exactly the files it is given and nothing else:

* every PubMedQA abstract as a ``KnowledgeDocument`` (the questions, ``QAItem`` records, are never
  indexed: they are the queries), and
* every MedQuAD answer as a ``KnowledgeDocument`` (distractors for task 1, targets for task 2).

Task ``pubmedqa``: each PubMedQA question must find its own abstract. Task ``medquad``: ``medquad_sample``
MedQuAD questions, drawn with ``seed``, must find their own answer. Each query is searched with
``filters=SearchFilters(resource_types=("KnowledgeDocument",))`` and ``one_per_record=True``, and scored on
record ids with one relevant record per query: recall@k, MRR (reciprocal rank of the relevant record within
the top ``max(k_values)``, 0 when absent) and nDCG@10 with binary relevance (``1 / log2(rank + 1)`` when
the relevant record is ranked within 10, else 0; the ideal DCG is 1).

The result records everything needed to reproduce a number: file paths with sha256, seed, sample size,
embedder model id and precision, chunker and fusion settings.
"""

from __future__ import annotations

import math
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sage_health.core.errors import DataError, IngestionError
from sage_health.core.hashing import sha256_file
from sage_health.core.provenance import Provenance, Transform
from sage_health.data.embed import CachedEmbedder, Embedder, MiniLMEmbedder
from sage_health.data.ingest.base import RecordProblem, iter_json_lines, load_json
from sage_health.data.ingest.knowledge import medquad_record, pubmedqa_records
from sage_health.data.schema import KnowledgeDocument
from sage_health.data.store.protocol import SearchFilters, SearchMode, SearchQuery
from sage_health.data.store.sqlite import SqliteDocumentStore

EVAL_VERSION = "1"
TASK_PUBMEDQA = "pubmedqa"
TASK_MEDQUAD = "medquad"
_FILTERS = SearchFilters(resource_types=("KnowledgeDocument",))
_WRITE_BATCH = 256


# ---------------------------------------------------------------------- metrics


def first_relevant_rank(ranked_ids: Sequence[str], relevant_id: str) -> int | None:
    """1-based rank of ``relevant_id`` in ``ranked_ids``, or None when it was not retrieved."""
    for rank, rid in enumerate(ranked_ids, start=1):
        if rid == relevant_id:
            return rank
    return None


def recall_at_k(ranks: Sequence[int | None], k: int) -> float:
    """Share of queries whose (single) relevant record is ranked within ``k``."""
    if not ranks:
        return 0.0
    return sum(1 for r in ranks if r is not None and r <= k) / len(ranks)


def mean_reciprocal_rank(ranks: Sequence[int | None], depth: int | None = None) -> float:
    """Mean of 1/rank (0 when absent, or ranked below ``depth`` when given)."""
    if not ranks:
        return 0.0
    return sum(1.0 / r for r in ranks if r is not None and (depth is None or r <= depth)) / len(ranks)


def ndcg_at_k(ranks: Sequence[int | None], k: int) -> float:
    """Mean nDCG@k with binary relevance and one relevant record per query (ideal DCG = 1)."""
    if not ranks:
        return 0.0
    return sum(1.0 / math.log2(r + 1) for r in ranks if r is not None and r <= k) / len(ranks)


class RankingMetrics(BaseModel):
    """Metrics of one retrieval mode on one task."""

    model_config = ConfigDict(frozen=True)

    n_queries: int
    recall: dict[int, float] = Field(description="recall@k for each k of k_values")
    mrr: float = Field(description="mean reciprocal rank within the top max(k_values)")
    ndcg_at_10: float
    found: int = Field(description="queries whose relevant record was within the top max(k_values)")
    seconds: float = 0.0
    """Wall time of the searches (query embedding included for dense and hybrid)."""
    ms_per_query: float = 0.0


def ranking_metrics(
    ranked: Sequence[Sequence[str]], relevant: Sequence[str], k_values: Sequence[int] = (1, 5, 10)
) -> RankingMetrics:
    """Metrics of ranked record-id lists against one relevant record id per query."""
    if len(ranked) != len(relevant):
        raise ValueError(f"{len(ranked)} rankings for {len(relevant)} relevant ids")
    if not k_values or min(k_values) < 1:
        raise ValueError("k_values must be positive integers")
    depth = max(k_values)
    ranks = [first_relevant_rank(list(r)[:depth], rel) for r, rel in zip(ranked, relevant, strict=True)]
    return RankingMetrics(
        n_queries=len(ranks),
        recall={k: recall_at_k(ranks, k) for k in sorted(set(k_values))},
        mrr=mean_reciprocal_rank(ranks, depth),
        ndcg_at_10=ndcg_at_k(ranks, 10),
        found=sum(1 for r in ranks if r is not None),
    )


# ---------------------------------------------------------------------- corpus and tasks


class EvalQuery(BaseModel):
    model_config = ConfigDict(frozen=True)

    text: str
    relevant_id: str


class EvalCorpus(BaseModel):
    """The documents to index and the queries of each task, read from exactly the given files."""

    model_config = ConfigDict(frozen=True)

    documents: list[KnowledgeDocument]
    tasks: dict[str, list[EvalQuery]]
    skipped_items: int = 0
    """Items the parsers rejected (a PubMedQA entry without question/contexts, a MedQuAD line without answer)."""
    medquad_available: int = 0
    """MedQuAD records with a question, before sampling."""
    medquad_shared_answers: int = 0
    """Sampled MedQuAD queries whose answer text also belongs to another record (cannot be told apart)."""


def _pubmedqa_documents(path: Path, digest: str) -> tuple[list[KnowledgeDocument], list[EvalQuery], int]:
    data = load_json(path)
    docs: list[KnowledgeDocument] = []
    queries: list[EvalQuery] = []
    skipped = 0
    try:
        items = list(pubmedqa_records(data))
    except (TypeError, ValueError) as exc:
        raise IngestionError(f"not a PubMedQA ori_pqal file: {exc}", path=str(path)) from exc
    for item in items:
        if isinstance(item, RecordProblem):
            skipped += 1
            continue
        pmid, doc, qa = item
        prov = Provenance(source_file=str(path), locator=f"$['{pmid}']", source_sha256=digest)
        docs.append(doc.model_copy(update={"provenance": prov}))
        queries.append(EvalQuery(text=qa.question, relevant_id=doc.id))
    return docs, queries, skipped


def _medquad_documents(path: Path, digest: str) -> tuple[list[KnowledgeDocument], list[EvalQuery], int]:
    docs: list[KnowledgeDocument] = []
    queries: list[EvalQuery] = []
    skipped = 0
    seen: set[str] = set()
    for lineno, obj in iter_json_lines(path):
        if isinstance(obj, RecordProblem):
            skipped += 1
            continue
        try:
            doc = medquad_record(obj, "medquad")
        except ValueError:
            skipped += 1
            continue
        if doc.id in seen:
            skipped += 1
            continue
        seen.add(doc.id)
        prov = Provenance(source_file=str(path), locator=f"line {lineno}", source_sha256=digest)
        docs.append(doc.model_copy(update={"provenance": prov}))
        question = doc.metadata.get("question", "").strip()
        if question:
            queries.append(EvalQuery(text=question, relevant_id=doc.id))
    return docs, queries, skipped


def load_eval_corpus(
    pubmedqa_file: Path, medquad_file: Path | None, *, medquad_sample: int = 2000, seed: int = 13
) -> EvalCorpus:
    """Documents and queries of both tasks. The MedQuAD sample is ``random.Random(seed).sample`` of the
    questions in file order (all of them when ``medquad_sample`` is larger)."""
    for f in (pubmedqa_file, medquad_file):
        if f is not None and not f.is_file():
            raise DataError(f"{f}: no such file; pass an existing PubMedQA / MedQuAD file")
    docs, pub_queries, skipped = _pubmedqa_documents(pubmedqa_file, sha256_file(pubmedqa_file))
    if not pub_queries:
        raise IngestionError(
            "no PubMedQA question with an abstract; is this an ori_pqal_*.json file?", path=str(pubmedqa_file)
        )
    tasks = {TASK_PUBMEDQA: pub_queries}
    available = 0
    shared = 0
    if medquad_file is not None:
        mq_docs, mq_queries, mq_skipped = _medquad_documents(medquad_file, sha256_file(medquad_file))
        if not mq_docs:
            raise IngestionError("no MedQuAD answer found; is this medquad.jsonl(.gz)?", path=str(medquad_file))
        docs.extend(mq_docs)
        skipped += mq_skipped
        available = len(mq_queries)
        n = min(medquad_sample, available)
        sample = random.Random(seed).sample(mq_queries, n)  # noqa: S311 - reproducible sampling, not security
        tasks[TASK_MEDQUAD] = sample
        answer_count = Counter(d.text for d in mq_docs)
        text_of = {d.id: d.text for d in mq_docs}
        shared = sum(1 for q in sample if answer_count[text_of[q.relevant_id]] > 1)
    return EvalCorpus(
        documents=docs,
        tasks=tasks,
        skipped_items=skipped,
        medquad_available=available,
        medquad_shared_answers=shared,
    )


# ---------------------------------------------------------------------- result


class EvalFile(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str
    sha256: str
    bytes: int


class RetrievalEvalConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    eval_version: str = EVAL_VERSION
    pubmedqa_file: EvalFile
    medquad_file: EvalFile | None
    seed: int
    medquad_sample: int
    """Requested sample size."""
    medquad_sampled: int
    """Questions actually sampled (fewer when the file has fewer)."""
    modes: tuple[str, ...]
    k_values: tuple[int, ...]
    embedder_model_id: str
    embedder_precision: str | None
    chunker: dict[str, Any]
    rrf_k: int
    dense_weight: float = 1.0
    """Weight of the dense ranking in hybrid RRF (BM25's is 1)."""
    candidates: str = "store default: max(50, 4 * k) per retriever"
    filters: str = "resource_types=('KnowledgeDocument',), one_per_record=True"
    relevance: str = "one relevant record per query (its own abstract / answer); metrics on record ids"


class TaskResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    task: str
    description: str
    n_queries: int
    modes: dict[str, RankingMetrics]


class RetrievalEvalResult(BaseModel):
    """Per-task, per-mode metrics of one evaluation run, with its configuration."""

    model_config = ConfigDict(frozen=True)

    config: RetrievalEvalConfig
    n_docs: int
    n_chunks: int
    embedded_chunks: int
    """Chunk texts the embedder was asked for while indexing (the rest reused a vector of identical text)."""
    skipped_items: int
    medquad_available: int
    medquad_shared_answers: int
    index_seconds: float
    seconds: float
    tasks: dict[str, TaskResult]
    created_at: datetime

    def table(self) -> list[dict[str, Any]]:
        """Flat rows (task, mode, metrics) for printing."""
        rows: list[dict[str, Any]] = []
        for name, task in self.tasks.items():
            for mode, m in task.modes.items():
                row: dict[str, Any] = {"task": name, "mode": mode, "n_queries": m.n_queries}
                row.update({f"recall@{k}": v for k, v in m.recall.items()})
                row.update({"mrr": m.mrr, "ndcg@10": m.ndcg_at_10, "ms_per_query": m.ms_per_query})
                rows.append(row)
        return rows


_DESCRIPTIONS = {
    TASK_PUBMEDQA: "PubMedQA question -> its own abstract (all abstracts + all MedQuAD answers indexed)",
    TASK_MEDQUAD: "MedQuAD question (seeded sample) -> its own answer record",
}


def _file_info(path: Path) -> EvalFile:
    return EvalFile(path=str(path.resolve()), sha256=sha256_file(path), bytes=path.stat().st_size)


def _batches(items: Sequence[KnowledgeDocument], size: int) -> Iterator[Sequence[KnowledgeDocument]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _fresh_db(work_dir: Path) -> Path:
    work_dir.mkdir(parents=True, exist_ok=True)
    db = work_dir / "retrieval-eval.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return db


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def evaluate_retrieval(
    pubmedqa_file: Path,
    medquad_file: Path | None,
    *,
    medquad_sample: int = 2000,
    seed: int = 13,
    modes: Sequence[SearchMode] = ("bm25", "dense", "hybrid"),
    k_values: Sequence[int] = (1, 5, 10),
    work_dir: Path | None = None,
    embedder: Embedder | None = None,
    embedding_cache: Path | None = None,
    progress: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> RetrievalEvalResult:
    """Index the given files into a fresh store and score each mode on each task.

    ``work_dir``: where the store is built (``<work_dir>/retrieval-eval.db``, replaced if present, kept
    afterwards); default a temporary directory removed at the end. ``embedder``: default
    :class:`MiniLMEmbedder`. ``embedding_cache``: a :class:`CachedEmbedder` file to reuse vectors across
    runs (off by default). ``on_progress``: called with one line per phase (indexing, each task and mode);
    ``progress=True`` prints those lines on stderr (scripts).
    """
    if not modes:
        raise ValueError("modes must name at least one of bm25, dense, hybrid")
    if not k_values or min(k_values) < 1 or max(k_values) > 1000:
        raise ValueError("k_values must be integers in 1..1000")
    say = on_progress if on_progress is not None else (_stderr_line if progress else None)
    started = time.perf_counter()
    corpus = load_eval_corpus(pubmedqa_file, medquad_file, medquad_sample=medquad_sample, seed=seed)
    inner = embedder or MiniLMEmbedder()
    active: Embedder = CachedEmbedder(inner, embedding_cache) if embedding_cache is not None else inner
    precision = getattr(inner, "precision", None)
    tmp: str | None = None
    if work_dir is None:
        tmp = tempfile.mkdtemp(prefix="sage-retrieval-eval-")
        db = Path(tmp) / "retrieval-eval.db"
    else:
        db = _fresh_db(work_dir)
    try:
        store = SqliteDocumentStore(db, active)
        transform = Transform(name="eval.retrieval", version=EVAL_VERSION)
        t0 = time.perf_counter()
        embedded = 0
        n_chunks = 0
        with store:
            for batch in _batches(corpus.documents, _WRITE_BATCH):
                docs = [d.model_copy(update={"provenance": d.provenance.with_transform(transform)}) for d in batch]
                written = store.write(docs, run_id="retrieval-eval")
                embedded += written.embedded
                n_chunks += written.chunks
            index_seconds = time.perf_counter() - t0
            if say is not None:
                say(f"indexed {len(corpus.documents)} documents, {n_chunks} chunks in {index_seconds:.1f}s")
            depth = max(k_values)
            tasks: dict[str, TaskResult] = {}
            for task_name, queries in corpus.tasks.items():
                per_mode: dict[str, RankingMetrics] = {}
                for mode in modes:
                    t1 = time.perf_counter()
                    ranked = [
                        [
                            h.record_id
                            for h in store.search(
                                SearchQuery(text=q.text, k=depth, mode=mode, filters=_FILTERS, one_per_record=True)
                            )
                        ]
                        for q in queries
                    ]
                    spent = time.perf_counter() - t1
                    metrics = ranking_metrics(ranked, [q.relevant_id for q in queries], k_values)
                    per_mode[mode] = metrics.model_copy(
                        update={"seconds": spent, "ms_per_query": 1000.0 * spent / max(1, len(queries))}
                    )
                    if say is not None:
                        say(
                            f"{task_name} {mode}: recall@{depth}={metrics.recall[depth]:.3f} mrr={metrics.mrr:.3f} "
                            f"({spent:.1f}s)"
                        )
                tasks[task_name] = TaskResult(
                    task=task_name, description=_DESCRIPTIONS[task_name], n_queries=len(queries), modes=per_mode
                )
            chunker = store.chunker.transform.model_dump(mode="json")
            rrf_k = store.rrf_k
            dense_weight = store.dense_weight
    finally:
        if isinstance(active, CachedEmbedder):
            active.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    config = RetrievalEvalConfig(
        pubmedqa_file=_file_info(pubmedqa_file),
        medquad_file=_file_info(medquad_file) if medquad_file is not None else None,
        seed=seed,
        medquad_sample=medquad_sample,
        medquad_sampled=len(corpus.tasks.get(TASK_MEDQUAD, [])),
        modes=tuple(modes),
        k_values=tuple(sorted(set(k_values))),
        embedder_model_id=inner.model_id,
        embedder_precision=str(precision) if precision is not None else None,
        chunker=chunker,
        rrf_k=rrf_k,
        dense_weight=dense_weight,
    )
    return RetrievalEvalResult(
        config=config,
        n_docs=len(corpus.documents),
        n_chunks=n_chunks,
        embedded_chunks=embedded,
        skipped_items=corpus.skipped_items,
        medquad_available=corpus.medquad_available,
        medquad_shared_answers=corpus.medquad_shared_answers,
        index_seconds=index_seconds,
        seconds=time.perf_counter() - started,
        tasks=tasks,
        created_at=datetime.now(UTC),
    )
