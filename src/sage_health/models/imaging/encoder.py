"""The ``ImageEncoder`` extension point and its built-in backend, :class:`MonaiDenseNetImageEncoder`.

A saved image model is a folder:

* ``adapter_model.safetensors`` - the network's ``state_dict`` (the model registry's weights-file name: the
  registry hashes this file into ``adapter_sha256`` when the folder is registered); ``weights.safetensors`` or a
  torch ``weights.pt`` state dict (read with ``weights_only=True``) are accepted for hand-made folders;
* ``meta.json`` - ``observations`` (output order), ``image_size``, and how the model was trained (seed, epochs,
  label counts, held-out metrics; see :mod:`sage_health.models.imaging.training`).

Constructing an encoder reads nothing; the weights load on the first :meth:`ImageEncoder.predict` (with a progress
line on stderr) and stay loaded. Inputs go through :func:`sage_health.models.imaging.quality.load_pixels`, the
same loader training uses.
"""

from __future__ import annotations

import json
import pickle
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from sage_health.core.errors import ModelLoadError
from sage_health.core.hashing import sha256_file
from sage_health.models.imaging.quality import load_pixels

if TYPE_CHECKING:
    import torch

__all__ = [
    "BACKEND",
    "META_FILE",
    "WEIGHTS_FILE",
    "ImageEncoder",
    "ImageModelInfo",
    "MonaiDenseNetImageEncoder",
    "build_densenet121",
    "read_meta",
]

BACKEND: Final = "monai-densenet121"
WEIGHTS_FILE: Final = "adapter_model.safetensors"
META_FILE: Final = "meta.json"
_ALTERNATIVE_WEIGHTS: Final = ("weights.safetensors", "weights.pt")


class ImageModelInfo(BaseModel):
    """What an encoder is: its folder, backend, outputs, input size, weights hash and training metadata."""

    model_config = ConfigDict(frozen=True)

    folder: str
    backend: str
    observations: tuple[str, ...]
    image_size: int
    weights_file: str
    weights_sha256: str | None = None
    """Set once the weights are loaded (the hash of the file that was read)."""
    meta: dict[str, Any] = Field(default_factory=dict)


@runtime_checkable
class ImageEncoder(Protocol):
    """A chest X-ray classifier. Contract:

    * ``observations`` - the names it scores, in a fixed order (CheXpert observations for the built-in backend);
    * ``predict(paths)`` - one ``{observation: probability}`` per path, in input order, every probability in
      ``[0, 1]``; the same weights and file give the same numbers; an undecodable file raises
      :class:`~sage_health.core.errors.StudyInputError` naming the file; missing or corrupt weights raise
      :class:`~sage_health.core.errors.ModelLoadError` with how to fix it;
    * ``info`` - :class:`ImageModelInfo` (folder, backend, input size, weights hash once loaded).
    """

    @property
    def observations(self) -> tuple[str, ...]: ...

    def predict(self, paths: Sequence[Path]) -> list[dict[str, float]]: ...

    @property
    def info(self) -> ImageModelInfo: ...


def build_densenet121(out_channels: int) -> torch.nn.Module:
    """MONAI's 2-D, one-channel DenseNet121 with ``out_channels`` logits (shared by training and loading)."""
    try:
        from monai.networks.nets.densenet import DenseNet121
    except ImportError as exc:
        raise ModelLoadError("the image model needs MONAI: pip install 'monai>=1.4,<1.6'") from exc
    net: torch.nn.Module = DenseNet121(spatial_dims=2, in_channels=1, out_channels=out_channels)
    return net


def _fix(folder: Path) -> str:
    return f"retrain it with `sage-health train image-model` (or restore the folder {folder})"


def read_meta(folder: Path) -> dict[str, Any]:
    """``meta.json`` of a saved image model, checked for ``observations`` and ``image_size``."""
    path = folder / META_FILE
    if not path.is_file():
        raise ModelLoadError(f"image model folder {folder} has no {META_FILE}; {_fix(folder)}")
    try:
        meta: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is unreadable ({type(exc).__name__}); {_fix(folder)}") from exc
    observations = meta.get("observations") if isinstance(meta, dict) else None
    size = meta.get("image_size") if isinstance(meta, dict) else None
    if (
        not isinstance(observations, list)
        or not observations
        or not all(isinstance(o, str) for o in observations)
        or not isinstance(size, int)
        or size < 8
    ):
        raise ModelLoadError(f"{path} lacks a valid 'observations' list or 'image_size'; {_fix(folder)}")
    return dict(meta)


def _weights_path(folder: Path) -> Path:
    for name in (WEIGHTS_FILE, *_ALTERNATIVE_WEIGHTS):
        if (folder / name).is_file():
            return folder / name
    raise ModelLoadError(
        f"image model folder {folder} has no weights ({WEIGHTS_FILE}, or {' / '.join(_ALTERNATIVE_WEIGHTS)}); "
        f"{_fix(folder)}"
    )


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # the progress line DESIGN.md asks for on a lazy model load


def _read_state(path: Path) -> Mapping[str, Any]:
    import torch

    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(f"{path} is not a readable safetensors file ({type(exc).__name__})") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise ModelLoadError(f"{path} is not a readable torch state dict ({type(exc).__name__})") from exc
    if not isinstance(state, Mapping):
        raise ModelLoadError(f"{path} does not hold a state dict")
    return state


class MonaiDenseNetImageEncoder:
    """The saved DenseNet121 image model in ``folder``. ``expected_sha256`` (the registry's ``adapter_sha256``)
    makes loading refuse weights that changed since registration."""

    def __init__(self, folder: Path, *, expected_sha256: str | None = None, label: str | None = None) -> None:
        self._folder = Path(folder)
        self._expected = expected_sha256
        self._label = label or self._folder.name
        self._lock = threading.Lock()
        self._meta: dict[str, Any] | None = None
        self._net: torch.nn.Module | None = None
        self._sha: str | None = None
        self._weights: Path | None = None

    def _read_meta(self) -> dict[str, Any]:
        if self._meta is None:
            self._meta = read_meta(self._folder)
        return self._meta

    @property
    def observations(self) -> tuple[str, ...]:
        return tuple(self._read_meta()["observations"])

    @property
    def info(self) -> ImageModelInfo:
        meta = self._read_meta()
        weights = self._weights or _weights_path(self._folder)
        return ImageModelInfo(
            folder=str(self._folder),
            backend=BACKEND,
            observations=tuple(meta["observations"]),
            image_size=int(meta["image_size"]),
            weights_file=weights.name,
            weights_sha256=self._sha,
            meta=meta,
        )

    def _load(self) -> torch.nn.Module:
        with self._lock:
            if self._net is not None:
                return self._net
            meta = self._read_meta()
            weights = _weights_path(self._folder)
            sha = sha256_file(weights)
            if self._expected is not None and sha != self._expected:
                raise ModelLoadError(
                    f"{weights} changed since it was registered (sha256 {sha[:12]}..., registered "
                    f"{self._expected[:12]}...); restore the file or register the folder again"
                )
            _progress(f"loading image model {self._label} (MONAI DenseNet121) from {self._folder} ...")
            state = _read_state(weights)
            net = build_densenet121(len(meta["observations"]))
            try:
                net.load_state_dict(dict(state), strict=True)
            except RuntimeError as exc:
                first = str(exc).splitlines()[0]
                raise ModelLoadError(
                    f"{weights} does not fit a DenseNet121 with {len(meta['observations'])} outputs ({first}); "
                    f"{_fix(self._folder)}"
                ) from exc
            net.eval()
            self._net, self._sha, self._weights = net, sha, weights
            return net

    def predict(self, paths: Sequence[Path]) -> list[dict[str, float]]:
        import torch

        net = self._load()
        meta = self._read_meta()
        size = int(meta["image_size"])
        names = tuple(meta["observations"])
        out: list[dict[str, float]] = []
        for path in paths:  # one image per forward pass: its numbers never depend on the other images of the call
            pixels = torch.from_numpy(load_pixels(Path(path), size)[None])
            with torch.inference_mode():
                probs = torch.sigmoid(net(pixels))[0].double().numpy()
            out.append({name: float(p) for name, p in zip(names, probs, strict=True)})
        return out
