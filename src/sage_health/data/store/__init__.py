"""Document stores: the protocol, its value types and the built-in backends."""

from sage_health.data.store.protocol import (
    DocumentStore,
    SearchFilters,
    SearchHit,
    SearchMode,
    SearchQuery,
    StoredRecord,
    WriteResult,
)

__all__ = [
    "DocumentStore",
    "SearchFilters",
    "SearchHit",
    "SearchMode",
    "SearchQuery",
    "StoredRecord",
    "WriteResult",
]
