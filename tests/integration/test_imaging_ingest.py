"""The real ingest pipeline over the shared image data: counts, no pixels in the database, bad files."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import pydicom
import pytest

from sage_health.core.hashing import sha256_file
from sage_health.data.ingest.pipeline import IngestPipeline
from sage_health.data.store.sqlite import SqliteDocumentStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _dicom_expected(folder: Path) -> Counter[str]:
    """Record types the DICOM files should give, from pydicom: distinct SOP instances by content."""
    kinds: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix == ".md" or path.name == "DICOMDIR":
            continue
        ds = pydicom.dcmread(path, force=True, defer_size=1024)
        if "PixelData" in ds:
            kinds[ds.SOPInstanceUID] = "Image"
        elif "SR" in ds.SOPClassUID.name.split():
            kinds[ds.SOPInstanceUID] = "DocumentReference"
        else:
            kinds[ds.SOPInstanceUID] = "FhirResource"
    return Counter(kinds.values())


def _db_bytes(store: SqliteDocumentStore) -> int:
    return sum(p.stat().st_size for p in store.path.parent.glob(store.path.name + "*"))


def test_ingest_image_datasets(data_dir: Path, store: SqliteDocumentStore) -> None:
    paths = [
        data_dir / "iu_xray" / "images",
        data_dir / "covid_chestxray_subset",
        data_dir / "nih_chestxray14_samples",
        data_dir / "dicom_samples",
    ]
    report = IngestPipeline(store).run(paths)
    assert [p.line() for p in report.problems] == []
    assert report.failed_files == 0
    skipped = {Path(p).name: reason for p, reason in report.skipped}
    assert "DICOM media directory" in skipped["DICOMDIR"]
    assert {"images.csv", "labels.csv"} <= set(skipped)

    conn = store.connection
    counts = {
        (source, rtype): n
        for source, rtype, n in conn.execute(
            "SELECT source, resource_type, count(*) FROM records WHERE is_current=1 GROUP BY 1, 2"
        )
    }
    dicom = _dicom_expected(data_dir / "dicom_samples")
    assert dicom["Image"] == 37  # 38 pixel-bearing files; MR_small(_implicit) hold the same SOP instance
    with (data_dir / "covid_chestxray_subset" / "metadata.csv").open(encoding="utf-8", newline="") as handle:
        covid_notes = sum(1 for row in csv.DictReader(handle) if row["clinical_notes"].strip())
    assert covid_notes == 211
    assert counts == {
        ("iu-xray", "Image"): 5,
        ("covid-cxr", "Image"): 303,
        ("nih-cxr14", "Image"): 9,
        ("dicom", "Image"): dicom["Image"],
        ("dicom", "DocumentReference"): dicom["DocumentReference"],
        ("dicom", "FhirResource"): dicom["FhirResource"],
        ("covid-cxr", "DocumentReference"): covid_notes,
    }
    assert report.stats["png-image"].records == 317
    assert report.stats["dicom"].records == 41  # every file but the DICOMDIR index gives one record

    # Pixels stay in the files: the database is a small fraction of the images it describes.
    image_bytes = sum(
        p.stat().st_size
        for folder in paths
        for p in folder.rglob("*")
        if p.is_file() and p.suffix in (".png", ".dcm", "")
    )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything into the main file before measuring
    db_bytes = _db_bytes(store)
    assert image_bytes > 12_000_000
    assert db_bytes < image_bytes / 3, (db_bytes, image_bytes)
    n_images, image_record_bytes = conn.execute(
        "SELECT count(*), sum(length(body) + length(provenance)) FROM records "
        "WHERE resource_type='Image' AND is_current=1"
    ).fetchone()
    assert n_images == 354
    assert image_record_bytes / n_images < 3_000  # metadata only; the average image file is ~36 kB
    tables = [
        row[0]
        for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        # FTS5's own shadow tables hold the full-text index of chunk text, not record content.
        if not row[0].startswith("chunks_fts")
    ]
    for table in tables:
        columns = [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')]
        for column in columns:
            if (table, column) == ("vectors", "vec"):
                continue
            biggest = conn.execute(
                f'SELECT max(length("{column}")) FROM "{table}" WHERE typeof("{column}") = \'blob\''
            ).fetchone()[0]
            assert biggest is None or biggest <= 10_000, (table, column, biggest)
            magic = conn.execute(
                f'SELECT count(*) FROM "{table}" WHERE typeof("{column}") = \'blob\' '
                f'AND (substr("{column}", 1, 8) = ? OR instr("{column}", ?) > 0)',
                (_PNG_MAGIC, b"DICM"),
            ).fetchone()[0]
            assert magic == 0, (table, column)
    largest_body = conn.execute("SELECT max(length(body)) FROM records").fetchone()[0]
    assert largest_body < 10_000

    # A stored image points at its file and hash.
    stored = store.get("nih-cxr14/Image/00000013_004")
    assert stored is not None
    pixel_ref = Path(getattr(stored.record, "pixel_ref"))  # noqa: B009 - Image field, record is a union
    assert pixel_ref.is_file()
    assert getattr(stored.record, "pixel_sha256") == sha256_file(pixel_ref)  # noqa: B009
    sr_uid = pydicom.dcmread(data_dir / "dicom_samples" / "test-SR.dcm").SOPInstanceUID
    sr = store.get(f"dicom/DocumentReference/{sr_uid}")
    assert sr is not None
    assert "A mass of" in sr.record.render()

    # Re-running adds nothing.
    again = IngestPipeline(store).run(paths)
    assert again.problems == []
    assert again.total().inserted == 0
    assert again.total().updated == 0


def test_bad_png_in_a_batch_is_reported_and_not_stored(
    data_dir: Path, store: SqliteDocumentStore, tmp_path: Path
) -> None:
    batch = tmp_path / "batch"
    batch.mkdir()
    src = data_dir / "nih_chestxray14_samples" / "images" / "00000001_000.png"
    shutil.copyfile(src, batch / "good.png")
    (batch / "bad.png").write_bytes(src.read_bytes()[: src.stat().st_size // 2])

    report = IngestPipeline(store).run([batch])

    assert len(report.problems) == 1
    problem = report.problems[0]
    assert problem.path == str(batch / "bad.png")
    assert "truncated PNG" in problem.reason
    assert report.failed_files == 1
    errors = store.run_errors(report.run_id)
    assert len(errors) == 1
    assert errors[0]["path"] == str(batch / "bad.png")
    assert store.get("images/Image/good") is not None
    assert store.get("images/Image/bad") is None
    conn = store.connection
    assert conn.execute("SELECT count(*) FROM records").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM chunks WHERE record_id LIKE '%bad%'").fetchone()[0] == 0
    done = {row[0] for row in conn.execute("SELECT path FROM files")}
    assert done == {str((batch / "good.png").resolve())}
