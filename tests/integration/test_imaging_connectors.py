"""PNG, DICOM and COVID-19 case-note connectors on the real shared data (bad inputs built in tmp_path)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.pixels.decoders.base import Decoder

from sage_health.core.errors import IngestionError, UnsupportedFormatError
from sage_health.core.hashing import sha256_file
from sage_health.data.ingest.base import IngestContext, RecordProblem, read_head
from sage_health.data.ingest.imaging import CovidCaseNotesConnector, DicomConnector, PngImageConnector
from sage_health.data.ingest.pipeline import IngestPipeline
from sage_health.data.ingest.registry import auxiliary_reason, builtin_connectors
from sage_health.data.schema import DocumentReference, FhirResource, Image, RecordBase
from sage_health.data.store.sqlite import SqliteDocumentStore


def _parse(connector: PngImageConnector | DicomConnector | CovidCaseNotesConnector, path: Path) -> list[RecordBase]:
    head = read_head(path)
    assert connector.detect(path, head), f"{connector.name} does not detect {path.name}"
    items = list(connector.parse(path.resolve(), sha256_file(path), IngestContext(run_id="test-run")))
    assert not [i for i in items if isinstance(i, RecordProblem)]
    return [i for i in items if isinstance(i, RecordBase)]


def _one_image(connector: PngImageConnector | DicomConnector, path: Path) -> Image:
    records = _parse(connector, path)
    assert len(records) == 1
    record = records[0]
    assert isinstance(record, Image)
    return record


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _truncated_copy(src: Path, dst: Path, keep: int) -> Path:
    dst.write_bytes(src.read_bytes()[:keep])
    return dst


# ---------------------------------------------------------------------- PNG


def test_registry_lists_imaging_connectors_before_text_notes() -> None:
    names = [c.name for c in builtin_connectors()]
    assert {"png-image", "dicom", "covid-cxr-notes"} <= set(names)
    assert max(names.index(n) for n in ("png-image", "dicom", "covid-cxr-notes")) < names.index("text-note")


def test_iu_png_takes_study_and_view_from_sidecar(data_dir: Path) -> None:
    rows = _csv_rows(data_dir / "iu_xray" / "images.csv")
    assert len(rows) == 5
    for row in rows:
        path = data_dir / "iu_xray" / row["image_file"]
        image = _one_image(PngImageConnector(), path)
        assert image.id == f"iu-xray/Image/{row['image_id']}"
        assert image.source == "iu-xray"
        assert image.study_id == f"iu-xray/DiagnosticReport/{row['study_id']}"
        assert image.view == row["view"]
        assert (image.modality, image.body_part, image.file_format) == ("CR", "CHEST", "PNG")
        assert (image.width, image.height, image.photometric) == (256, 256, "MONOCHROME2")
        assert image.patient_id is None
        assert image.pixel_ref == str(path.resolve())
        assert image.pixel_sha256 == sha256_file(path)
        assert image.provenance.source_sha256 == sha256_file(path)
    views = {r["image_id"]: r["view"] for r in rows}
    assert views["CXR7_IM-2263-2001"] == "Lateral"  # the sidecar, not a default, decides the view


def test_covid_png_has_patient_label_and_licence(data_dir: Path) -> None:
    folder = data_dir / "covid_chestxray_subset"
    rows = _csv_rows(folder / "images.csv")
    row = next(r for r in rows if r["finding"] == "COVID-19" and r["patientid"])
    image = _one_image(PngImageConnector(), folder / row["image_file"])
    stem = Path(row["image_file"]).stem
    assert image.id == f"covid-cxr/Image/{stem}"
    assert image.source == "covid-cxr"
    assert image.patient_id == f"covid-cxr/Patient/{row['patientid']}"
    assert image.labels == ["COVID-19"]
    assert image.view == row["view"]
    assert image.description is not None
    assert row["license"] in image.description
    assert image.study_id is None


def test_covid_png_not_yet_labelled_upstream_has_no_label(data_dir: Path) -> None:
    folder = data_dir / "covid_chestxray_subset"
    row = next(r for r in _csv_rows(folder / "images.csv") if r["finding"] == "todo")
    image = _one_image(PngImageConnector(), folder / row["image_file"])
    assert image.labels == []
    assert image.patient_id == f"covid-cxr/Patient/{row['patientid']}"


def test_nih_png_labels_split_on_pipe(data_dir: Path) -> None:
    folder = data_dir / "nih_chestxray14_samples"
    rows = _csv_rows(folder / "labels.csv")
    assert len(rows) == 9
    multi = 0
    for row in rows:
        image = _one_image(PngImageConnector(), folder / "images" / row["image"])
        expected = row["finding_labels"].split("|")
        multi += len(expected) > 1
        assert image.id == f"nih-cxr14/Image/{Path(row['image']).stem}"
        assert image.labels == expected
        assert image.patient_id == f"nih-cxr14/Patient/{row['patient_id']}"
        assert image.view == row["view_position"]
        assert (image.width, image.height) == (int(row["width_px"]), int(row["height_px"]))
    assert multi >= 3  # the sample really exercises multi-label rows


def test_png_without_sidecar_is_generic(data_dir: Path, tmp_path: Path) -> None:
    src = data_dir / "nih_chestxray14_samples" / "images" / "00000001_000.png"
    path = tmp_path / "loose" / "scan 01.png"
    path.parent.mkdir()
    shutil.copyfile(src, path)
    image = _one_image(PngImageConnector(), path)
    assert image.id == "images/Image/scan-01"
    assert image.source == "images"
    assert image.patient_id is None
    assert image.labels == []


@pytest.mark.parametrize("keep_fraction", [0.02, 0.5, 0.999])
def test_truncated_png_is_rejected_naming_the_file(data_dir: Path, tmp_path: Path, keep_fraction: float) -> None:
    src = data_dir / "iu_xray" / "images" / "CXR3_IM-1384-1001.png"
    bad = _truncated_copy(src, tmp_path / "cut_CXR3.png", int(src.stat().st_size * keep_fraction))
    connector = PngImageConnector()
    assert connector.detect(bad, read_head(bad))  # still looks like a PNG: the parse must catch it
    produced: list[object] = []
    with pytest.raises(IngestionError, match="truncated PNG") as info:
        produced.extend(connector.parse(bad, sha256_file(bad), IngestContext(run_id="t")))
    assert produced == []
    assert "cut_CXR3.png" in str(info.value)
    assert info.value.path == str(bad)


def test_png_with_bad_checksum_is_rejected(data_dir: Path, tmp_path: Path) -> None:
    raw = bytearray((data_dir / "iu_xray" / "images" / "CXR3_IM-1384-1001.png").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad = tmp_path / "flipped.png"
    bad.write_bytes(bytes(raw))
    with pytest.raises(IngestionError, match=r"corrupt or truncated PNG \(SyntaxError: broken PNG file"):
        list(PngImageConnector().parse(bad, sha256_file(bad), IngestContext(run_id="t")))


def test_not_a_png_with_png_suffix_is_an_unknown_format(tmp_path: Path, store: SqliteDocumentStore) -> None:
    fake = tmp_path / "photo.png"
    fake.write_bytes(b"GIF89a this is not a PNG at all" + bytes(200))
    pipeline = IngestPipeline(store)
    with pytest.raises(UnsupportedFormatError, match="unknown format") as info:
        pipeline.detect(fake)
    assert "photo.png" in str(info.value)
    report = pipeline.run([fake])
    assert [(p.path, p.reason.split(" (")[0]) for p in report.problems] == [(str(fake), "unknown format")]
    assert store.get("images/Image/photo") is None


# ---------------------------------------------------------------------- DICOM


def test_ct_small_maps_to_an_image(data_dir: Path) -> None:
    path = data_dir / "dicom_samples" / "CT_small.dcm"
    ds = pydicom.dcmread(path)
    image = _one_image(DicomConnector(), path)
    assert image.id == f"dicom/Image/{ds.SOPInstanceUID}"
    assert image.file_format == "DICOM"
    assert image.modality == "CT"
    assert (image.width, image.height, image.frames) == (128, 128, 1)
    assert image.study_uid == ds.StudyInstanceUID
    assert image.series_uid == ds.SeriesInstanceUID
    assert image.sop_instance_uid == image.image_id == ds.SOPInstanceUID
    assert image.sop_class == "CT Image Storage"
    assert image.bits_stored == ds.BitsStored
    assert image.photometric == ds.PhotometricInterpretation
    assert image.patient_id == f"dicom/Patient/{ds.PatientID}"
    assert image.effective is not None
    assert image.effective.strftime("%Y%m%d") == ds.StudyDate
    assert image.pixel_ref == str(path.resolve())
    assert image.pixel_sha256 == sha256_file(path)


@pytest.mark.parametrize("cut", ["header", "pixels", "last-byte"])
def test_truncated_dicom_is_rejected_without_phi(data_dir: Path, tmp_path: Path, cut: str) -> None:
    src = data_dir / "dicom_samples" / "CT_small.dcm"
    ds = pydicom.dcmread(src)
    size = src.stat().st_size
    keep = {"header": 700, "pixels": size - 4000, "last-byte": size - 1}[cut]
    bad = _truncated_copy(src, tmp_path / "CT_small_cut.dcm", keep)
    with pytest.raises(IngestionError, match="truncated DICOM") as info:
        list(DicomConnector().parse(bad, sha256_file(bad), IngestContext(run_id="t")))
    message = str(info.value)
    assert "CT_small_cut.dcm" in message
    for phi in (str(ds.PatientName), ds.PatientID, ds.StudyDate, ds.SOPInstanceUID):
        assert phi not in message


def test_truncated_compressed_dicom_is_rejected(data_dir: Path, tmp_path: Path) -> None:
    src = data_dir / "dicom_samples" / "JPEG2000.dcm"
    bad = _truncated_copy(src, tmp_path / "j2k_cut.dcm", int(src.stat().st_size * 0.9))
    with pytest.raises(IngestionError, match="truncated DICOM"):
        list(DicomConnector().parse(bad, sha256_file(bad), IngestContext(run_id="t")))


def test_dcm_suffix_that_is_not_dicom_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "notes.dcm"
    bad.write_text("this is a text file with a .dcm suffix\n" * 10, encoding="utf-8")
    with pytest.raises(IngestionError, match=r"notes\.dcm: (unreadable|not a complete) DICOM"):
        list(DicomConnector().parse(bad, sha256_file(bad), IngestContext(run_id="t")))


def test_rtstruct_without_preamble_parses(data_dir: Path) -> None:
    path = data_dir / "dicom_samples" / "rtstruct.dcm"
    assert read_head(path)[128:132] != b"DICM"  # detected by its suffix
    ds = pydicom.dcmread(path, force=True)
    records = _parse(DicomConnector(), path)
    assert len(records) == 1
    record = records[0]
    assert isinstance(record, FhirResource)
    assert record.id == f"dicom/FhirResource/{ds.SOPInstanceUID}"
    assert record.fhir_type == "DICOM RT Structure Set Storage"
    for roi in ds.StructureSetROISequence:
        assert roi.ROIName in record.summary
    assert record.codes[0].code == f"urn:oid:{ds.SOPClassUID}"


def test_rtplan_is_a_dicom_fhir_resource(data_dir: Path) -> None:
    records = _parse(DicomConnector(), data_dir / "dicom_samples" / "rtplan.dcm")
    assert len(records) == 1
    record = records[0]
    assert isinstance(record, FhirResource)
    assert record.fhir_type == "DICOM RT Plan Storage"
    assert "fractions planned: 30" in record.summary
    assert "1 beam(s): Field 1" in record.summary


def test_structured_report_becomes_a_document_with_its_content(data_dir: Path) -> None:
    records = _parse(DicomConnector(), data_dir / "dicom_samples" / "test-SR.dcm")
    assert len(records) == 1
    doc = records[0]
    assert isinstance(doc, DocumentReference)
    assert doc.doc_type == "dicom-sr"
    assert doc.title == "Comprehensive SR: Diagnosis"
    assert "Text Code: A mass of" in doc.text
    assert "Diameter: 3 cm" in doc.text
    assert "Code: Sample Code 1" in doc.text
    assert doc.patient_id is None  # the sample's Patient ID is empty


def test_jpeg2000_dicom_parses_without_decoding_pixels(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every pydicom pixel decoder (Pillow/OpenJPEG can decode this frame here) fails if it is asked to.
    def no_decoding(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the DICOM connector must not decode pixel data")

    for method in ("as_array", "iter_array", "as_buffer", "iter_buffer"):
        monkeypatch.setattr(Decoder, method, no_decoding)
    path = data_dir / "dicom_samples" / "JPEG2000.dcm"
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    image = _one_image(DicomConnector(), path)
    assert image.modality == "NM"
    assert (image.width, image.height) == (ds.Columns, ds.Rows)
    assert image.sop_class == "Secondary Capture Image Storage"


def test_deflated_and_segmentation_objects_are_images(data_dir: Path) -> None:
    deflated = _one_image(DicomConnector(), data_dir / "dicom_samples" / "image_dfl.dcm")
    assert (deflated.width, deflated.height) == (512, 512)
    seg = _one_image(DicomConnector(), data_dir / "dicom_samples" / "liver_1frame.dcm")
    assert (seg.modality, seg.sop_class) == ("SEG", "Segmentation Storage")
    dose = _one_image(DicomConnector(), data_dir / "dicom_samples" / "rtdose.dcm")
    assert (dose.modality, dose.frames) == ("RTDOSE", 15)


def test_dicomdir_set_instance_without_suffix_parses(data_dir: Path) -> None:
    path = data_dir / "dicom_samples" / "dicomdir" / "77654033" / "CR1" / "6154"
    assert path.suffix == ""
    ds = pydicom.dcmread(path)
    image = _one_image(DicomConnector(), path)
    assert image.modality == "CR"
    assert image.patient_id == "dicom/Patient/77654033"
    assert image.study_uid == ds.StudyInstanceUID
    assert (image.width, image.height) == (16, 16)


def test_dicomdir_index_is_auxiliary_and_yields_nothing(data_dir: Path) -> None:
    path = data_dir / "dicom_samples" / "dicomdir" / "DICOMDIR"
    reason = auxiliary_reason(path)
    assert reason is not None
    assert "DICOM media directory" in reason
    connector = DicomConnector()
    assert connector.detect(path, read_head(path))
    assert list(connector.parse(path, sha256_file(path), IngestContext(run_id="t"))) == []


def test_same_sop_instance_in_two_encodings_is_one_record(data_dir: Path) -> None:
    explicit = _one_image(DicomConnector(), data_dir / "dicom_samples" / "MR_small.dcm")
    implicit = _one_image(DicomConnector(), data_dir / "dicom_samples" / "MR_small_implicit.dcm")
    assert explicit.id == implicit.id
    assert explicit.pixel_ref != implicit.pixel_ref


# ---------------------------------------------------------------------- COVID-19 case notes


def test_covid_case_notes_one_document_per_row_with_notes(data_dir: Path) -> None:
    path = data_dir / "covid_chestxray_subset" / "metadata.csv"
    rows = _csv_rows(path)
    with_notes = [r for r in rows if r["clinical_notes"].strip()]
    assert 0 < len(with_notes) < len(rows)
    records = _parse(CovidCaseNotesConnector(), path)
    assert len(records) == len(with_notes)
    assert len({r.id for r in records}) == len(records)
    docs = {r.id: r for r in records if isinstance(r, DocumentReference)}
    assert len(docs) == len(records)
    first = with_notes[0]
    doc = docs[f"covid-cxr/DocumentReference/{first['folder']}-{Path(first['filename']).stem}"]
    assert doc.patient_id == f"covid-cxr/Patient/{first['patientid']}"
    assert doc.title == f"Case notes ({first['finding']})"
    assert doc.text.startswith(first["clinical_notes"].strip())
    with_other = next(r for r in with_notes if r["other_notes"].strip())
    other_doc = docs[f"covid-cxr/DocumentReference/{with_other['folder']}-{Path(with_other['filename']).stem}"]
    assert other_doc.text.endswith(with_other["other_notes"].strip())


def test_covid_case_note_dates_only_when_complete(data_dir: Path) -> None:
    path = data_dir / "covid_chestxray_subset" / "metadata.csv"
    rows = {f"{r['folder']}-{Path(r['filename']).stem}": r for r in _csv_rows(path)}
    records = _parse(CovidCaseNotesConnector(), path)
    dated = [r for r in records if r.effective is not None]
    assert dated  # the sample has full dates ("January 25, 2020", "11/27/19")
    for record in records:
        raw = rows[record.id.rsplit("/", 1)[1]]["date"].strip()
        if raw.isdigit():  # a bare year is not a date
            assert record.effective is None
    by_raw = {rows[r.id.rsplit("/", 1)[1]]["date"]: r.effective for r in dated}
    if "January 25, 2020" in by_raw:
        effective = by_raw["January 25, 2020"]
        assert effective is not None
        assert effective.date().isoformat() == "2020-01-25"


def test_covid_notes_detection_needs_the_metadata_header(data_dir: Path, tmp_path: Path) -> None:
    connector = CovidCaseNotesConnector()
    metadata = data_dir / "covid_chestxray_subset" / "metadata.csv"
    assert connector.detect(metadata, read_head(metadata))
    images_csv = data_dir / "covid_chestxray_subset" / "images.csv"
    assert not connector.detect(images_csv, read_head(images_csv))
    other = tmp_path / "other.csv"
    other.write_text("patientid,finding,filename\n1,COVID-19,a.png\n", encoding="utf-8")
    assert not connector.detect(other, read_head(other))
