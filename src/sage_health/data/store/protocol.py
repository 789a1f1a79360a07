"""The ``DocumentStore`` extension point and the value types it speaks.

A document store keeps canonical records (every version, with provenance), their chunks, a keyword
index and dense vectors, and answers filtered searches. Backends (SQLite now, PostgreSQL later) pass
the shared conformance suite in :mod:`sage_health.testing.document_store`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

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
