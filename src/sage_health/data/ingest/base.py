"""The ``Connector`` extension point: one per input format.

A connector says whether it recognises a file (``detect``, from the path and the first bytes) and turns
it into canonical records (``parse``), streaming: it yields records one by one, and yields a
:class:`RecordProblem` for an item it must reject (an invalid FHIR resource, a malformed JSON line), so
the rest of the file continues. A problem with the whole file is raised as an
:class:`~sage_health.core.errors.IngestionError` (the file is rejected; nothing of it is half-written).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from sage_health.core.errors import IngestionError
from sage_health.core.provenance import Provenance, Transform
from sage_health.data.schema import RecordBase

HEAD_BYTES = 4096


class RecordProblem(BaseModel):
    """One rejected item inside a file: where it is and why (no PHI: locators, ids, reasons only)."""

    model_config = ConfigDict(frozen=True)

    locator: str
    reason: str


@dataclass
class IngestContext:
    """What a connector may know about the run it is part of."""

    run_id: str
    source_override: str | None = None
    sidecar_cache: dict[Path, dict[str, dict[str, str]]] = field(default_factory=dict)

    def source(self, default: str) -> str:
        return self.source_override or default

    def provenance(self, path: Path, file_sha256: str, locator: str, connector: Connector) -> Provenance:
        return Provenance(
            source_file=str(path),
            locator=locator,
            source_sha256=file_sha256,
            run_id=self.run_id,
            transforms=(Transform(name=f"ingest.{connector.name}", version=connector.version),),
        )

    def sidecar(self, csv_path: Path, key_column: str) -> dict[str, dict[str, str]]:
        """Rows of a metadata CSV beside the data (e.g. ``images.csv``), keyed by one column; cached."""
        cached = self.sidecar_cache.get(csv_path)
        if cached is None:
            cached = {}
            if csv_path.is_file():
                with csv_path.open(encoding="utf-8", newline="") as handle:
                    for row in csv.DictReader(handle):
                        key = row.get(key_column)
                        if key:
                            cached[key] = row
            self.sidecar_cache[csv_path] = cached
        return cached


@runtime_checkable
class Connector(Protocol):
    """Recognises and parses one input format into canonical records."""

    name: str
    version: str

    def detect(self, path: Path, head: bytes) -> bool:
        """True when this connector handles the file (decided from the name and the first bytes)."""
        ...

    def parse(self, path: Path, file_sha256: str, ctx: IngestContext) -> Iterator[RecordBase | RecordProblem]:
        """Yield records (and problems for rejected items), streaming; raise IngestionError for the file."""
        ...


# ---------------------------------------------------------------------- shared readers


def read_head(path: Path) -> bytes:
    """The first bytes of a file, transparently gunzipped for ``.gz`` files."""
    with path.open("rb") as handle:
        raw = handle.read(HEAD_BYTES)
    if raw[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as handle:
                return handle.read(HEAD_BYTES)
        except (OSError, EOFError):
            return raw
    return raw


def open_text(path: Path) -> io.TextIOWrapper:
    """Open a (possibly gzipped) UTF-8 text file for streaming (strict decoding)."""
    with path.open("rb") as probe:
        magic = probe.read(2)
    binary: Any = gzip.open(path, "rb") if magic == b"\x1f\x8b" else path.open("rb")  # noqa: SIM115 - caller closes
    return io.TextIOWrapper(binary, encoding="utf-8", errors="strict", newline="")


def iter_json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | RecordProblem]]:
    """(line number, object) for each non-blank line; malformed lines become problems.

    Raises IngestionError for file-level failures (wrong encoding, truncated gzip stream).
    """
    lineno = 0
    try:
        with open_text(path) as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield (
                        lineno,
                        RecordProblem(
                            locator=f"line {lineno}", reason=f"malformed JSON: {exc.msg} (column {exc.colno})"
                        ),
                    )
                    continue
                if not isinstance(obj, dict):
                    yield lineno, RecordProblem(locator=f"line {lineno}", reason="expected a JSON object")
                    continue
                yield lineno, obj
    except UnicodeDecodeError as exc:
        raise IngestionError(
            f"not valid UTF-8 (byte offset {exc.start} of line {lineno + 1}); re-encode the file as UTF-8",
            path=str(path),
        ) from exc
    except (OSError, EOFError) as exc:
        raise IngestionError(f"unreadable or truncated file after line {lineno}: {exc}", path=str(path)) from exc


def load_json(path: Path) -> Any:
    """Parse a whole JSON document; errors name the file and position."""
    try:
        with open_text(path) as handle:
            return json.load(handle)
    except UnicodeDecodeError as exc:
        raise IngestionError(
            f"not valid UTF-8 (byte offset {exc.start}); re-encode the file as UTF-8", path=str(path)
        ) from exc
    except json.JSONDecodeError as exc:
        raise IngestionError(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", path=str(path)
        ) from exc
    except (OSError, EOFError) as exc:
        raise IngestionError(f"unreadable or truncated file: {exc}", path=str(path)) from exc


def iter_csv_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(data row number starting at 1, row) of a UTF-8 CSV with a header."""
    rowno = 0
    try:
        with open_text(path) as handle:
            for rowno, row in enumerate(csv.DictReader(handle), start=1):
                yield rowno, row
    except UnicodeDecodeError as exc:
        raise IngestionError(
            f"not valid UTF-8 (near data row {rowno + 1}); re-encode the file as UTF-8", path=str(path)
        ) from exc
    except csv.Error as exc:
        raise IngestionError(f"malformed CSV near data row {rowno + 1}: {exc}", path=str(path)) from exc
    except (OSError, EOFError) as exc:
        raise IngestionError(f"unreadable or truncated file near data row {rowno + 1}: {exc}", path=str(path)) from exc


def csv_header(head: bytes) -> list[str]:
    """Column names of a CSV from its first bytes (empty when not decodable)."""
    try:
        first = head.decode("utf-8").splitlines()[0] if head else ""
    except (UnicodeDecodeError, IndexError):
        return []
    return next(csv.reader([first]), [])


def clean(value: Any) -> str | None:
    """Stripped string or None for empty/missing values."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def safe_id(value: str) -> str:
    """Make a local id safe for record ids (letters, digits, . _ : -)."""
    out = "".join(ch if ch.isalnum() or ch in "._:-" else "-" for ch in value.strip())
    return out.strip("-") or "unnamed"
