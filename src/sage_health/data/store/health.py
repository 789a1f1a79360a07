"""Store health without a principal: integrity checks and aggregate counts, never record content (``doctor``)."""

from __future__ import annotations

from dataclasses import dataclass

from sage_health.core.config import Settings
from sage_health.core.errors import SageError, StoreError
from sage_health.data.store.factory import open_store


@dataclass(frozen=True)
class StoreHealth:
    exists: bool
    ok: bool
    records: int = 0
    chunks: int = 0
    problems: tuple[str, ...] = ()
    error: str | None = None
    """Why the store could not be opened (then nothing else was checked)."""


def store_health(settings: Settings) -> StoreHealth:
    """Whether the store of ``settings`` exists, opens and passes its consistency check (orphan chunks or
    vectors, FTS and SQLite integrity); a store not created yet is healthy (ingest creates it)."""
    if not settings.db_path.is_file():
        return StoreHealth(exists=False, ok=True)
    try:
        with open_store(settings) as store:
            check = store.check()
            counts = store.stats()
    except SageError as exc:
        return StoreHealth(exists=True, ok=False, error=str(exc))
    return StoreHealth(
        exists=True,
        ok=bool(check["ok"]),
        records=int(counts["records"]),
        chunks=int(counts["chunks"]),
        problems=tuple(check["problems"]),
    )


def require_store(settings: Settings) -> None:
    """Refuse a store that does not exist yet (a read on a mistyped ``--store`` must not create an empty one)."""
    if not settings.db_path.is_file():
        raise StoreError(f"no store at {settings.store}; run `sage-health ingest PATH --store {settings.store}` first")
