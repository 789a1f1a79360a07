"""Image quality checks and pixel loading on images generated in tmp_path, plus the image model's small pure
helpers (AUROC, dataset-label text, the held-out split). The same checks on real public images (IU X-ray PNGs,
pydicom's sample DICOMs) are in tests/integration/test_image_quality_real.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from sage_health.models.imaging.quality import (
    check_image,
    is_frontal,
    is_lateral,
    load_pixels,
)
from sage_health.models.imaging.training import TrainingExample, auroc, dataset_labels_text, split_heldout


def test_small_generated_png_is_unusable(tmp_path: Path) -> None:
    path = tmp_path / "small_PA.png"
    PILImage.fromarray(np.full((80, 100), 128, dtype=np.uint8), mode="L").save(path)
    q = check_image(path, min_size=256)
    assert (q.readable, q.grayscale, q.width, q.height, q.usable) == (True, True, 100, 80, False)
    assert q.view == "PA"  # from the file name token
    assert q.problems == ("image is 100x80 pixels, smaller than the minimum of 256 on a side",)


def test_colour_png_is_not_a_radiograph(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    colour = tmp_path / "photo.png"
    PILImage.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8), mode="RGB").save(colour)
    q = check_image(colour, min_size=256)
    assert (q.readable, q.grayscale, q.usable) == (True, False, False)
    assert "colour image, not a radiograph" in q.problems


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
