"""The one place built-in connectors are registered, plus the auxiliary-file rules.

Order matters: the first connector whose ``detect`` accepts a file parses it. Third-party connectors
are added through the ``sage_health.connectors`` entry-point group (each entry point names a class).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

from sage_health.core.errors import ConfigError
from sage_health.data.ingest.base import Connector
from sage_health.data.ingest.fhir import FhirBundleConnector
from sage_health.data.ingest.imaging import CovidCaseNotesConnector, DicomConnector, PngImageConnector
from sage_health.data.ingest.iu_xray import IndianaCsvConnector, IUReportsJsonlConnector, OpenIXmlConnector
from sage_health.data.ingest.knowledge import MedQuADConnector, MirageConnector, PubMedQAConnector
from sage_health.data.ingest.notes import TextNoteConnector

ENTRY_POINT_GROUP = "sage_health.connectors"


def builtin_connectors() -> list[Connector]:
    connectors: list[Connector] = [
        FhirBundleConnector(),
        IUReportsJsonlConnector(),
        OpenIXmlConnector(),
        IndianaCsvConnector(),
        MedQuADConnector(),
        PubMedQAConnector(),
        MirageConnector(),
        PngImageConnector(),
        DicomConnector(),
        CovidCaseNotesConnector(),
        TextNoteConnector(),
    ]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except ImportError as exc:
            raise ConfigError(f"connector entry point {ep.name!r} could not be imported: {exc}") from exc
        connectors.append(cls())
    return connectors


# name -> reason; files that belong to datasets but are not records themselves
_AUXILIARY_NAMES = {
    "manifest.csv": "dataset manifest (file inventory)",
    "DICOMDIR": "DICOM media directory (an index of the instances beside it, which are ingested themselves)",
    "images.csv": "image metadata table (read by the image connector for the images beside it)",
    "labels.csv": "image label table (read by the image connector for the images beside it)",
    "indiana_projections.csv": "IU X-ray image projection table (image files are not part of the data)",
    "r2gen_annotation.json": "train/val split definition (used by evaluations, not ingested)",
    "labeled_reports.csv": "CheXpert labeler validation set (used by the labeler evaluation)",
    "sample_reports.csv": "CheXpert labeler sample input (used by the labeler evaluation)",
}
_AUXILIARY_PREFIXES = {
    "Data_Entry_2017": "NIH ChestX-ray14 label table (112k rows for images that are mostly absent)",
    "BBox_List_2017": "NIH ChestX-ray14 bounding-box table",
    "synth_dataset": "synthetic PII evaluation set (used by the de-identification evaluation)",
}


def auxiliary_reason(path: Path) -> str | None:
    """Why a known dataset file is skipped rather than ingested as records, or None."""
    name = path.name
    if name in _AUXILIARY_NAMES:
        return _AUXILIARY_NAMES[name]
    for prefix, reason in _AUXILIARY_PREFIXES.items():
        if name.startswith(prefix):
            return reason
    if name == "indiana_reports.csv" and (path.parent / "reports.jsonl").exists():
        return "Kaggle re-export of the reports in reports.jsonl beside it (ingest it alone to use it)"
    parents = {p.name for p in path.parents}
    if path.suffix == ".txt" and ({"mention", "unmention"} & parents or path.parent.name == "patterns"):
        return "CheXpert labeler phrase/pattern resource (used by the labeler)"
    return None
