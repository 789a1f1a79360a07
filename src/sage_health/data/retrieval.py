"""Retrieval helpers above a DocumentStore: patient-scoped contextual search over a timeline."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict

from sage_health.core.errors import RetrievalError
from sage_health.data.store.protocol import RecordReader, SearchFilters, SearchHit, SearchMode, SearchQuery

_EPOCH = datetime(1, 1, 1, tzinfo=UTC)


class TimelineEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    record_id: str
    resource_type: str
    effective: datetime | None
    text: str


class PatientContext(BaseModel):
    """What a clinician (or an agent) needs about one patient for one question."""

    model_config = ConfigDict(frozen=True)

    patient_id: str
    hits: list[SearchHit]
    """The most relevant records of this patient, in chronological order."""
    timeline: list[TimelineEntry]
    """Every record of the patient in the window, chronological (bounded by ``max_timeline``)."""


def patient_context(
    store: RecordReader,
    patient_id: str,
    query: str,
    *,
    k: int = 10,
    mode: SearchMode = "hybrid",
    since: datetime | None = None,
    until: datetime | None = None,
    resource_types: tuple[str, ...] = (),
    max_timeline: int = 200,
) -> PatientContext:
    """Search one patient's records (filters pushed into both retrievers) and lay the hits on a timeline."""
    filters = SearchFilters(patient_id=patient_id, since=since, until=until, resource_types=resource_types)
    timeline: list[TimelineEntry] = []
    for stored in store.iter_records(filters):
        timeline.append(
            TimelineEntry(
                record_id=stored.record.id,
                resource_type=stored.record.resource_type,
                effective=stored.record.effective,
                text=stored.record.render()[:300],
            )
        )
    if not timeline:
        raise RetrievalError(f"no records for patient {patient_id} in the requested window")
    timeline.sort(key=lambda e: (e.effective is None, e.effective or _EPOCH, e.record_id))
    hits = store.search(SearchQuery(text=query, k=k, mode=mode, filters=filters))
    hits.sort(key=lambda h: (h.effective is None, h.effective or _EPOCH, h.rank))
    return PatientContext(patient_id=patient_id, hits=hits, timeline=timeline[-max_timeline:])
