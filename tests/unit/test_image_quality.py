"""Image quality checks and pixel loading on real public images (IU X-ray PNGs, pydicom's sample DICOMs), plus
the image model's small pure helpers (AUROC, dataset-label text, the held-out split)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage

from sage_health.core.errors import StudyInputError
from sage_health.models.imaging.quality import (
    check_image,
    is_frontal,
    is_lateral,
    load_pixels,
    require_readable,
)
from sage_health.models.imaging.training import TrainingExample, auroc, dataset_labels_text, split_heldout

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


def test_small_generated_png_is_unusable(tmp_path: Path) -> None:
    path = tmp_path / "small_PA.png"
    PILImage.fromarray(np.full((80, 100), 128, dtype=np.uint8), mode="L").save(path)
    q = check_image(path, min_size=256)
    assert (q.readable, q.grayscale, q.width, q.height, q.usable) == (True, True, 100, 80, False)
    assert q.view == "PA"  # from the file name token
    assert q.problems == ("image is 100x80 pixels, smaller than the minimum of 256 on a side",)


def test_colour_png_is_not_a_radiograph(tmp_path: Path, data_dir: Path) -> None:
    rng = np.random.default_rng(0)
    colour = tmp_path / "photo.png"
    PILImage.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8), mode="RGB").save(colour)
    q = check_image(colour, min_size=256)
    assert (q.readable, q.grayscale, q.usable) == (True, False, False)
    assert "colour image, not a radiograph" in q.problems

    gray_rgb = tmp_path / "gray_as_rgb_lateral.png"  # a grayscale radiograph stored as RGB: equal channels
    PILImage.open(data_dir / IU_FRONTAL).convert("RGB").save(gray_rgb)
    g = check_image(gray_rgb, min_size=256)
    assert (g.grayscale, g.usable, g.view) == (True, True, "LATERAL")
    np.testing.assert_allclose(load_pixels(gray_rgb, 256), load_pixels(data_dir / IU_FRONTAL, 256))


def test_non_square_images_are_padded_not_stretched(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    PILImage.fromarray(np.full((20, 40), 255, dtype=np.uint8), mode="L").save(path)
    pixels = load_pixels(path, 40)[0]
    assert pixels.shape == (40, 40)
    assert np.all(pixels[:10] == 0)
    assert np.all(pixels[30:] == 0)
    assert np.all(pixels[10:30] == 1.0)


def test_views() -> None:
    assert all(is_frontal(v) for v in ("PA", "AP", "AP Supine", "Frontal", "ap erect"))
    assert not any(is_frontal(v) for v in ("Lateral", "LL", None, ""))
    assert all(is_lateral(v) for v in ("Lateral", "LL", "LATERAL", "RL"))
    assert not is_lateral("PA")


# -- image model helpers ------------------------------------------------------------------------------------


def test_auroc_rank_formula() -> None:
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.5, 0.5, 0.5], [0, 1, 1]) == pytest.approx(0.5)  # ties count half
    assert auroc([0.9, 0.1], [1, 0]) == 1.0
    assert auroc([0.9, 0.1], [0, 1]) == 0.0
    assert auroc([0.2, 0.3], [1, 1]) is None  # one class only: undefined
    # Against the pairwise definition on random scores with ties.
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, 60) / 4
    labels = rng.integers(0, 2, 60)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        len(pos) * len(neg)
    )
    assert auroc(scores, labels) == pytest.approx(pairwise)


def test_dataset_labels_as_labeler_text() -> None:
    assert dataset_labels_text(["Effusion", "Infiltration"]) == "effusion. infiltration."
    assert dataset_labels_text(["Effusion|Infiltration"]) == "effusion. infiltration."
    assert dataset_labels_text(["No Finding"]) == "no finding."
    assert dataset_labels_text(["Pneumonia/Viral/COVID-19"]) == "pneumonia."
    assert dataset_labels_text(["COVID-19, ARDS"]) == "pneumonia. bilateral opacities."
    assert dataset_labels_text(["Pleural_Thickening", "Klebsiella"]) == "pleural thickening. pneumonia."
    assert dataset_labels_text([]) == ""


def _example(i: int, group: str) -> TrainingExample:
    return TrainingExample(
        record_id=f"x/Image/{i}", path="-", pixel_sha256="0", group=group, label_source="dataset", labels={}
    )


def test_heldout_split_keeps_patients_together_and_is_stable() -> None:
    examples = [_example(i, f"patient-{i % 10}") for i in range(40)]
    train, held = split_heldout(examples)
    held_groups = {e.group for e in held}
    assert len(held_groups) == 2  # 20% of 10 patients
    assert not held_groups & {e.group for e in train}
    assert len(train) + len(held) == 40
    _again_train, again_held = split_heldout(list(reversed(examples)))
    assert {e.record_id for e in again_held} == {e.record_id for e in held}
    assert len(split_heldout(examples[:2])[1]) == 1  # two patients: one is held out
    assert split_heldout([_example(0, "p")])[1] == []  # one patient: nothing to hold out
