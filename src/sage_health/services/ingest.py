"""Ingest: files and folders into the store, as one governed run (used by ``sage-health ingest`` and the demo).

Policy: ``ingest`` (data stewards and admins, purpose operations). The governed store runs the pipeline over its
private store and writes ONE audit event per run (run id, counts, sha256 of the input paths; never a path). A
denied caller creates nothing: the decision comes before the store is opened.

What the caller sees:

- ``on_progress`` receives an :class:`IngestProgress` after each file (bytes done of the planned total);
- ``on_problem`` receives each problem line as it happens (one per bad file or record, naming the file and
  locator and the reason, never content from the input); the rest of the run continues and nothing partial is
  stored;
- the result is an :class:`IngestResult`: per-connector counts, the problems and the skipped files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from sage_health.data.governance.policy import Action
from sage_health.data.ingest.pipeline import FileProblem, IngestOptions, planned_bytes
from sage_health.services.session import Session

__all__ = ["ConnectorCounts", "IngestProblem", "IngestProgress", "IngestResult", "SkippedFile", "ingest"]


class ConnectorCounts(BaseModel):
    """Counts of one connector (or the total) in one run."""

    model_config = ConfigDict(frozen=True)

    files: int = 0
    records: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    chunks: int = 0
    embedded: int = 0
    """Chunks whose vector was computed (the rest reused the vector of an identical text)."""
    errors: int = 0
    seconds: float = 0.0


class IngestProblem(BaseModel):
    """One rejected file or record: where (path, locator) and why. Never content from the input."""

    model_config = ConfigDict(frozen=True)

    path: str
    locator: str | None
    reason: str

    def line(self) -> str:
        where = f"{self.path}:{self.locator}" if self.locator else self.path
        return f"{where}: {self.reason}"


class SkippedFile(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str
    reason: str
    """Dataset documentation, an auxiliary table, or unchanged since a completed ingest."""


class IngestResult(BaseModel):
    """The report of one ingest run (its JSON form is what ``ingest --json`` prints)."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    seconds: float
    failed_files: int
    by_connector: dict[str, ConnectorCounts]
    total: ConnectorCounts
    problems: tuple[IngestProblem, ...]
    skipped: tuple[SkippedFile, ...]

    @property
    def clean(self) -> bool:
        """No file failed and no record was rejected (the CLI exits 2 otherwise)."""
        return not (self.failed_files or self.problems)


@dataclass(frozen=True)
class IngestProgress:
    """Progress after one file: bytes of the files visited so far out of the planned total."""

    bytes_done: int
    bytes_total: int
    files_done: int


def _problem(problem: FileProblem) -> IngestProblem:
    return IngestProblem(path=problem.path, locator=problem.locator, reason=problem.reason)


def ingest(
    session: Session,
    paths: Sequence[Path],
    *,
    source: str | None = None,
    force: bool = False,
    command: str | None = None,
    on_progress: Callable[[IngestProgress], None] | None = None,
    on_problem: Callable[[IngestProblem], None] | None = None,
) -> IngestResult:
    """Ingest ``paths`` (files or folders; the format is detected per file) into the session's store, creating
    it if needed. Idempotent: files ingested unchanged are skipped unless ``force``; changed records get a new
    version. ``source`` names the dataset recorded as the records' source. ``command``: what the run ledger
    records as the command (default ``ingest``; the paths are never written to the audit log)."""
    session.decide(Action.INGEST, detail={"paths": len(paths)})
    settings = session.settings
    options = IngestOptions(
        batch_records=settings.batch_records,
        max_file_bytes=int(settings.max_file_mb * 2**20),
        source_override=source,
        force=force,
    )
    total = planned_bytes(paths) if on_progress is not None else 0
    done = {"bytes": 0, "files": 0}

    def progress(_event: str, size: int) -> None:
        done["bytes"] += size
        done["files"] += 1
        if on_progress is not None:
            on_progress(IngestProgress(bytes_done=done["bytes"], bytes_total=total, files_done=done["files"]))

    def problem(found: FileProblem) -> None:
        if on_problem is not None:
            on_problem(_problem(found))

    detail: dict[str, object] = {"channel": session.channel}
    if session.token_id is not None:
        detail["token_id"] = session.token_id
    report = session.governed(must_exist=False).ingest(
        list(paths),
        options=options,
        command=command or "ingest",
        progress=progress,
        on_problem=problem,
        detail=detail,
    )
    return IngestResult.model_validate(report.as_dict())
