"""The ingest pipeline: expand paths -> detect format -> parse (streaming) -> batch -> atomic store writes.

Guarantees

* Each batch of ``batch_records`` records is one store transaction (all or nothing); a file is marked
  complete only after its last batch commits, so a killed run is finished by re-running it, and content
  hashes make the re-run add no duplicates.
* A bad file or record gives one line naming the file (and locator) and the reason; it is recorded in the
  run's report, the rest of the run continues, and nothing partial is stored.
* Memory is bounded by one batch plus one file's parse state (JSONL/CSV files stream line by line).

The pipeline is typed on :class:`~sage_health.data.store.protocol.IngestTarget` (a ``DocumentStore`` that keeps the
ingest ledger), so any backend plugs in. Interfaces never build it: the governed store runs it
(:meth:`~sage_health.data.governance.access.GovernedStore.ingest`, decided and audited) for the ingest service.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sage_health.core.errors import IngestionError, UnsupportedFormatError
from sage_health.core.hashing import sha256_file
from sage_health.data.ingest.base import Connector, IngestContext, RecordProblem, read_head
from sage_health.data.ingest.registry import auxiliary_reason, builtin_connectors
from sage_health.data.schema import RecordBase
from sage_health.data.store.protocol import IngestTarget


@dataclass(frozen=True)
class IngestOptions:
    """How one ingest run reads its input (the settings' batch size and file-size limit, plus per-run choices)."""

    batch_records: int = 256
    max_file_bytes: int = 256 * 1024 * 1024
    source_override: str | None = None
    """Dataset name recorded as every record's source (and in its id) instead of the connector's default."""
    force: bool = False
    """Re-read files already ingested unchanged."""


@dataclass
class FileProblem:
    path: str
    locator: str | None
    reason: str

    def line(self) -> str:
        where = f"{self.path}:{self.locator}" if self.locator else self.path
        return f"{where}: {self.reason}"


@dataclass
class ConnectorStats:
    files: int = 0
    records: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    chunks: int = 0
    embedded: int = 0
    errors: int = 0
    seconds: float = 0.0


@dataclass
class IngestReport:
    run_id: str
    stats: dict[str, ConnectorStats] = field(default_factory=dict)
    problems: list[FileProblem] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) for files recognised as auxiliary or already ingested unchanged."""
    failed_files: int = 0
    seconds: float = 0.0

    def total(self) -> ConnectorStats:
        out = ConnectorStats()
        for s in self.stats.values():
            for name in vars(out):
                setattr(out, name, getattr(out, name) + getattr(s, name))
        out.seconds = self.seconds
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "seconds": round(self.seconds, 3),
            "failed_files": self.failed_files,
            "by_connector": {k: vars(v) for k, v in sorted(self.stats.items())},
            "total": vars(self.total()),
            "problems": [vars(p) for p in self.problems],
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }


@dataclass
class _Batch:
    """Records waiting for one atomic write (possibly from several small files of one connector)."""

    connector: str | None = None
    records: list[RecordBase] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    files: list[tuple[str, str, int, int]] = field(default_factory=list)
    """(resolved path, sha256, size, records) of files whose last record is in this batch."""

    def reset(self) -> None:
        self.connector = None
        self.records.clear()
        self.ids.clear()
        self.files.clear()


ProgressFn = Callable[[str, int], None]
"""Called as (event, value): ("file", bytes_of_file_done) after each file."""


_DOC_NAMES = frozenset({"README.md", "SOURCE.md", "SHA256SUMS", "LICENSE", "LICENSE.md", "LICENSE.txt"})


def expand_paths(paths: Iterable[Path]) -> Iterator[tuple[Path, bool]]:
    """Files under ``paths`` (sorted, hidden entries skipped) with a flag: found by walking a folder."""
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                rel = child.relative_to(path)
                if any(part.startswith(".") for part in rel.parts) or not child.is_file():
                    continue
                yield child, True
        else:
            yield path, False


def new_run_id() -> str:
    """A fresh ingest run id: ``run-<UTC timestamp>-<8 hex>``."""
    return datetime.now(UTC).strftime("run-%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:8]


def planned_bytes(paths: Iterable[Path]) -> int:
    """Total size of the files an ingest of ``paths`` will visit (missing paths count 0): a progress bar's total."""
    return sum(f.stat().st_size for f, _ in expand_paths(p for p in paths if p.exists()))


class IngestPipeline:
    def __init__(
        self,
        store: IngestTarget,
        *,
        connectors: Sequence[Connector] | None = None,
        batch_records: int = 256,
        max_file_bytes: int = 256 * 1024 * 1024,
        source_override: str | None = None,
        force: bool = False,
    ) -> None:
        self.store = store
        self.connectors = list(connectors) if connectors is not None else builtin_connectors()
        self.batch_records = batch_records
        self.max_file_bytes = max_file_bytes
        self.source_override = source_override
        self.force = force
        self._batch = _Batch()

    @classmethod
    def with_options(
        cls, store: IngestTarget, options: IngestOptions, *, connectors: Sequence[Connector] | None = None
    ) -> IngestPipeline:
        return cls(
            store,
            connectors=connectors,
            batch_records=options.batch_records,
            max_file_bytes=options.max_file_bytes,
            source_override=options.source_override,
            force=options.force,
        )

    def detect(self, path: Path) -> Connector:
        head = read_head(path)
        for connector in self.connectors:
            if connector.detect(path, head):
                return connector
        raise UnsupportedFormatError(
            "unknown format (not FHIR JSON, IU X-ray JSONL/XML/CSV, MedQuAD, PubMedQA, MIRAGE, PNG, DICOM "
            "or UTF-8 text/markdown)",
            path=str(path),
        )

    def run(
        self,
        paths: Sequence[Path],
        *,
        command: str = "ingest",
        run_id: str | None = None,
        progress: ProgressFn | None = None,
        on_problem: Callable[[FileProblem], None] | None = None,
    ) -> IngestReport:
        run_id = run_id or new_run_id()
        report = IngestReport(run_id=run_id)
        ctx = IngestContext(run_id=run_id, source_override=self.source_override)
        self.store.start_run(run_id, command)
        started = time.perf_counter()
        status = "failed"
        try:
            for path in paths:
                if not path.exists():
                    self._problem(report, FileProblem(str(path), None, "no such file or directory"), on_problem)
                    report.failed_files += 1
            self._batch = _Batch()
            for file, walked in expand_paths(p for p in paths if p.exists()):
                size = file.stat().st_size
                self._ingest_file(file, walked, size, ctx, report, on_problem)
                if progress:
                    progress("file", size)
            self._flush(ctx, report)
            status = "completed_with_errors" if report.failed_files or report.problems else "completed"
        finally:
            report.seconds = time.perf_counter() - started
            self.store.finish_run(run_id, status, report.as_dict())
        return report

    def _problem(
        self, report: IngestReport, problem: FileProblem, on_problem: Callable[[FileProblem], None] | None
    ) -> None:
        report.problems.append(problem)
        self.store.record_error(report.run_id, problem.path, problem.locator, problem.reason)
        if on_problem:
            on_problem(problem)

    def _ingest_file(
        self,
        path: Path,
        walked: bool,
        size: int,
        ctx: IngestContext,
        report: IngestReport,
        on_problem: Callable[[FileProblem], None] | None,
    ) -> None:
        if walked and path.name in _DOC_NAMES:
            report.skipped.append((str(path), "dataset documentation"))
            return
        aux = auxiliary_reason(path)
        if aux is not None:
            report.skipped.append((str(path), aux))
            return
        if size > self.max_file_bytes:
            self._problem(
                report,
                FileProblem(
                    str(path),
                    None,
                    f"file is {size / 2**20:.1f} MiB, over the {self.max_file_bytes / 2**20:.0f} MiB limit "
                    "(raise SAGE_MAX_FILE_MB to ingest it)",
                ),
                on_problem,
            )
            report.failed_files += 1
            return
        started = time.perf_counter()
        try:
            connector = self.detect(path)
        except IngestionError as exc:
            self._problem(report, FileProblem(str(path), exc.locator, exc.reason), on_problem)
            report.failed_files += 1
            return
        stats = report.stats.setdefault(connector.name, ConnectorStats())
        digest = sha256_file(path)
        if not self.force and self.store.file_done(str(path.resolve()), digest):
            report.skipped.append((str(path), "unchanged since a completed ingest"))
            stats.files += 1
            stats.seconds += time.perf_counter() - started
            return
        n_records = 0
        seen: dict[str, str | None] = {}  # record id -> locator of its first occurrence in this file
        batch = self._batch
        if batch.connector not in (None, connector.name):
            self._flush(ctx, report)  # a batch holds one connector's records, so stats stay exact
        batch.connector = connector.name
        try:
            for item in connector.parse(path.resolve(), digest, ctx):
                if not isinstance(item, RecordProblem) and item.id in seen:
                    item = RecordProblem(
                        locator=item.provenance.locator or "?",
                        reason=f"duplicate record id {item.id} (first at {seen[item.id]}); the first is kept",
                    )
                if isinstance(item, RecordProblem):
                    stats.errors += 1
                    self._problem(report, FileProblem(str(path), item.locator, item.reason), on_problem)
                    continue
                seen[item.id] = item.provenance.locator
                if item.id in batch.ids:  # same id from an earlier file: commit that one first
                    self._flush(ctx, report)
                    batch.connector = connector.name
                batch.records.append(item)
                batch.ids.add(item.id)
                n_records += 1
                if len(batch.records) >= self.batch_records:
                    self._flush(ctx, report)
                    batch.connector = connector.name
        except IngestionError as exc:
            stats.errors += 1
            report.failed_files += 1
            reason = exc.reason
            if n_records:
                reason += f" ({n_records} complete records before it were kept)"
            self._problem(report, FileProblem(str(path), exc.locator, reason), on_problem)
            stats.seconds += time.perf_counter() - started
            return
        stats.files += 1
        stats.records += n_records
        # the file is marked complete when the batch holding its last record commits
        batch.files.append((str(path.resolve()), digest, size, n_records))
        stats.seconds += time.perf_counter() - started

    def _flush(self, ctx: IngestContext, report: IngestReport) -> None:
        """Commit the open batch (one transaction), then mark the files it completes."""
        batch = self._batch
        if batch.records:
            stats = report.stats[batch.connector or "?"]
            started = time.perf_counter()
            result = self.store.write(batch.records, run_id=ctx.run_id)
            stats.inserted += result.inserted
            stats.updated += result.updated
            stats.unchanged += result.unchanged
            stats.chunks += result.chunks
            stats.embedded += result.embedded
            stats.seconds += time.perf_counter() - started
        for path, digest, size, n_records in batch.files:
            self.store.mark_file(path, digest, size, batch.connector or "?", ctx.run_id, n_records)
        batch.reset()
