"""The ingest ledger (runs, per-file completion, errors) and the reporting (``stats``, ``check``) of
:class:`~sage_health.data.store.sqlite.SqliteDocumentStore`: :class:`SqliteLedgerMixin`.

* The ``files`` table keys a source file by (path, sha256): a re-run skips a file already completed with the same
  content, so an interrupted ingest resumes where it stopped.
* ``check()`` is the consistency check ingest, erasure and ``sage-health store check`` rely on: no orphan chunks or
  vectors, no chunk of a non-current version, FTS5 integrity and SQLite's ``quick_check``.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from sage_health.data.store.sqlite_schema import SCHEMA_VERSION, SqliteDatabase, _now


class SqliteLedgerMixin(SqliteDatabase):
    """:class:`~sage_health.data.store.protocol.IngestLedger`, ``stats`` and ``check``."""

    def start_run(self, run_id: str, command: str) -> None:
        with self._txn() as conn:
            conn.execute(
                "INSERT INTO ingest_runs(id, started_at, status, command) VALUES (?,?,?,?)",
                (run_id, _now(), "running", command),
            )

    def finish_run(self, run_id: str, status: str, stats: dict[str, Any]) -> None:
        with self._txn() as conn:
            conn.execute(
                "UPDATE ingest_runs SET finished_at=?, status=?, stats=? WHERE id=?",
                (_now(), status, json.dumps(stats, sort_keys=True), run_id),
            )

    def record_error(self, run_id: str, path: str, locator: str | None, reason: str) -> None:
        with self._txn() as conn:
            conn.execute(
                "INSERT INTO ingest_errors(run_id, path, locator, reason, created_at) VALUES (?,?,?,?,?)",
                (run_id, path, locator, reason, _now()),
            )

    def run_errors(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._connect().execute(
            "SELECT path, locator, reason FROM ingest_errors WHERE run_id=? ORDER BY id", (run_id,)
        )
        return [dict(r) for r in rows]

    def file_done(self, path: str, sha256: str) -> bool:
        row = self._connect().execute("SELECT 1 FROM files WHERE path=? AND sha256=?", (path, sha256)).fetchone()
        return row is not None

    def mark_file(self, path: str, sha256: str, size: int, connector: str, run_id: str, records: int) -> None:
        with self._txn() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO files(path, sha256, size, connector, run_id, records, completed_at) "
                "VALUES (?,?,?,?,?,?,?)",
                (path, sha256, size, connector, run_id, records, _now()),
            )

    def stats(self) -> dict[str, Any]:
        conn = self._connect()

        def scalar(sql: str) -> int:
            return int(conn.execute(sql).fetchone()[0])

        by_type = {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT resource_type, count(*) FROM records WHERE is_current=1 GROUP BY 1 ORDER BY 1"
            )
        }
        by_source = {
            r[0]: r[1]
            for r in conn.execute("SELECT source, count(*) FROM records WHERE is_current=1 GROUP BY 1 ORDER BY 1")
        }
        last_run = conn.execute(
            "SELECT id, status, started_at, finished_at FROM ingest_runs ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
        size = sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.is_file())
        return {
            "store": str(self.path),
            "schema_version": SCHEMA_VERSION,
            "records": scalar("SELECT count(*) FROM records WHERE is_current=1"),
            "record_versions": scalar("SELECT count(*) FROM records"),
            "patients": scalar(
                "SELECT count(DISTINCT patient_id) FROM records WHERE is_current=1 AND patient_id IS NOT NULL"
            ),
            "chunks": scalar("SELECT count(*) FROM chunks"),
            "vectors": scalar("SELECT count(*) FROM vectors"),
            "files": scalar("SELECT count(*) FROM files"),
            "runs": scalar("SELECT count(*) FROM ingest_runs"),
            "by_type": by_type,
            "by_source": by_source,
            "embedder": self.embedder.model_id,
            "last_run": dict(last_run) if last_run else None,
            "bytes_on_disk": size,
        }

    def check(self) -> dict[str, Any]:
        """Consistency check: orphan chunks/vectors, chunks of non-current versions, FTS integrity."""
        conn = self._connect()
        problems: list[str] = []
        orphan_chunks = conn.execute(
            "SELECT count(*) FROM chunks c WHERE NOT EXISTS "
            "(SELECT 1 FROM records r WHERE r.id = c.record_id AND r.is_current = 1)"
        ).fetchone()[0]
        if orphan_chunks:
            problems.append(f"{orphan_chunks} chunks without a current record")
        missing_vectors = conn.execute(
            "SELECT count(*) FROM chunks c WHERE NOT EXISTS (SELECT 1 FROM vectors v WHERE v.chunk_id = c.id)"
        ).fetchone()[0]
        if missing_vectors:
            problems.append(f"{missing_vectors} chunks without a vector")
        orphan_vectors = conn.execute(
            "SELECT count(*) FROM vectors v WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.id = v.chunk_id)"
        ).fetchone()[0]
        if orphan_vectors:
            problems.append(f"{orphan_vectors} vectors without a chunk")
        try:
            conn.execute("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)")
        except sqlite3.DatabaseError as exc:
            problems.append(f"FTS index inconsistent with chunks: {exc}")
        integrity = conn.execute("PRAGMA quick_check").fetchone()[0]
        if integrity != "ok":
            problems.append(f"sqlite quick_check: {integrity}")
        return {"ok": not problems, "problems": problems}
