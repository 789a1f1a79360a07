"""Erasure and lineage of :class:`~sage_health.data.store.sqlite.SqliteDocumentStore`
(:class:`~sage_health.data.store.protocol.ErasureTarget`, :class:`~sage_health.data.store.protocol.LineageSource`):
:class:`SqliteErasureMixin`.

* ``erase_records`` removes every version of the records with their chunks, keyword rows and vectors, and forgets
  the paths of their source files that hold no other patient (a Synthea file name is the patient's name), in one
  transaction.
* It leaves no bytes behind: the store's connection always writes with ``secure_delete`` (deleted rows, freed
  pages and cells moved by page splits are zeroed; with it off, 81 copies of an erased patient's family name were
  still in a 3-bundle store's file, and with it on for the erasure only, 4 left by page splits at ingest), the
  keyword index is merged (FTS5 ``optimize``, in the same transaction: a delete only adds tombstones and the
  erased chunks' terms stay in the older segments until they are merged), and the write-ahead log is then
  checkpointed and truncated (it still holds the pages as they were before the erasure: 94 copies of the name on
  a 3-bundle store). Measured on a 3-bundle store (30 bundles): the delete ~6 ms (37 ms), the merge ~1 ms
  (12 ms: it rewrites the whole keyword index, so it grows with the chunk count), the checkpoint ~27 ms (54 ms);
  ``secure_delete`` made no measurable difference to ingest time.
* Lineage reads the provenance stored with each record (``source_file``, ``derived_from``, the ingest run).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from sage_health.core.errors import StoreError
from sage_health.core.hashing import sha256_text
from sage_health.core.provenance import Provenance
from sage_health.data.store.protocol import ErasedRecords, RecordLineage
from sage_health.data.store.sqlite_schema import SqliteDatabase, _batched


class SqliteErasureMixin(SqliteDatabase):
    """:class:`~sage_health.data.store.protocol.ErasureTarget` and
    :class:`~sage_health.data.store.protocol.LineageSource` on the store's tables."""

    def patient_record_ids(self, patient_id: str) -> list[str]:
        """Every record id (any version) of ``patient_id``, including the Patient record itself, sorted."""
        rows = self._connect().execute(
            "SELECT DISTINCT id FROM records WHERE patient_id = ? OR id = ? ORDER BY id", (patient_id, patient_id)
        )
        return [r[0] for r in rows]

    def erase_records(self, record_ids: Sequence[str]) -> ErasedRecords:
        """Remove ``record_ids`` as :meth:`delete` does and, in the same transaction, forget the paths of their
        source files (a Synthea file name is the patient's name) when no other patient's record came from them:
        the ledger rows (``files``, ``ingest_errors``) go, and the records left from such a file (organisations,
        practitioners: no patient) keep ``erased:<sha256 of the path>`` as their provenance ``source_file``. The
        keyword index is merged in that transaction and the write-ahead log truncated after it, so no byte of the
        erased records is left in the store's files (module docstring). Ids already gone are skipped, so a re-run
        after a crash only finishes what the crash interrupted."""
        ids = list(dict.fromkeys(record_ids))
        removed = scrubbed = 0
        dropped: list[str] = []
        try:
            with self._txn() as conn:
                paths: set[str] = set()
                for part in _batched(ids):
                    marks = ",".join("?" * len(part))
                    paths.update(r[0] for r in conn.execute(
                        "SELECT DISTINCT json_extract(provenance, '$.source_file') FROM records "
                        f"WHERE id IN ({marks}) AND json_extract(provenance, '$.source_file') IS NOT NULL",
                        tuple(part),
                    ))  # fmt: skip
                    conn.execute(f"DELETE FROM chunks WHERE record_id IN ({marks})", tuple(part))
                    cur = conn.execute(f"SELECT count(DISTINCT id) FROM records WHERE id IN ({marks})", tuple(part))
                    removed += cur.fetchone()[0]
                    conn.execute(f"DELETE FROM records WHERE id IN ({marks})", tuple(part))
                for path in sorted(paths):
                    others = conn.execute(
                        "SELECT 1 FROM records WHERE json_extract(provenance, '$.source_file') = ? "
                        "AND patient_id IS NOT NULL LIMIT 1",
                        (path,),
                    ).fetchone()
                    if others is not None:
                        continue  # a file of several patients: its path is not this patient's
                    digest = sha256_text(path)
                    gone = conn.execute("DELETE FROM files WHERE path = ?", (path,)).rowcount
                    gone += conn.execute("DELETE FROM ingest_errors WHERE path = ?", (path,)).rowcount
                    scrubbed += conn.execute(
                        "UPDATE records SET provenance = json_set(provenance, '$.source_file', ?) "
                        "WHERE json_extract(provenance, '$.source_file') = ?",
                        (f"erased:{digest}", path),
                    ).rowcount
                    if gone:
                        dropped.append(digest)
                if removed:
                    # a delete only adds tombstones to the keyword index: merge it so the erased terms are gone
                    conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('optimize')")
                    self._bump(conn, "generation")
                    self._bump(conn, "delete_generation")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: erasure of records failed and was rolled back: {exc}") from exc
        self._truncate_wal()
        return ErasedRecords(records=removed, files=len(dropped), files_sha256=tuple(dropped),
                             provenance_scrubbed=scrubbed)  # fmt: skip

    def _truncate_wal(self) -> None:
        """Checkpoint the write-ahead log into the database and truncate it: until then it holds the pages as they
        were before the erasure. Waits (busy timeout) for readers of an older snapshot; if one still holds the log,
        the erasure is incomplete and says so (a re-run of the same erasure finishes it)."""
        try:
            with self._lock:
                busy, _log, _done = self._connect().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: records erased, but the write-ahead log could not be cleared: {exc}; "
                             "run the same erasure again to finish it") from exc  # fmt: skip
        if busy:
            raise StoreError(
                f"{self.path}: records erased, but another connection kept reading the store, so the write-ahead "
                "log (which still holds the erased pages) could not be cleared; stop the other processes using the "
                "store and run the same erasure again to finish it"
            )

    def record_lineage(self, record_id: str) -> RecordLineage | None:
        """Provenance, ingest run and chunk/vector counts of the current version of ``record_id``."""
        conn = self._connect()
        row = conn.execute(
            "SELECT id, resource_type, patient_id, run_id, provenance FROM records WHERE id = ? AND is_current = 1",
            (record_id,),
        ).fetchone()
        if row is None:
            return None
        chunks, vectors = conn.execute(
            "SELECT count(*), (SELECT count(*) FROM vectors v JOIN chunks c2 ON c2.id = v.chunk_id "
            "WHERE c2.record_id = ?) FROM chunks WHERE record_id = ?",
            (record_id, record_id),
        ).fetchone()
        prov = Provenance.model_validate_json(row["provenance"])
        return RecordLineage(record_id=row["id"], resource_type=row["resource_type"], patient_id=row["patient_id"],
                             run_id=row["run_id"] or prov.run_id, provenance=prov, chunks=int(chunks),
                             vectors=int(vectors))  # fmt: skip

    def records_from_file(self, path: str) -> list[str]:
        """Ids of the current records parsed from the source file ``path``, sorted."""
        rows = self._connect().execute(
            "SELECT DISTINCT id FROM records WHERE is_current = 1 AND json_extract(provenance, '$.source_file') = ? "
            "ORDER BY id",
            (path,),
        )
        return [r[0] for r in rows]

    def records_citing(self, record_id: str) -> list[str]:
        """Ids of the current records (other than ``record_id``) whose provenance ``derived_from`` names it."""
        rows = self._connect().execute(
            "SELECT id FROM records WHERE is_current = 1 AND id != ? AND EXISTS (SELECT 1 FROM "
            "json_each(records.provenance, '$.derived_from') WHERE value = ?) ORDER BY id",
            (record_id, record_id),
        )
        return [r[0] for r in rows]

    def source_files(self) -> list[str]:
        """Every distinct source file path of current records, sorted."""
        rows = self._connect().execute(
            "SELECT DISTINCT json_extract(provenance, '$.source_file') AS f FROM records "
            "WHERE is_current = 1 AND json_extract(provenance, '$.source_file') IS NOT NULL ORDER BY f"
        )
        return [r[0] for r in rows]
