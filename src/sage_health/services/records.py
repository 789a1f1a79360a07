"""Records: search (every filter), a patient's timeline, one record with its chunks and version history, and the
store's counts.

Every read goes through the session's governed store, which decides the action (``search``, ``read``), pushes
research opt-outs into the query, hands researchers the de-identified view (pseudonymous patient ids, scrubbed file
paths; a real patient id is not found by that name) and audits the ids it returned (a query by its sha256 only).
``stats`` are aggregate counts: any known principal may ask, and the ask is audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any, cast, get_args

import pydantic
from pydantic import BaseModel, ConfigDict

from sage_health.core.errors import RecordNotFoundError, RetrievalError
from sage_health.data.chunking import Chunk
from sage_health.data.retrieval import PatientContext, TimelineEntry, patient_context
from sage_health.data.store.protocol import SearchFilters, SearchHit, SearchMode, SearchQuery, StoredRecord
from sage_health.services.session import Session

__all__ = [
    "PatientContext",
    "RecordDetail",
    "SearchResult",
    "StoreStats",
    "TimelineEntry",
    "parse_day",
    "parse_mode",
    "search",
    "show",
    "stats",
    "timeline",
]


# --------------------------------------------------------------------------- input parsing shared by interfaces


def parse_day(value: str | None, *, end: bool = False) -> datetime | None:
    """An ISO 8601 date or datetime (naive → UTC). A bare date as an upper bound (``end``) includes the whole day."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise RetrievalError(f"invalid date {value!r}: use ISO 8601, e.g. 2019-03-02") from exc
    if len(value) <= 10:  # a bare date
        parsed = datetime.combine(date.fromisoformat(value[:10]), time.max if end else time.min)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_mode(value: str) -> SearchMode:
    """``hybrid``, ``bm25`` or ``dense``."""
    if value not in get_args(SearchMode):
        raise RetrievalError(f"--mode must be hybrid, bm25 or dense (got {value!r})")
    return cast(SearchMode, value)


def _query(text: str, k: int, mode: SearchMode, filters: SearchFilters) -> SearchQuery:
    try:
        return SearchQuery(text=text, k=k, mode=mode, filters=filters)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'query'}: {e['msg']}" for e in exc.errors())
        raise RetrievalError(f"invalid search: {problems}") from exc


# --------------------------------------------------------------------------- search


@dataclass(frozen=True)
class SearchResult:
    """Ranked hits (score components, provenance; de-identified for researchers)."""

    query: str
    mode: SearchMode
    hits: tuple[SearchHit, ...]

    def to_json(self) -> list[dict[str, Any]]:
        return [h.model_dump(mode="json") for h in self.hits]


def search(
    session: Session,
    text: str,
    *,
    k: int = 10,
    mode: SearchMode = "hybrid",
    filters: SearchFilters | None = None,
) -> SearchResult:
    """Hybrid (BM25 + dense, RRF), BM25 or dense search with ``filters`` (patient — a pseudonym for researchers —,
    record types, sources, sections, effective date window) applied inside both retrievers. Decided as
    ``search``; one audit event with the returned record ids."""
    query = _query(text, k, mode, filters or SearchFilters())
    hits = session.governed().search(query)
    return SearchResult(query=text, mode=mode, hits=tuple(hits))


def timeline(
    session: Session,
    patient_id: str,
    text: str,
    *,
    k: int = 10,
    mode: SearchMode = "hybrid",
    since: datetime | None = None,
    until: datetime | None = None,
    resource_types: tuple[str, ...] = (),
) -> PatientContext:
    """One patient's records in the window, chronological, with the ``k`` best hits for ``text`` among them (also
    in date order). Decided as ``read`` (the timeline) and ``search`` (the hits), each audited. A patient with no
    visible records in the window is a :class:`RetrievalError`."""
    _query(text, k, mode, SearchFilters())  # the same input checks as a search, before anything is read
    return patient_context(
        session.governed(), patient_id, text, k=k, mode=mode, since=since, until=until, resource_types=resource_types
    )


# --------------------------------------------------------------------------- show


@dataclass(frozen=True)
class RecordDetail:
    """A record as the caller may see it, its chunks (current version only) and every visible version."""

    stored: StoredRecord
    chunks: tuple[Chunk, ...]
    history: tuple[StoredRecord, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            **self.stored.model_dump(mode="json"),
            "chunks": [c.model_dump(mode="json") for c in self.chunks],
            "history": [
                {
                    "version": h.version,
                    "content_hash": h.content_hash,
                    "created_at": str(h.created_at),
                    "provenance": h.record.provenance.model_dump(mode="json"),
                }
                for h in self.history
            ],
        }


def show(session: Session, record_id: str, *, version: int | None = None) -> RecordDetail:
    """The record ``record_id`` (current, or ``version``) with provenance, chunks and version history. Decided as
    ``read`` and audited; not found (or withheld by consent, or a real patient id asked for by a researcher) is
    a :class:`RecordNotFoundError`."""
    governed = session.governed()
    stored = governed.get(record_id, version=version)
    if stored is None:
        raise RecordNotFoundError(f"record {record_id} not found (version {version or 'current'})")
    history = governed.history(record_id)
    chunks = governed.chunks_of(record_id) if stored.is_current else []
    return RecordDetail(stored=stored, chunks=tuple(chunks), history=tuple(history))


# --------------------------------------------------------------------------- stats


class StoreStats(BaseModel):
    """Aggregate counts of the store (no record content)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    store: str
    records: int
    record_versions: int
    patients: int
    chunks: int
    vectors: int
    files: int
    runs: int
    by_type: dict[str, int]
    by_source: dict[str, int]
    embedder: str
    bytes_on_disk: int
    schema_version: int | None = None
    last_run: dict[str, Any] | None = None


def stats(session: Session) -> StoreStats:
    """Counts by record type and source, patients, chunks, vectors, files, runs and size on disk. Any known
    principal may ask (audited as ``stats``)."""
    return StoreStats.model_validate(session.governed().stats())
