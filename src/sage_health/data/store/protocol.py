"""The ``DocumentStore`` extension point and the value types it speaks.

A document store keeps canonical records (every version, with provenance), their chunks, a keyword
index and dense vectors, and answers filtered searches. Backends (SQLite now, PostgreSQL later) pass
the shared conformance suite in :mod:`sage_health.testing.document_store`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sage_health.core.provenance import Provenance
from sage_health.data.schema import AnyRecord, RecordBase

SearchMode = Literal["hybrid", "bm25", "dense"]


class SearchFilters(BaseModel):
    """Filters applied inside every retriever (never by post-filtering a top-k)."""

    model_config = ConfigDict(frozen=True)

    patient_id: str | None = None
    resource_types: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()
    since: datetime | None = None
    """Inclusive lower bound on ``effective``; records without a date are excluded when set."""
    until: datetime | None = None
    """Inclusive upper bound on ``effective``."""
    record_ids: tuple[str, ...] = ()
    exclude_patients: tuple[str, ...] = ()
    """Records of these patients are never returned (consent: pushed into every retriever by the policy layer)."""

    def is_empty(self) -> bool:
        return not (
            self.patient_id
            or self.resource_types
            or self.sources
            or self.sections
            or self.since
            or self.until
            or self.record_ids
            or self.exclude_patients
        )


class SearchQuery(BaseModel):
    model_config = ConfigDict(frozen=True)

    text: str = Field(min_length=1)
    k: int = Field(default=10, ge=1, le=1000)
    mode: SearchMode = "hybrid"
    filters: SearchFilters = Field(default_factory=SearchFilters)
    one_per_record: bool = True
    """Return at most one chunk (the best) per record."""
    candidates: int | None = Field(default=None, ge=1, le=10000)
    """How many hits each retriever contributes to fusion (default max(50, 4k))."""

    @model_validator(mode="after")
    def _strip(self) -> SearchQuery:
        if not self.text.strip():
            raise ValueError("query text is empty")
        return self


class SearchHit(BaseModel):
    """One ranked chunk with its score components and provenance."""

    model_config = ConfigDict(frozen=True)

    rank: int
    score: float
    chunk_id: int
    record_id: str
    record_version: int
    resource_type: str
    source: str
    patient_id: str | None
    effective: datetime | None
    section: str
    text: str
    bm25_score: float | None = None
    bm25_rank: int | None = None
    dense_score: float | None = None
    dense_rank: int | None = None
    provenance: Provenance


class StoredRecord(BaseModel):
    """A record as stored: the canonical record plus its version bookkeeping."""

    model_config = ConfigDict(frozen=True)

    record: AnyRecord
    version: int
    is_current: bool
    content_hash: str
    created_at: datetime
    chunk_count: int


class WriteResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    inserted: int = 0
    """New record ids."""
    updated: int = 0
    """Existing ids whose content changed: a new version was written, the old one kept."""
    unchanged: int = 0
    """Existing ids with identical content: nothing written."""
    chunks: int = 0
    embedded: int = 0
    """Chunks whose vector was computed (the rest reused a vector of identical text)."""
    inserted_ids: tuple[str, ...] = ()
    updated_ids: tuple[str, ...] = ()


@runtime_checkable
class DocumentStore(Protocol):
    """Canonical records + chunks + keyword and dense indexes, written atomically.

    Contract:

    - ``write(records, run_id=...)`` is atomic: every record of the call is stored (with its chunks,
      keyword entries and vectors) or none is. A record whose id exists with identical content is
      left alone (``unchanged``); with different content a new version is stored, becomes current, and
      the old version stays readable with its provenance; only the current version is searchable.
    - ``get(record_id)`` returns the current version, or ``None``; ``get(record_id, version=n)`` an
      older one.
    - ``delete(record_ids)`` removes every version, chunk, keyword entry and vector of those records
      in one transaction and returns how many record ids were removed.
    - ``search(query)`` ranks current chunks by BM25, dense cosine, or their reciprocal-rank fusion,
      with ``query.filters`` applied inside each retriever; hits carry score components and provenance.
    """

    def write(self, records: Sequence[RecordBase], *, run_id: str | None = None) -> WriteResult: ...

    def get(self, record_id: str, *, version: int | None = None) -> StoredRecord | None: ...

    def delete(self, record_ids: Sequence[str]) -> int: ...

    def search(self, query: SearchQuery) -> list[SearchHit]: ...


@runtime_checkable
class RecordReader(Protocol):
    """The read side shared by the raw store and the governed store (what retrieval helpers and agents need)."""

    def get(self, record_id: str, *, version: int | None = None) -> StoredRecord | None: ...

    def search(self, query: SearchQuery) -> list[SearchHit]: ...

    def iter_records(self, filters: SearchFilters | None = None) -> Iterator[StoredRecord]: ...


@runtime_checkable
class IngestLedger(Protocol):
    """The run bookkeeping an ingest needs from a backend, beside :class:`DocumentStore` ``write``.

    Contract:

    - ``start_run(run_id, command)`` records a run as ``running``; ``finish_run(run_id, status, stats)`` closes it
      with ``completed``, ``completed_with_errors`` or ``failed`` and its report (a JSON-serialisable dict). A run
      killed in between stays ``running``.
    - ``record_error(run_id, path, locator, reason)`` keeps one problem line of a run (never record content).
    - ``file_done(path, sha256)`` is true once ``mark_file`` recorded that exact file content as completely
      ingested; ``mark_file`` is called only after the last batch holding the file's records committed, so a re-run
      after a crash re-reads every file that was not finished (and content hashes make that add no duplicates).
    """

    def start_run(self, run_id: str, command: str) -> None: ...

    def finish_run(self, run_id: str, status: str, stats: dict[str, Any]) -> None: ...

    def record_error(self, run_id: str, path: str, locator: str | None, reason: str) -> None: ...

    def file_done(self, path: str, sha256: str) -> bool: ...

    def mark_file(self, path: str, sha256: str, size: int, connector: str, run_id: str, records: int) -> None: ...


@runtime_checkable
class IngestTarget(DocumentStore, IngestLedger, Protocol):
    """What the ingest pipeline writes to: a document store that also keeps the ingest ledger (every backend)."""


class RecordLineage(BaseModel):
    """Where one current record comes from and what the store derived from it (ids and counts, no content)."""

    model_config = ConfigDict(frozen=True)

    record_id: str
    resource_type: str
    patient_id: str | None
    run_id: str | None
    """The ingest run (or job) that wrote the current version."""
    provenance: Provenance
    chunks: int
    vectors: int


@runtime_checkable
class LineageSource(Protocol):
    """The document store's share of the lineage graph (``file:`` → ``record:`` → chunks/vectors, citations).

    Contract: ``record_lineage(id)`` describes the current version of a record (``None`` when there is none);
    ``records_from_file(path)`` lists the ids of current records parsed from that source file (sorted);
    ``records_citing(id)`` the ids of current records whose provenance ``derived_from`` names ``id`` (sorted);
    ``source_files()`` every distinct source file path of current records (sorted)."""

    def record_lineage(self, record_id: str) -> RecordLineage | None: ...

    def records_from_file(self, path: str) -> list[str]: ...

    def records_citing(self, record_id: str) -> list[str]: ...

    def source_files(self) -> list[str]: ...


class ErasedRecords(BaseModel):
    """What :meth:`ErasureTarget.erase_records` removed: counts and the sha256 of file paths, never a path."""

    model_config = ConfigDict(frozen=True)

    records: int = 0
    """Record ids removed (each with every version, its chunks, keyword rows and vectors)."""
    files: int = 0
    """Source files (named by no other patient's record) whose ledger rows were removed."""
    files_sha256: tuple[str, ...] = ()
    provenance_scrubbed: int = 0
    """Records left from such a file whose provenance now names it ``erased:<sha256 of the path>``."""


@runtime_checkable
class ErasureTarget(Protocol):
    """What erasing a patient needs from a backend.

    Contract: ``patient_record_ids(patient)`` lists every record id (any version) whose ``patient_id`` is the
    patient, or that *is* the patient (the Patient record), sorted; ``erase_records(ids)`` removes those records
    exactly as ``DocumentStore.delete`` does and, in the same transaction, forgets the paths of their source files
    that hold no other patient's record (a file path can name the patient: ledger rows removed, the provenance of
    records left from the file names it by hash), and is a no-op for ids already gone;
    ``check()`` is the consistency check (``{"ok": bool, "problems": [str, ...]}``)."""

    def patient_record_ids(self, patient_id: str) -> list[str]: ...

    def erase_records(self, record_ids: Sequence[str]) -> ErasedRecords: ...

    def check(self) -> dict[str, Any]: ...


@runtime_checkable
class PatientIndex(Protocol):
    """Which patients a backend holds records of (for pseudonym resolution and consent counts)."""

    def patient_ids(self) -> frozenset[str]: ...


@runtime_checkable
class GovernableStore(IngestTarget, LineageSource, ErasureTarget, PatientIndex, Protocol):
    """Everything the governance layer needs from a backend: the document store with its ingest ledger, its
    share of lineage and erasure, and the read side below. The governed store, ingest, lineage and erasure are typed
    on this protocol only, so a second backend (PostgreSQL) plugs in without touching a use case.

    Contract, beyond the parent protocols: ``history(id)`` lists every version of a record, oldest first;
    ``chunks_of(id)`` the current version's chunks in order; ``iter_records(filters, batch=n)`` the current
    records matching ``filters`` (filters applied in the backend's query, opted-out patients included only when
    not excluded by ``filters.exclude_patients``); ``stats()`` aggregate counts (no content)."""

    def history(self, record_id: str) -> list[StoredRecord]: ...

    def chunks_of(self, record_id: str) -> list[Any]: ...

    def iter_records(self, filters: SearchFilters | None = None, *, batch: int = 1000) -> Iterator[StoredRecord]: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...
