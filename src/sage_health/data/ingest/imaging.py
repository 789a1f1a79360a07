"""Imaging connectors: PNG images, DICOM objects, and the COVID-19 image collection's case notes.

Pixels never enter the store. An :class:`~sage_health.data.schema.Image` record holds metadata, the
resolved path of its file (``pixel_ref``) and the file's sha256 (``pixel_sha256``). Files are still
checked for completeness before anything is yielded, so a truncated or corrupt image is rejected whole.

* :class:`PngImageConnector` validates a PNG with Pillow (``verify()`` for chunk CRCs, then ``load()`` to
  catch truncated image data) and takes its metadata from a sidecar table in the same folder or its parent:
  IU X-ray ``images.csv`` (linked to the report ``iu-xray/DiagnosticReport/<study>``), the COVID-19 subset's
  ``images.csv`` and NIH ChestX-ray14 ``labels.csv``. Other PNGs get source ``images`` and no patient.
* :class:`DicomConnector` reads any DICOM object with pydicom, without decoding pixels. Completeness:
  every top-level element must end inside the file, uncompressed *Pixel Data* must hold at least
  ``Rows x Columns x SamplesPerPixel x BitsAllocated / 8 x NumberOfFrames`` bytes, and encapsulated
  (compressed) *Pixel Data* must be present and end with its delimiter. Mapping by content:

  - objects with pixel data (CT, MR, CR, NM, SC, SEG, RT Dose, ...) -> ``Image``;
  - structured reports (SOP class name contains "SR") -> ``DocumentReference`` whose text is the rendered
    content tree (concept: value lines, indented by nesting);
  - other objects without pixels (RT Plan, RT Structure Set, ...) -> ``FhirResource`` with
    ``fhir_type="DICOM <SOP class name>"`` and a short summary (plan label, beams, fractions, ROI names);
  - a Media Storage Directory (DICOMDIR) yields nothing: it only indexes the instances stored beside it
    (the registry also skips files named ``DICOMDIR`` as auxiliary, so this is a fallback for other names).

  Records are keyed by SOP Instance UID (``dicom/Image/<uid>``), the DICOM identity of an object: two files
  holding the same instance (e.g. one re-encoded with another transfer syntax) are one record.
* :class:`CovidCaseNotesConnector` turns each ``metadata.csv`` row with clinical notes into a
  ``DocumentReference`` for the case's patient.

Error messages name the file and the reason only; values from the data (names, ids, dates) never appear.
"""

from __future__ import annotations

import csv
import re
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID

from sage_health.core.errors import IngestionError
from sage_health.data.ingest.base import (
    IngestContext,
    RecordProblem,
    clean,
    csv_header,
    iter_csv_rows,
    safe_id,
)
from sage_health.data.schema import Coding, DocumentReference, FhirResource, Image, RecordBase, as_utc

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Pillow reports a damaged PNG as OSError (truncated data, decoder errors; UnidentifiedImageError is a
# subclass), SyntaxError (bad chunk CRC / broken chunk layout), ValueError or EOFError (odd headers),
# struct.error / zlib.error (short or corrupt chunk data) and DecompressionBombError (absurd dimensions).
_PIL_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    PILImage.DecompressionBombError,
)

# pydicom raises all of these for malformed input, both while reading and while converting raw element
# values on first access: InvalidDicomError (not a DICOM stream), OSError/EOFError (short reads, "no tag
# to read"), struct.error (short headers), zlib.error (broken deflated data sets), BytesLengthException (a
# binary value whose length is not a multiple of its item size), ValueError/TypeError/KeyError/IndexError
# (undecodable values, bad VRs, malformed sequences) and NotImplementedError (unknown encodings). Only the
# structural ones have messages safe to show (no data values in them).
DICOM_ERRORS: tuple[type[BaseException], ...] = (
    InvalidDicomError,
    BytesLengthException,
    OSError,
    EOFError,
    struct.error,
    zlib.error,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    NotImplementedError,
)
DICOM_SAFE_MESSAGES: tuple[type[BaseException], ...] = (
    InvalidDicomError,
    OSError,
    EOFError,
    struct.error,
    zlib.error,
)

_DEFER_BYTES = 64 * 1024
"""Elements larger than this are skipped on read (never loaded); Pixel Data is checked by its length."""
_UNDEFINED_LENGTH = 0xFFFFFFFF
_MAX_HEADER_BYTES = 12  # tag (4) + VR (2) + reserved (2) + 32-bit length (4)
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float Pixel Data, Double Float Pixel Data
_PIXEL_DATA = 0x7FE00010
_DEFLATED = "1.2.840.10008.1.2.1.99"
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_MAX_SR_DEPTH = 32


# ---------------------------------------------------------------------- PNG


@dataclass(frozen=True)
class _PngMeta:
    source: str
    patient_id: str | None = None
    study_id: str | None = None
    modality: str | None = None
    body_part: str | None = None
    view: str | None = None
    labels: list[str] = field(default_factory=list)
    description: str | None = None


_PHOTOMETRIC = {"1": "MONOCHROME2", "L": "MONOCHROME2", "LA": "MONOCHROME2", "I;16": "MONOCHROME2",
                "I": "MONOCHROME2", "RGB": "RGB", "RGBA": "RGB", "P": "PALETTE COLOR"}  # fmt: skip
_BITS = {"1": 1, "L": 8, "LA": 8, "P": 8, "RGB": 8, "RGBA": 8, "I;16": 16, "I": 32}


def _sidecar(ctx: IngestContext, image: Path, csv_path: Path, key: str) -> dict[str, dict[str, str]]:
    try:
        return ctx.sidecar(csv_path, key)
    except UnicodeDecodeError as exc:
        raise IngestionError(
            f"sidecar table {csv_path} is not valid UTF-8; re-encode it as UTF-8", path=str(image)
        ) from exc
    except (OSError, csv.Error) as exc:
        raise IngestionError(f"sidecar table {csv_path} is unreadable: {exc}", path=str(image)) from exc


def _png_meta(path: Path, ctx: IngestContext) -> _PngMeta:
    """Metadata for a PNG from the first sidecar table (same folder, then parent) that lists it."""
    for folder in (path.parent, path.parent.parent):
        rel = path.relative_to(folder).as_posix()
        rows = _sidecar(ctx, path, folder / "images.csv", "image_file")
        row = rows.get(rel) or rows.get(path.name)
        if row and "study_id" in row and "image_id" in row:
            source = ctx.source("iu-xray")
            study = clean(row.get("study_id"))
            return _PngMeta(
                source=source,
                study_id=f"{source}/DiagnosticReport/{safe_id(study)}" if study else None,
                modality="CR",
                body_part="CHEST",
                view=clean(row.get("view")),
            )
        if row and "patientid" in row and "finding" in row:
            source = ctx.source("covid-cxr")
            patient = clean(row.get("patientid"))
            finding = clean(row.get("finding"))
            licence = clean(row.get("license"))
            return _PngMeta(
                source=source,
                patient_id=f"{source}/Patient/{safe_id(patient)}" if patient else None,
                body_part="CHEST",
                view=clean(row.get("view")),
                # "todo" marks a case not yet labelled upstream: it is not a diagnosis.
                labels=[finding] if finding and finding.lower() != "todo" else [],
                description=f"license: {licence}" if licence else None,
            )
        rows = _sidecar(ctx, path, folder / "labels.csv", "image")
        row = rows.get(path.name) or rows.get(rel)
        if row and "finding_labels" in row:
            source = ctx.source("nih-cxr14")
            patient = clean(row.get("patient_id"))
            return _PngMeta(
                source=source,
                patient_id=f"{source}/Patient/{safe_id(patient)}" if patient else None,
                body_part="CHEST",
                view=clean(row.get("view_position")),
                labels=[lab.strip() for lab in (row.get("finding_labels") or "").split("|") if lab.strip()],
            )
    return _PngMeta(source=ctx.source("images"))


class PngImageConnector:
    """PNG image -> ``Image`` (metadata only; pixels stay in the file)."""

    name = "png-image"
    version = "1"

    def detect(self, path: Path, head: bytes) -> bool:
        return head.startswith(PNG_MAGIC)

    def parse(self, path: Path, file_sha256: str, ctx: IngestContext) -> Iterator[RecordBase | RecordProblem]:
        try:
            with PILImage.open(path) as img:
                if img.format != "PNG":
                    raise IngestionError(f"not a PNG image (Pillow reads it as {img.format})", path=str(path))
                img.verify()
            # verify() leaves the image unusable and does not decode the data: re-open and load to catch
            # truncated or undecodable image data.
            with PILImage.open(path) as img:
                img.load()
                width, height = img.size
                mode = img.mode
                frames = int(getattr(img, "n_frames", 1))
        except _PIL_ERRORS as exc:
            raise IngestionError(
                f"corrupt or truncated PNG ({type(exc).__name__}: {exc}); replace the file with an intact copy",
                path=str(path),
            ) from exc
        meta = _png_meta(path, ctx)
        yield Image(
            id=f"{meta.source}/Image/{safe_id(path.stem)}",
            source=meta.source,
            patient_id=meta.patient_id,
            image_id=path.stem,
            file_format="PNG",
            pixel_ref=str(path.resolve()),
            pixel_sha256=file_sha256,
            study_id=meta.study_id,
            modality=meta.modality,
            body_part=meta.body_part,
            view=meta.view,
            width=width,
            height=height,
            frames=frames,
            bits_stored=_BITS.get(mode),
            photometric=_PHOTOMETRIC.get(mode, mode),
            labels=meta.labels,
            description=meta.description,
            provenance=ctx.provenance(path, file_sha256, "$", self),
        )


# ---------------------------------------------------------------------- DICOM


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    if isinstance(value, MultiValue | list | tuple):  # multi-valued element
        value = "\\".join(str(v) for v in value)
    return clean(value)


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _dicom_datetime(date_value: str | None, time_value: str | None) -> datetime | None:
    """DA (YYYYMMDD, or the old YYYY.MM.DD) + TM (HHMMSS.FFFFFF, or HH:MM:SS) -> UTC; None if unusable."""
    day = re.sub(r"\D", "", date_value or "")
    if len(day) != 8:
        return None
    clock = (time_value or "").replace(":", "")
    hms, _, frac = clock.partition(".")
    hms = re.sub(r"\D", "", hms)[:6].ljust(6, "0") if hms else "000000"
    micros = re.sub(r"\D", "", frac)[:6].ljust(6, "0") if frac else "000000"
    try:
        value = datetime.strptime(day + hms + micros, "%Y%m%d%H%M%S%f")
    except ValueError:
        return None
    return as_utc(value)


def _expected_pixel_bytes(ds: Dataset) -> int | None:
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    bits = _int(ds, "BitsAllocated")
    if not rows or not cols or not bits:
        return None
    samples = _int(ds, "SamplesPerPixel") or 1
    frames = _int(ds, "NumberOfFrames") or 1
    total_bits = rows * cols * samples * bits * frames
    if _text(ds, "PhotometricInterpretation") == "YBR_FULL_422":
        total_bits = total_bits * 2 // 3  # two chroma samples shared by each pair of pixels
    return (total_bits + 7) // 8


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _safe_reason(exc: BaseException) -> str:
    if isinstance(exc, DICOM_SAFE_MESSAGES):
        first = str(exc).splitlines()[0] if str(exc) else ""
        return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return type(exc).__name__  # conversion errors may quote data values (PHI): name the type only


def _read_dicom(path: Path) -> Dataset:
    """Read a DICOM object (preamble optional) without loading large values; raise on truncation."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = dcmread(path, force=True, defer_size=_DEFER_BYTES)
            if str(ds.file_meta.get("TransferSyntaxUID", "")) == _DEFLATED:
                # A deflated data set is inflated in memory; deferred reads would seek in the compressed file.
                ds = dcmread(path, force=True)
        except zlib.error as exc:
            raise IngestionError(
                f"truncated DICOM: the deflated data set is incomplete ({exc})", path=str(path)
            ) from exc
        except DICOM_ERRORS as exc:
            raise IngestionError(f"unreadable DICOM ({_safe_reason(exc)})", path=str(path)) from exc
    for warning in caught:
        if "end of file" in str(warning.message).lower():
            raise IngestionError(
                "truncated DICOM: the file ends before a value's delimiter; replace it with an intact copy",
                path=str(path),
            )
    return ds


def _check_complete(ds: Dataset, path: Path) -> None:
    """Raise IngestionError when the file is cut short or the pixel data is incomplete."""
    deflated = str(ds.file_meta.get("TransferSyntaxUID", "")) == _DEFLATED
    size = path.stat().st_size
    if not deflated:  # element offsets of a deflated set are positions in the inflated stream
        last_end: int | None = None
        for tag in sorted(ds.keys()):
            elem = ds.get_item(tag, keep_deferred=True)
            if not isinstance(elem, RawDataElement) or elem.length == _UNDEFINED_LENGTH:
                last_end = None  # undefined length: parsed up to its delimiter, end offset unknown
                continue
            last_end = elem.value_tell + elem.length
            if last_end > size:
                raise IngestionError(
                    f"truncated DICOM: element {_tag_text(int(tag))} needs {last_end - size} bytes beyond "
                    f"the end of the file ({size} bytes); replace it with an intact copy",
                    path=str(path),
                )
        # pydicom stops silently at a partial element header (< 12 bytes left): the file was cut there.
        if last_end is not None and 0 < size - last_end < _MAX_HEADER_BYTES:
            raise IngestionError(
                f"truncated DICOM: the file ends inside an element header ({size - last_end} bytes after the "
                "last complete element); replace it with an intact copy",
                path=str(path),
            )
    pixel = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    if pixel is None:
        return
    if isinstance(pixel, RawDataElement):
        if pixel.length == _UNDEFINED_LENGTH:
            return  # encapsulated (compressed) frames, read up to their delimiter: present and complete
        length = pixel.length
    else:
        value = pixel.value
        length = len(value) if isinstance(value, bytes | bytearray) else 0
    transfer_syntax = ds.file_meta.get("TransferSyntaxUID")
    if transfer_syntax is not None and UID(str(transfer_syntax)).is_compressed:
        if length == 0:
            raise IngestionError("truncated DICOM: compressed Pixel Data is empty", path=str(path))
        return
    expected = _expected_pixel_bytes(ds)
    if expected is not None and length < expected:
        raise IngestionError(
            f"truncated DICOM: Pixel Data holds {length} bytes, expected {expected} "
            "(Rows x Columns x SamplesPerPixel x BitsAllocated/8 x NumberOfFrames)",
            path=str(path),
        )


def _code_meaning(item: Dataset, keyword: str) -> str | None:
    seq = item.get(keyword)
    if not seq:
        return None
    first = seq[0]
    return clean(first.get("CodeMeaning")) or clean(first.get("CodeValue"))


def _sr_value(item: Dataset) -> str | None:
    kind = clean(item.get("ValueType"))
    if kind == "TEXT":
        return clean(item.get("TextValue"))
    if kind == "CODE":
        return _code_meaning(item, "ConceptCodeSequence")
    if kind == "NUM":
        measured = item.get("MeasuredValueSequence")
        if not measured:
            return None
        number = clean(measured[0].get("NumericValue"))
        units = measured[0].get("MeasurementUnitsCodeSequence")
        unit = (clean(units[0].get("CodeValue")) or clean(units[0].get("CodeMeaning"))) if units else None
        return " ".join(p for p in (number, unit) if p) or None
    if kind == "PNAME":
        return clean(item.get("PersonName"))
    if kind in ("DATE", "TIME", "DATETIME", "UIDREF"):
        keyword = {"DATE": "Date", "TIME": "Time", "DATETIME": "DateTime", "UIDREF": "UID"}[kind]
        return clean(item.get(keyword))
    if kind in ("IMAGE", "COMPOSITE", "WAVEFORM"):
        refs = item.get("ReferencedSOPSequence")
        if refs:
            ref_class = refs[0].get("ReferencedSOPClassUID")
            return f"reference to {UID(str(ref_class)).name}" if ref_class else f"{kind.lower()} reference"
        return None
    return None


def _sr_lines(items: Any, depth: int, out: list[str]) -> None:
    if depth > _MAX_SR_DEPTH:
        return
    for item in items:
        concept = _code_meaning(item, "ConceptNameCodeSequence")
        value = _sr_value(item)
        if value:
            value = re.sub(r"\s*[\r\n]+\s*", " ", value).strip()
        line = f"{concept}: {value}" if concept and value else value or concept
        if line:
            out.append("  " * depth + line)
        children = item.get("ContentSequence")
        if children:
            _sr_lines(children, depth + 1 if line else depth, out)


def _summary(ds: Dataset) -> str:
    """A short readable summary of a non-image DICOM object (its type is said by the record)."""
    parts: list[str] = []
    modality = _text(ds, "Modality")
    if modality:
        parts.append(f"modality {modality}")
    label = _text(ds, "RTPlanLabel") or _text(ds, "StructureSetLabel")
    if label:
        parts.append(f"label {label}")
    intent = _text(ds, "RTPlanIntent")
    if intent:
        parts.append(f"intent {intent}")
    beams = ds.get("BeamSequence") or ds.get("IonBeamSequence")
    if beams:
        names = [clean(b.get("BeamName")) for b in beams]
        parts.append(
            f"{len(beams)} beam(s): " + ", ".join(n for n in names if n) if any(names) else f"{len(beams)} beam(s)"
        )
    fractions = [clean(f.get("NumberOfFractionsPlanned")) for f in ds.get("FractionGroupSequence") or []]
    if any(fractions):
        parts.append("fractions planned: " + ", ".join(f for f in fractions if f))
    rois = ds.get("StructureSetROISequence")
    if rois:
        names = [clean(r.get("ROIName")) for r in rois]
        parts.append(f"{len(rois)} structure(s): " + ", ".join(n for n in names if n))
    for keyword in ("StudyDescription", "SeriesDescription"):
        text = _text(ds, keyword)
        if text:
            parts.append(text)
    return "; ".join(parts)


_PIXEL_SOP_CLASSES = frozenset(
    {
        "Segmentation Storage",
        "Label Map Segmentation Storage",
        "Heightmap Segmentation Storage",
        "Parametric Map Storage",
    }
)


def _needs_pixels(ds: Dataset, sop_name: str) -> bool:
    """Whether the object must carry pixel data (an image module, or an image/video/SEG SOP class)."""
    return "Rows" in ds or "Image Storage" in sop_name or "Video" in sop_name or sop_name in _PIXEL_SOP_CLASSES


class DicomConnector:
    """Any DICOM object -> ``Image`` (pixel data), ``DocumentReference`` (SR) or ``FhirResource`` (other)."""

    name = "dicom"
    version = "1"

    def detect(self, path: Path, head: bytes) -> bool:
        return head[128:132] == b"DICM" or path.suffix.lower() == ".dcm"

    def parse(self, path: Path, file_sha256: str, ctx: IngestContext) -> Iterator[RecordBase | RecordProblem]:
        ds = _read_dicom(path)
        with warnings.catch_warnings():
            # pydicom warns about invalid values while converting them and quotes the value (possibly PHI).
            warnings.simplefilter("ignore")
            try:
                record = self._record(ds, path, file_sha256, ctx)
            except DICOM_ERRORS as exc:
                raise IngestionError(f"malformed DICOM ({_safe_reason(exc)})", path=str(path)) from exc
        if record is not None:
            yield record

    def _record(self, ds: Dataset, path: Path, file_sha256: str, ctx: IngestContext) -> RecordBase | None:
        sop_class_uid = _text(ds, "SOPClassUID")
        if (sop_class_uid or _text(ds.file_meta, "MediaStorageSOPClassUID")) == _MEDIA_STORAGE_DIRECTORY:
            return None  # a DICOMDIR index: its instances are files of their own
        sop_uid = _text(ds, "SOPInstanceUID")
        if not sop_class_uid or not sop_uid:
            # Both are type 1 in every composite object; without them the file is cut short or not DICOM.
            raise IngestionError(
                "not a complete DICOM object: the data set has no SOP Class UID / SOP Instance UID "
                "(the file is truncated, damaged or not DICOM)",
                path=str(path),
            )
        _check_complete(ds, path)
        sop_name = UID(sop_class_uid).name
        source = ctx.source("dicom")
        patient = _text(ds, "PatientID")
        common: dict[str, Any] = {
            "source": source,
            "patient_id": f"{source}/Patient/{safe_id(patient)}" if patient else None,
            "effective": _dicom_datetime(_text(ds, "StudyDate"), _text(ds, "StudyTime"))
            or _dicom_datetime(_text(ds, "ContentDate"), _text(ds, "ContentTime")),
            "provenance": ctx.provenance(path, file_sha256, "$", self),
        }
        local = safe_id(sop_uid)
        description = (
            " - ".join(t for t in (_text(ds, "StudyDescription"), _text(ds, "SeriesDescription")) if t) or None
        )
        has_pixels = any(tag in ds for tag in _PIXEL_TAGS)
        if not has_pixels and _needs_pixels(ds, sop_name):
            raise IngestionError(
                "truncated DICOM: an image object without Pixel Data; replace it with an intact copy",
                path=str(path),
            )
        if has_pixels:
            return Image(
                id=f"{source}/Image/{local}",
                image_id=sop_uid,
                file_format="DICOM",
                pixel_ref=str(path.resolve()),
                pixel_sha256=file_sha256,
                study_uid=_text(ds, "StudyInstanceUID"),
                series_uid=_text(ds, "SeriesInstanceUID"),
                sop_instance_uid=sop_uid,
                sop_class=sop_name,
                modality=_text(ds, "Modality"),
                body_part=_text(ds, "BodyPartExamined"),
                view=_text(ds, "ViewPosition"),
                width=_int(ds, "Columns"),
                height=_int(ds, "Rows"),
                frames=_int(ds, "NumberOfFrames") or 1,
                bits_stored=_int(ds, "BitsStored"),
                photometric=_text(ds, "PhotometricInterpretation"),
                description=description,
                **common,
            )
        if "SR" in sop_name.split() or ("ContentSequence" in ds and _text(ds, "ValueType") == "CONTAINER"):
            lines: list[str] = []
            _sr_lines(ds.get("ContentSequence") or [], 0, lines)
            flags = [f for f in (_text(ds, "CompletionFlag"), _text(ds, "VerificationFlag")) if f]
            if flags:
                lines.append("Status: " + ", ".join(flags).lower())
            title = _code_meaning(ds, "ConceptNameCodeSequence")
            return DocumentReference(
                id=f"{source}/DocumentReference/{local}",
                title=f"{sop_name.removesuffix(' Storage')}: {title}" if title else sop_name.removesuffix(" Storage"),
                doc_type="dicom-sr",
                text="\n".join(lines) or _summary(ds) or sop_name,
                **common,
            )
        return FhirResource(
            id=f"{source}/FhirResource/{local}",
            fhir_type=f"DICOM {sop_name}",
            summary=_summary(ds) or "no summary attributes",
            codes=[Coding(system="urn:ietf:rfc:3986", code=f"urn:oid:{sop_class_uid}", display=sop_name)],
            **common,
        )


# ---------------------------------------------------------------------- COVID-19 case notes

_DATE_FORMATS = ("%Y-%m-%d", "%m/%d/%y", "%m/%d/%Y", "%B %d, %Y", "%b %d, %Y")


def _full_date(value: str | None) -> datetime | None:
    """A date only when the value is a full calendar date (a bare year says too little)."""
    if not value:
        return None
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


class CovidCaseNotesConnector:
    """COVID-19 Image Data Collection ``metadata.csv``: case notes -> ``DocumentReference``."""

    name = "covid-cxr-notes"
    version = "1"
    COLUMNS = ("patientid", "clinical_notes", "finding", "filename")

    def detect(self, path: Path, head: bytes) -> bool:
        if path.suffix.lower() != ".csv":
            return False
        header = csv_header(head)
        return all(c in header for c in self.COLUMNS)

    def parse(self, path: Path, file_sha256: str, ctx: IngestContext) -> Iterator[RecordBase | RecordProblem]:
        source = ctx.source("covid-cxr")
        for rowno, row in iter_csv_rows(path):
            notes = clean(row.get("clinical_notes"))
            if notes is None:
                continue
            filename = clean(row.get("filename"))
            if filename is None:
                yield RecordProblem(locator=f"row {rowno}", reason="case notes without a 'filename' (no record id)")
                continue
            folder = clean(row.get("folder")) or "images"
            patient = clean(row.get("patientid"))
            finding = clean(row.get("finding"))
            other = clean(row.get("other_notes"))
            labelled = finding is not None and finding.lower() != "todo"
            yield DocumentReference(
                id=f"{source}/DocumentReference/{safe_id(f'{folder}-{Path(filename).stem}')}",
                source=source,
                patient_id=f"{source}/Patient/{safe_id(patient)}" if patient else None,
                effective=_full_date(clean(row.get("date"))),
                title=f"Case notes ({finding})" if labelled else "Case notes",
                doc_type="case-notes",
                text=f"{notes}\n\n{other}" if other else notes,
                provenance=ctx.provenance(path, file_sha256, f"row {rowno}", self),
            )
