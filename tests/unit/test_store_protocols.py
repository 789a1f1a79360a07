"""The SQLite backend satisfies every protocol the platform types its consumers on, so the governance layer,
ingest, lineage and erasure need nothing SQLite-specific (a second backend implements the same protocols)."""

from __future__ import annotations

from pathlib import Path

from sage_health.data.store.protocol import (
    DocumentStore,
    ErasureTarget,
    GovernableStore,
    IngestLedger,
    IngestTarget,
    LineageSource,
    PatientIndex,
    RecordReader,
)
from sage_health.data.store.sqlite import SqliteDocumentStore
from sage_health.testing.embedders import HashingEmbedder


def test_sqlite_store_implements_every_store_protocol(tmp_path: Path) -> None:
    with SqliteDocumentStore(tmp_path / "sage.db", HashingEmbedder()) as store:
        for protocol in (DocumentStore, RecordReader, IngestLedger, IngestTarget, LineageSource, ErasureTarget,
                         PatientIndex, GovernableStore):  # fmt: skip
            assert isinstance(store, protocol), protocol.__name__


def test_an_object_missing_one_method_is_not_a_governable_store() -> None:
    class Partial:
        def patient_ids(self) -> frozenset[str]:
            return frozenset()

    assert isinstance(Partial(), PatientIndex)
    assert not isinstance(Partial(), GovernableStore)
