"""Export of a dataset snapshot out of the store (policy action ``export``; tainted snapshots refused; audited)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sage_health.core.config import Settings
from sage_health.core.errors import PolicyViolation, StoreError, ValidationError
from sage_health.core.hashing import sha256_file
from sage_health.data.datasets_registry import get_snapshot
from sage_health.data.datasets_types import (
    DATASHEET,
    EXPORT_FORMATS,
    MANIFEST,
    SPLITS,
    ExportFormat,
    ExportResult,
    SnapshotInfo,
)
from sage_health.data.governance.access import GovernedStore
from sage_health.data.governance.lineage import LineageStore, snapshot_node
from sage_health.data.governance.policy import Action


def _verify_files(info: SnapshotInfo) -> dict[str, Any]:
    manifest = info.manifest()
    for fname, meta in manifest["files"].items():
        path = info.path / fname
        if not path.is_file() or sha256_file(path) != meta["sha256"]:
            raise StoreError(f"snapshot {info.ref}: {fname} is missing or changed since creation; snapshots are "
                             "immutable, so create a new one")  # fmt: skip
    return manifest


def _patients_opted_out_since(governed: GovernedStore, info: SnapshotInfo, real_ids: set[str]) -> int:
    return governed.opted_out_owners(real_ids)


def _same_files(a: Path, b: Path, names: Sequence[str]) -> bool:
    return all((b / n).is_file() and sha256_file(a / n) == sha256_file(b / n) for n in names)


def export_snapshot(
    governed: GovernedStore, settings: Settings, ref: str, out_dir: Path, *, fmt: ExportFormat | str = "jsonl"
) -> ExportResult:
    """Copy snapshot ``ref`` to ``out_dir/<name>-<hash>/`` (policy action ``export``, audited).

    Refused (:class:`PolicyViolation`, audited) when the snapshot is tainted, when a de-identified-view principal
    asks for an identified snapshot, or when it holds records of patients who have opted out since. ``parquet``
    needs pyarrow (not a dependency of the project); without it the export is refused with the fix."""
    if fmt not in EXPORT_FORMATS:
        raise ValidationError(f"unknown export format {fmt!r}; formats: {', '.join(EXPORT_FORMATS)}")
    the_fmt: ExportFormat = fmt
    if the_fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise ValidationError("parquet export needs pyarrow, which is not installed (`pip install pyarrow`); "
                              "use --format jsonl")  # fmt: skip
    decision = governed.decide(Action.EXPORT)
    info = get_snapshot(settings, ref)
    real_ids = {
        e.parent.removeprefix("record:")
        for e in LineageStore(settings.db_path).parents(snapshot_node(info.name, info.hash))
        if e.parent.startswith("record:")
    }

    def refuse(reason: str) -> PolicyViolation:
        governed.log(Action.EXPORT.value, detail={"snapshot": info.ref, "denied": reason}, outcome="denied")
        return PolicyViolation(reason)

    if info.taint is not None:
        raise refuse(f"snapshot {info.ref} is tainted ({info.taint}) and cannot be exported; create a new snapshot")
    if decision.view == "deidentified" and not info.params.get("deid"):
        raise refuse(f"snapshot {info.ref} is not de-identified; {governed.access.principal.role}s may export "
                     "de-identified snapshots only")  # fmt: skip
    if decision.exclude_opted_out:
        since = _patients_opted_out_since(governed, info, real_ids)
        if since:
            raise refuse(f"snapshot {info.ref} holds records of {since} patient(s) who opted out of research since "
                         "it was made; create a new snapshot")  # fmt: skip
    manifest = _verify_files(info)

    data_files = [f"{s}.jsonl" for s in SPLITS]
    names = [*(data_files if the_fmt == "jsonl" else [f"{s}.parquet" for s in SPLITS]), MANIFEST, DATASHEET]
    dest = out_dir / f"{info.name}-{info.hash}"
    existed = False
    if dest.exists():
        if the_fmt != "jsonl" or not _same_files(info.path, dest, names):
            raise ValidationError(f"{dest} already exists with other content; choose another --out")
        existed = True
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".tmp-{info.name}-{uuid.uuid4().hex}"
        try:
            tmp.mkdir()
            for fname in (MANIFEST, DATASHEET, *(data_files if the_fmt == "jsonl" else ())):
                shutil.copyfile(info.path / fname, tmp / fname)
            if the_fmt == "parquet":
                _write_parquet(info.path, tmp)
            tmp.rename(dest)
        except OSError as exc:
            raise StoreError(f"cannot write the export to {out_dir}: {type(exc).__name__}: {exc.strerror}") from exc
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    governed.log(Action.EXPORT.value, record_ids=sorted(real_ids),
                 detail={"snapshot": info.ref, "format": the_fmt, "items": manifest["counts"]["items"],
                         "existed": existed, "view": decision.view})  # fmt: skip
    return ExportResult(snapshot=info, path=dest, format=the_fmt, files=tuple(names), existed=existed)


def _write_parquet(src: Path, dest: Path) -> None:  # pragma: no cover - pyarrow is not installed in this project
    pa = importlib.import_module("pyarrow")
    pq = importlib.import_module("pyarrow.parquet")
    for split in SPLITS:
        text = (src / f"{split}.jsonl").read_text(encoding="utf-8")
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        pq.write_table(pa.Table.from_pylist(rows), dest / f"{split}.parquet")
