"""Quality checks of input images, and the one pixel loader shared by training and inference.

:func:`check_image` opens an image (PNG/JPEG/... with Pillow, DICOM with pydicom, pixel data decoded) and says
whether the image model may read it:

* **readable** - the file decodes completely (a truncated or corrupt file is unreadable);
* **grayscale** - Pillow modes ``1``/``L``/``LA``/``I;16``/``I``/``F``, DICOM ``MONOCHROME1/2``, or colour pixels
  whose three channels are equal (within :data:`RGB_TOLERANCE` levels, JPEG noise); a true colour picture is not a
  radiograph;
* **size** - both sides at least ``min_size`` pixels;
* **view** - as given, else DICOM *View Position*, else a token of the file name (``pa``, ``ap``, ``lat``,
  ``lateral``, ``frontal``); an unknown view is reported but does not block.

The first three block (``usable=False``). Problems name the file and the reason only, never pixel or header
values. :func:`load_pixels` turns a readable image into the model's input: one channel, padded to a square with
black, resized to ``size`` x ``size`` (bilinear, antialiased), values in ``[0, 1]`` (8-bit images / 255, others
rescaled min-max per image; DICOM ``MONOCHROME1`` inverted so that air is dark in every input).

The result type :class:`ImageCheck` has exactly the fields of ``agents.types.ImageQuality`` (the models layer may
not import the agents layer); the imaging agent converts one into the other.
"""

from __future__ import annotations

import re
import struct
import warnings
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image as PILImage
from pydantic import BaseModel, ConfigDict

from sage_health.core.errors import StudyInputError

__all__ = [
    "RGB_TOLERANCE",
    "ImageCheck",
    "check_image",
    "is_frontal",
    "is_lateral",
    "load_pixels",
    "require_readable",
]

RGB_TOLERANCE: Final = 2
"""Largest channel difference (in 8-bit levels) of a colour-encoded image that still counts as grayscale."""

_GRAY_MODES: Final = frozenset({"1", "L", "LA", "I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_EIGHT_BIT_MODES: Final = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})

# Pillow reports damaged files as OSError (truncated data, decoder errors; UnidentifiedImageError is one),
# SyntaxError (bad PNG chunk CRC), ValueError/EOFError (odd headers), struct.error/zlib.error (short chunks) and
# DecompressionBombError (absurd dimensions). Their messages carry no pixel or patient data.
_PIL_ERRORS: Final[tuple[type[BaseException], ...]] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    PILImage.DecompressionBombError,
)


def _pydicom_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(every error pydicom raises on malformed input or undecodable pixels, those whose message is safe to show):
    the ingest connector's lists plus what pixel decoding adds."""
    from sage_health.data.ingest.imaging import DICOM_ERRORS, DICOM_SAFE_MESSAGES

    every = (*DICOM_ERRORS, AttributeError, RuntimeError)
    # Conversion errors (ValueError, TypeError, ...) may quote header values: only their type is shown.
    safe = (*DICOM_SAFE_MESSAGES, NotImplementedError, RuntimeError)
    return every, safe


class ImageCheck(BaseModel):
    """Quality checks of one image (the agents layer exposes it as ``agents.types.ImageQuality``). ``usable`` is
    False when any blocking check failed."""

    model_config = ConfigDict(frozen=True)

    path: str
    image_id: str
    readable: bool
    grayscale: bool | None = None
    width: int | None = None
    height: int | None = None
    view: str | None = None
    usable: bool = False
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Decoded:
    pixels: npt.NDArray[np.float32]
    """2-D, native value scale (luminance for colour images)."""
    grayscale: bool
    eight_bit: bool
    invert: bool
    view: str | None


def _unreadable(path: Path, reason: str) -> StudyInputError:
    return StudyInputError(f"{path}: unreadable image ({reason}); replace it with an intact PNG, JPEG or DICOM file")


def _is_dicom(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError as exc:
        raise _unreadable(path, f"cannot open: {exc.strerror or type(exc).__name__}") from exc
    return head[128:132] == b"DICM" or path.suffix.lower() in {".dcm", ".dicom"}


def _channels_equal(rgb: npt.NDArray[np.generic], tolerance: float) -> bool:
    a = rgb[..., :3].astype(np.float32)
    return bool(np.abs(a[..., 0] - a[..., 1]).max() <= tolerance and np.abs(a[..., 1] - a[..., 2]).max() <= tolerance)


def _luminance(rgb: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
    a = rgb[..., :3].astype(np.float32)
    out: npt.NDArray[np.float32] = (0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]).astype(np.float32)
    return out


def _decode_pil(path: Path) -> _Decoded:
    try:
        with PILImage.open(path) as img:
            img.load()  # decodes everything: a truncated file fails here
            mode = img.mode
            if mode in _GRAY_MODES:
                gray = img.convert("L") if mode in {"1", "LA"} else img
                pixels = np.asarray(gray).astype(np.float32)
                grayscale = True
            else:
                rgb = np.asarray(img.convert("RGB"))
                grayscale = _channels_equal(rgb, RGB_TOLERANCE)
                pixels = rgb[..., 0].astype(np.float32) if grayscale else _luminance(rgb)
    except _PIL_ERRORS as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise _unreadable(path, f"{type(exc).__name__}: {first}" if first else type(exc).__name__) from exc
    return _Decoded(pixels, grayscale, mode in _EIGHT_BIT_MODES, invert=False, view=None)


def _decode_dicom(path: Path) -> _Decoded:
    import pydicom

    every, safe = _pydicom_errors()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warnings may quote header values
        try:
            ds = pydicom.dcmread(path, force=True)
            if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
                raise _unreadable(path, "a DICOM object without pixel data")
            photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
            frames = int(ds.get("NumberOfFrames") or 1)
            array = np.asarray(ds.pixel_array)
            if frames > 1:
                array = array[0]  # a radiograph has one frame; of a multi-frame object the first is checked
            if photometric == "PALETTE COLOR":
                from pydicom.pixels.processing import apply_color_lut

                array = np.asarray(apply_color_lut(array, ds))
            view_value = ds.get("ViewPosition")
        except StudyInputError:
            raise
        except every as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            reason = f"{type(exc).__name__}: {first}" if isinstance(exc, safe) and first else type(exc).__name__
            raise _unreadable(path, f"DICOM pixel data cannot be read ({reason})") from exc
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        scale = 255.0 / max(float(array.max()), 1.0) if array.dtype != np.uint8 else 1.0
        grayscale = _channels_equal(array.astype(np.float32) * scale, RGB_TOLERANCE)
        pixels = array[..., 0].astype(np.float32) if grayscale else _luminance(array)
    elif array.ndim == 2:
        pixels, grayscale = array.astype(np.float32), True
    else:
        raise _unreadable(path, f"DICOM pixel data of unexpected shape {array.ndim}-D")
    view = str(view_value).strip() if view_value is not None and str(view_value).strip() else None
    return _Decoded(pixels, grayscale, eight_bit=False, invert=photometric == "MONOCHROME1", view=view)


def _decode(path: Path) -> _Decoded:
    if not path.is_file():
        raise _unreadable(path, "no such file")
    decoded = _decode_dicom(path) if _is_dicom(path) else _decode_pil(path)
    if decoded.pixels.size == 0:
        raise _unreadable(path, "the image has no pixels")
    return decoded


def require_readable(paths: Iterable[Path]) -> None:
    """Raise :class:`StudyInputError` (one line: the file and the reason) at the first image that cannot be decoded."""
    for path in paths:
        _decode(Path(path))


_VIEW_TOKENS: Final = {"pa": "PA", "ap": "AP", "lat": "LATERAL", "lateral": "LATERAL", "ll": "LL", "frontal": "Frontal"}


def _view_from_name(path: Path) -> str | None:
    tokens = [t for t in re.split(r"[^a-z0-9]+", path.stem.lower()) if t]
    found = {_VIEW_TOKENS[t] for t in tokens if t in _VIEW_TOKENS}
    return found.pop() if len(found) == 1 else None  # no token, or conflicting ones: unknown


def is_frontal(view: str | None) -> bool:
    """PA / AP (any AP variant) / Frontal."""
    if not view:
        return False
    words = set(re.split(r"[^a-z]+", view.lower()))
    return bool(words & {"pa", "ap", "frontal", "posteroanterior", "anteroposterior"})


def is_lateral(view: str | None) -> bool:
    """LATERAL / LL / RL / Lateral."""
    if not view:
        return False
    words = set(re.split(r"[^a-z]+", view.lower()))
    return bool(words & {"lat", "lateral", "ll", "rl", "rlat", "llat"})


def check_image(path: Path, *, min_size: int, view: str | None = None) -> ImageCheck:
    """Quality checks of one image (never raises for a bad file: ``readable=False`` with the reason)."""
    path = Path(path)
    image_id = path.stem
    try:
        decoded = _decode(path)
    except StudyInputError as exc:
        return ImageCheck(path=str(path), image_id=image_id, readable=False, problems=(str(exc),))
    height, width = (int(n) for n in decoded.pixels.shape)
    problems: list[str] = []
    usable = True
    if not decoded.grayscale:
        problems.append("colour image, not a radiograph")
        usable = False
    if width < min_size or height < min_size:
        problems.append(f"image is {width}x{height} pixels, smaller than the minimum of {min_size} on a side")
        usable = False
    final_view = (view.strip() if view and view.strip() else None) or decoded.view or _view_from_name(path)
    if final_view is None:
        problems.append("view unknown (not given, not in the file); frontal images are preferred")
    return ImageCheck(
        path=str(path),
        image_id=image_id,
        readable=True,
        grayscale=decoded.grayscale,
        width=width,
        height=height,
        view=final_view,
        usable=usable,
        problems=tuple(problems),
    )


def _to_unit(decoded: _Decoded) -> npt.NDArray[np.float32]:
    pixels = decoded.pixels
    if decoded.eight_bit:
        unit = pixels / np.float32(255.0)
    else:
        lo, hi = float(pixels.min()), float(pixels.max())
        unit = (pixels - lo) / np.float32(hi - lo) if hi > lo else np.zeros_like(pixels)
    if decoded.invert:
        unit = 1.0 - unit
    out: npt.NDArray[np.float32] = np.clip(unit, 0.0, 1.0).astype(np.float32)
    return out


def load_pixels(path: Path, size: int) -> npt.NDArray[np.float32]:
    """The model input of one image: float32 ``(1, size, size)`` in ``[0, 1]``. Raises :class:`StudyInputError`
    when the file cannot be decoded."""
    if size < 8:
        raise ValueError("size must be >= 8")
    unit = _to_unit(_decode(Path(path)))
    height, width = unit.shape
    side = max(height, width)
    if height != width:  # pad to a square with black, the image centred (no distortion of the anatomy)
        square = np.zeros((side, side), dtype=np.float32)
        top, left = (side - height) // 2, (side - width) // 2
        square[top : top + height, left : left + width] = unit
        unit = square
    if side != size:
        resized = PILImage.fromarray(unit, mode="F").resize((size, size), PILImage.Resampling.BILINEAR)
        unit = np.asarray(resized, dtype=np.float32)
    out: npt.NDArray[np.float32] = np.clip(unit, 0.0, 1.0)[None, :, :].astype(np.float32)
    return out
