"""Erasure leaves no bytes behind: after ``erase_records`` the erased patient's identifiers cannot be read back
from the store's files (SQLite keeps deleted content in free space, in the write-ahead log and, for FTS5, in index
segments until they are merged), while the other patients' data is still there (so the check can fail).

Real Synthea bundles from SAGE_DATA_DIR; the deterministic hashing embedder (vectors carry no text)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sage_health.data.ingest.pipeline import IngestPipeline
from sage_health.data.store.sqlite import SqliteDocumentStore
from sage_health.testing.canaries import patient_resource
from sage_health.testing.embedders import HashingEmbedder

pytestmark = pytest.mark.integration

BUNDLES = 3


@dataclass(frozen=True)
class Patient:
    record_id: str
    family: str
    identifiers: tuple[str, ...]
    """Name parts, SSN, MRN and address lines: what must not be left in the files once the patient is erased."""


def _patient(bundle: Path) -> Patient:
    resource: dict[str, Any] = patient_resource(json.loads(bundle.read_text(encoding="utf-8")))
    name = resource["name"][0]
    ids = {i["type"]["coding"][0]["code"]: i["value"] for i in resource["identifier"] if "type" in i}
    values = [name["family"], *name["given"], ids["SS"], ids["MR"], *resource["address"][0]["line"]]
    return Patient(f"synthea/Patient/{resource['id']}", name["family"], tuple(values))


def _folded(value: str) -> list[bytes]:
    """``value`` as it can sit in the files: UTF-8 as written, lower-cased, and without diacritics (FTS5's
    ``remove_diacritics``), each compared case-insensitively."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", value) if not unicodedata.combining(c))
    return sorted({v.lower().encode() for v in (value, plain)})


def _store_bytes(db: Path) -> dict[str, bytes]:
    """Raw bytes of the database and its write-ahead log (if present), lower-cased."""
    return {p.name: p.read_bytes().lower() for p in (db, db.with_name(db.name + "-wal")) if p.is_file()}


def _found(files: dict[str, bytes], values: tuple[str, ...]) -> list[str]:
    """``file: value #i`` for each value (by position, never the value: no PHI in a failure) found in a file."""
    return [f"{name}: value #{i}" for name, raw in files.items() for i, value in enumerate(values)
            if any(form in raw for form in _folded(value))]  # fmt: skip


@pytest.fixture
def ingested(tmp_path: Path, data_dir: Path) -> Iterator[tuple[SqliteDocumentStore, list[Patient]]]:
    bundles = sorted((data_dir / "synthea_fhir_r4" / "bundles").glob("*.json"))[:BUNDLES]
    src = tmp_path / "bundles"
    src.mkdir()
    for bundle in bundles:
        shutil.copyfile(bundle, src / bundle.name)
    with SqliteDocumentStore(tmp_path / "store" / "sage.db", HashingEmbedder()) as store:
        report = IngestPipeline(store, batch_records=64).run([src], command="erasure-bytes-test")
        assert not report.problems
        yield store, [_patient(b) for b in bundles]


def _fts_segments(conn: sqlite3.Connection) -> list[bytes]:
    """The FTS5 index's segment pages (rows above 10 of ``chunks_fts_data``; 1 and 10 are its averages and
    structure records)."""
    return sorted(r[0] for r in conn.execute("SELECT block FROM chunks_fts_data WHERE id > 10"))


def test_erasure_leaves_no_bytes_of_the_patient_in_the_database_or_the_wal(
    ingested: tuple[SqliteDocumentStore, list[Patient]],
) -> None:
    store, (erased, *others) = ingested
    before = _store_bytes(store.path)
    assert _found(before, erased.identifiers), "the patient's identifiers should be in the store before erasure"
    ids = store.patient_record_ids(erased.record_id)
    assert erased.record_id in ids

    result = store.erase_records(ids)

    assert result.records == len(ids)
    assert store.patient_record_ids(erased.record_id) == []
    assert store.check() == {"ok": True, "problems": []}
    after = _store_bytes(store.path)
    assert _found(after, erased.identifiers) == []
    assert not after.get("sage.db-wal"), "the write-ahead log still holds pages from before the erasure"
    for other in others:  # the check can fail: the others' data is still in the same bytes
        assert _found(after, (other.family,)) == ["sage.db: value #0"]
        assert store.patient_record_ids(other.record_id)


def test_erasure_leaves_no_terms_of_the_erased_chunks_in_the_keyword_index(
    ingested: tuple[SqliteDocumentStore, list[Patient]], tmp_path: Path
) -> None:
    """A delete adds tombstones to FTS5 and keeps the erased chunks' terms (with their positions: the text can be
    rebuilt from them) in the older segments; after erasure the index is the one built from the remaining chunks
    alone."""
    store, (erased, *_) = ingested
    store.erase_records(store.patient_record_ids(erased.record_id))
    erased_index = _fts_segments(store.connection)
    copy = tmp_path / "rebuilt.db"
    shutil.copyfile(store.path, copy)
    conn = sqlite3.connect(copy)
    try:
        conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('rebuild')")
        conn.commit()
        rebuilt = _fts_segments(conn)
    finally:
        conn.close()
    assert rebuilt
    assert erased_index == rebuilt
