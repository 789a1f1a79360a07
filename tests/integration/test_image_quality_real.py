"""Image quality checks and pixel loading on real public images (IU X-ray PNGs, pydicom's sample DICOMs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage

from sage_health.core.errors import StudyInputError
from sage_health.models.imaging.quality import check_image, load_pixels, require_readable

IU_FRONTAL = "iu_xray/images/CXR7_IM-2263-1001.png"
CR_MONOCHROME1 = "dicom_samples/dicomdir/77654033/CR1/6154"


def _minmax(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return (a - a.min()) / (a.max() - a.min())


def test_iu_png_is_a_usable_grayscale_radiograph(data_dir: Path) -> None:
    path = data_dir / IU_FRONTAL
    q = check_image(path, min_size=256, view="Frontal")
    assert (q.readable, q.grayscale, q.width, q.height, q.view, q.usable) == (True, True, 256, 256, "Frontal", True)
    assert q.problems == ()
    assert q.image_id == "CXR7_IM-2263-1001"

    unknown = check_image(path, min_size=256)  # no view given, none in a PNG or its name: reported, not blocking
    assert unknown.view is None
    assert unknown.usable
    assert [p.split(" (")[0] for p in unknown.problems] == ["view unknown"]

    too_big = check_image(path, min_size=257)
    assert not too_big.usable
    assert "256x256 pixels, smaller than the minimum of 257" in too_big.problems[0]


def test_png_pixels_are_the_file_values_scaled_to_unit(data_dir: Path) -> None:
    path = data_dir / IU_FRONTAL
    raw = np.asarray(PILImage.open(path).convert("L"), dtype=np.float32)
    pixels = load_pixels(path, 256)
    assert pixels.shape == (1, 256, 256)
    assert pixels.dtype == np.float32
    np.testing.assert_allclose(pixels[0], raw / 255.0, atol=1e-7)
    small = load_pixels(path, 64)
    assert small.shape == (1, 64, 64)
    assert float(small.min()) >= 0.0
    assert float(small.max()) <= 1.0
    assert abs(float(small.mean()) - float(pixels.mean())) < 0.01  # resizing keeps the overall brightness


def test_ct_dicom_is_readable_but_small(data_dir: Path) -> None:
    path = data_dir / "dicom_samples" / "CT_small.dcm"
    ds = pydicom.dcmread(path)
    q = check_image(path, min_size=256)
    assert (q.readable, q.grayscale, q.width, q.height) == (True, True, ds.Columns, ds.Rows) == (True, True, 128, 128)
    assert not q.usable
    assert "128x128 pixels, smaller than the minimum of 256" in q.problems[0]
    assert check_image(path, min_size=128).usable
    pixels = load_pixels(path, 128)  # native size: no resampling, exactly the min-max rescaled pixel data
    np.testing.assert_allclose(pixels[0], _minmax(ds.pixel_array), atol=1e-6)


def test_monochrome1_dicom_is_inverted_and_view_read(data_dir: Path) -> None:
    path = data_dir / CR_MONOCHROME1
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    q = check_image(path, min_size=16)
    assert (q.view, q.usable, q.width, q.height) == ("LL", True, 16, 16)
    pixels = load_pixels(path, 16)
    np.testing.assert_allclose(pixels[0], 1.0 - _minmax(ds.pixel_array), atol=1e-6)
    assert check_image(path, min_size=16, view="PA").view == "PA"  # a given view wins over the file's


def test_dicom_without_pixels_is_unreadable(data_dir: Path) -> None:
    path = data_dir / "dicom_samples" / "rtplan.dcm"
    q = check_image(path, min_size=16)
    assert not q.readable
    assert not q.usable
    assert q.problems == (f"{path}: unreadable image (a DICOM object without pixel data); replace it with an intact "
                          "PNG, JPEG or DICOM file",)  # fmt: skip


def test_truncated_png_is_unreadable_and_named(data_dir: Path, tmp_path: Path) -> None:
    data = (data_dir / IU_FRONTAL).read_bytes()
    bad = tmp_path / "cut.png"
    bad.write_bytes(data[: len(data) // 2])
    q = check_image(bad, min_size=16)
    assert (q.readable, q.usable, q.width, q.grayscale) == (False, False, None, None)
    assert q.problems[0].startswith(f"{bad}: unreadable image (")
    with pytest.raises(StudyInputError) as info:
        require_readable([data_dir / IU_FRONTAL, bad])
    message = str(info.value)
    assert message.startswith(f"{bad}: unreadable image (")
    assert "\n" not in message
    require_readable([data_dir / IU_FRONTAL])  # an intact file passes
    with pytest.raises(StudyInputError, match="no such file"):
        load_pixels(tmp_path / "missing.png", 64)


def test_grayscale_radiograph_stored_as_rgb_is_usable(tmp_path: Path, data_dir: Path) -> None:
    gray_rgb = tmp_path / "gray_as_rgb_lateral.png"  # a grayscale radiograph stored as RGB: equal channels
    PILImage.open(data_dir / IU_FRONTAL).convert("RGB").save(gray_rgb)
    g = check_image(gray_rgb, min_size=256)
    assert (g.grayscale, g.usable, g.view) == (True, True, "LATERAL")
    np.testing.assert_allclose(load_pixels(gray_rgb, 256), load_pixels(data_dir / IU_FRONTAL, 256))
