"""IU X-ray (Open-i) radiology reports: the original XML format, ``reports.jsonl`` (the XML converted to
JSON Lines without text changes) and the Kaggle ``indiana_reports.csv`` export.

All three map to the same canonical record id ``iu-xray/DiagnosticReport/<uid>``. XML and JSONL of one
report give identical content (so re-ingesting either is a no-op). The CSV is a lossy re-export of the
same reports; beside a ``reports.jsonl`` it is skipped as a duplicate (see the registry's auxiliary rules).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as DefusedET

from sage_health.core.errors import IngestionError
from sage_health.data.ingest.base import (
    IngestContext,
    RecordProblem,
    clean,
    csv_header,
    iter_csv_rows,
    iter_json_lines,
)
from sage_health.data.schema import Coding, DiagnosticReport, RecordBase, ReportSections

_SOURCE = "iu-xray"


def iu_report(
    uid: Any,
    *,
    source: str,
    indication: str | None,
    comparison: str | None,
    findings: str | None,
    impression: str | None,
    mesh_major: list[str],
    mesh_automatic: list[str],
    images: list[dict[str, str]],
) -> DiagnosticReport:
    uid_text = str(uid).strip()
    if not uid_text.isdigit():
        raise ValueError("missing or non-numeric 'uid'")
    caption = next((clean(i.get("caption")) for i in images if clean(i.get("caption"))), None)
    return DiagnosticReport(
        id=f"{source}/DiagnosticReport/{uid_text}",
        source=source,
        status="final",
        category="RAD",
        modality="CR",
        code=Coding(display=caption or "Chest X-ray"),
        report_sections=ReportSections(
            indication=clean(indication),
            comparison=clean(comparison),
            findings=clean(findings),
            impression=clean(impression),
        ),
        mesh_major=[m for m in mesh_major if m],
        mesh_automatic=[m for m in mesh_automatic if m],
        image_ids=[str(i["id"]) for i in images if i.get("id")],
    )


class IUReportsJsonlConnector:
    name = "iu-xray-jsonl"
    version = "1"

    def detect(self, path: Path, head: bytes) -> bool:
        return path.name.endswith((".jsonl", ".jsonl.gz")) and b'"uid"' in head and b'"impression"' in head

    def parse(self, path: Path, file_sha256: str, ctx: IngestContext) -> Iterator[RecordBase | RecordProblem]:
        source = ctx.source(_SOURCE)
        for lineno, obj in iter_json_lines(path):
            if isinstance(obj, RecordProblem):
                yield obj
                continue
            try:
                images = obj.get("images") or []
                record = iu_report(
                    obj.get("uid"),
                    source=source,
                    indication=obj.get("indication"),
                    comparison=obj.get("comparison"),
                    findings=obj.get("findings"),
                    impression=obj.get("impression"),
                    mesh_major=list(obj.get("mesh_major") or []),
                    mesh_automatic=list(obj.get("mesh_automatic") or []),
                    images=images if isinstance(images, list) else [],
                )
            except (ValueError, TypeError, AttributeError) as exc:
                yield RecordProblem(locator=f"line {lineno}", reason=f"invalid report: {str(exc).splitlines()[0]}")
                continue
            prov = ctx.provenance(path, file_sha256, f"line {lineno}", self)
            yield record.model_copy(update={"provenance": prov})


class OpenIXmlConnector:
    """One Open-i ``ecgen-radiology/<n>.xml`` report (``<eCitation>`` with labelled ``AbstractText``)."""

    name = "iu-xray-xml"
    version = "1"

    def detect(self, path: Path, head: bytes) -> bool:
        return path.suffix.lower() == ".xml" and b"<eCitation" in head

    def parse(self, path: Path, file_sha256: str, ctx: IngestContext) -> Iterator[RecordBase | RecordProblem]:
        try:
            root = DefusedET.parse(path).getroot()
        except DefusedET.ParseError as exc:
            raise IngestionError(f"malformed XML: {exc}", path=str(path)) from exc
        except (OSError, ValueError) as exc:  # defusedxml raises ValueError subclasses for entity attacks
            raise IngestionError(f"unreadable XML: {type(exc).__name__}", path=str(path)) from exc
        sections: dict[str, str | None] = {}
        for node in root.iter("AbstractText"):
            label = (node.get("Label") or "").lower()
            if label in ("indication", "comparison", "findings", "impression"):
                sections[label] = "".join(node.itertext()) or None
        uid_node = root.find("IUXRId")
        uid = uid_node.get("id") if uid_node is not None else None
        if uid is None:
            openi = root.find("uId")
            openi_id = (openi.get("id") or "") if openi is not None else ""
            uid = openi_id.removeprefix("CXR") if openi_id.startswith("CXR") else path.stem
        mesh = next(root.iter("MeSH"), None)
        major = [m.text or "" for m in mesh.findall("major")] if mesh is not None else []
        automatic = [m.text or "" for m in mesh.findall("automatic")] if mesh is not None else []
        images = []
        for image in root.iter("parentImage"):
            caption = image.find("caption")
            images.append({"id": image.get("id") or "", "caption": (caption.text or "") if caption is not None else ""})
        try:
            record = iu_report(
                uid,
                source=ctx.source(_SOURCE),
                indication=sections.get("indication"),
                comparison=sections.get("comparison"),
                findings=sections.get("findings"),
                impression=sections.get("impression"),
                mesh_major=major,
                mesh_automatic=automatic,
                images=images,
            )
        except ValueError as exc:
            raise IngestionError(f"invalid report: {exc}", path=str(path)) from exc
        yield record.model_copy(update={"provenance": ctx.provenance(path, file_sha256, "$.eCitation", self)})


class IndianaCsvConnector:
    """Kaggle ``indiana_reports.csv``: ``uid,MeSH,Problems,image,indication,comparison,findings,impression``."""

    name = "iu-xray-csv"
    version = "1"
    COLUMNS = ("uid", "MeSH", "indication", "findings", "impression")

    def detect(self, path: Path, head: bytes) -> bool:
        header = csv_header(head)
        return path.suffix.lower() == ".csv" and all(c in header for c in self.COLUMNS)

    def parse(self, path: Path, file_sha256: str, ctx: IngestContext) -> Iterator[RecordBase | RecordProblem]:
        source = ctx.source(_SOURCE)
        for rowno, row in iter_csv_rows(path):
            try:
                record = iu_report(
                    row.get("uid"),
                    source=source,
                    indication=row.get("indication"),
                    comparison=row.get("comparison"),
                    findings=row.get("findings"),
                    impression=row.get("impression"),
                    mesh_major=[m.strip() for m in (row.get("MeSH") or "").split(";") if m.strip()],
                    mesh_automatic=[],
                    images=[{"caption": row.get("image") or ""}],
                )
            except ValueError as exc:
                yield RecordProblem(locator=f"row {rowno}", reason=f"invalid report: {exc}")
                continue
            yield record.model_copy(update={"provenance": ctx.provenance(path, file_sha256, f"row {rowno}", self)})
