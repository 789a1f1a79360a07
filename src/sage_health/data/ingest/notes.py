"""Plain-text and markdown clinical notes -> ``DocumentReference``.

An optional front-matter block sets metadata (keys are case-insensitive)::

    ---
    patient: Patient/123
    date: 2021-04-05
    title: Discharge summary
    type: discharge-summary
    ---

The record id is derived from the file's resolved path, so an edited note becomes a new version of the
same record.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from sage_health.core.errors import IngestionError
from sage_health.core.hashing import sha256_text
from sage_health.data.ingest.base import IngestContext, RecordProblem, safe_id
from sage_health.data.schema import DocumentReference, RecordBase, as_utc

_TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".note")


def _front_matter(text: str) -> tuple[dict[str, str], str]:
    if not text.startswith("---\n"):
        return {}, text
    end = text.find("\n---", 4)
    if end < 0:
        return {}, text
    meta: dict[str, str] = {}
    for line in text[4:end].splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            meta[key.strip().lower()] = value.strip()
    body = text[end + 4 :]
    return meta, body.lstrip("\n")


class TextNoteConnector:
    name = "text-note"
    version = "1"

    def detect(self, path: Path, head: bytes) -> bool:
        if path.suffix.lower() not in _TEXT_SUFFIXES:
            return False
        return b"\x00" not in head

    def parse(self, path: Path, file_sha256: str, ctx: IngestContext) -> Iterator[RecordBase | RecordProblem]:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise IngestionError(
                f"not valid UTF-8 (byte offset {exc.start}); re-encode the file as UTF-8", path=str(path)
            ) from exc
        meta, body = _front_matter(text.replace("\r\n", "\n"))
        if not body.strip():
            raise IngestionError("empty note (no text after the front matter)", path=str(path))
        effective = None
        if meta.get("date"):
            try:
                effective = as_utc(datetime.fromisoformat(meta["date"]))
            except ValueError as exc:
                raise IngestionError("front matter 'date' is not an ISO 8601 date", path=str(path)) from exc
        source = ctx.source(meta.get("source") or "notes")
        local = f"{safe_id(path.stem)}-{sha256_text(str(path.resolve()))[:10]}"
        title = meta.get("title")
        if title is None and path.suffix.lower() in (".md", ".markdown"):
            first = body.strip().splitlines()[0]
            title = first.lstrip("#").strip() if first.startswith("#") else None
        yield DocumentReference(
            id=f"{source}/DocumentReference/{local}",
            source=source,
            patient_id=meta.get("patient") or None,
            effective=effective,
            title=title,
            doc_type=meta.get("type") or "clinical-note",
            text=body.strip(),
            provenance=ctx.provenance(path, file_sha256, "$", self),
        )
