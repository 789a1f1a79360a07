"""The datasheet of a dataset snapshot (Gebru et al.'s "datasheets for datasets"), written once with the snapshot."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from sage_health.core.config import Settings
from sage_health.data.datasets_types import _TASK_DESCRIPTIONS, LICENCES, SPLITS


def _sources_table(settings: Settings, sources: Iterable[str]) -> list[str]:
    rows = ["| source | records | licence | terms |", "|---|---|---|---|"]
    for source, n in sorted(Counter(sources).items()):
        licence, folder = LICENCES.get(source, ("unknown: check the source's terms before any use", None))
        doc = settings.data_dir / folder / "SOURCE.md" if folder else None
        terms = f"`{doc}`" if doc is not None and doc.is_file() else "—"
        rows.append(f"| {source} | {n} | {licence} | {terms} |")
    return rows


def _datasheet(settings: Settings, manifest: dict[str, Any], items: Sequence[dict[str, Any]]) -> str:
    counts = manifest["counts"]
    by_split_source: Counter[tuple[str, str]] = Counter((i["split"], i["source"]) for i in items)
    by_type = Counter(str(i["resource_type"]) for i in items)
    deid = manifest["deidentification"]
    consent = manifest["consent"]
    params = manifest["params"]
    sources = sorted({str(i["source"]) for i in items})
    lines = [
        f"# Datasheet: {manifest['name']}@{manifest['hash']}",
        "",
        "## Motivation",
        f"A `{params['task']}` dataset cut from the SAGE-Health store with selector `{params['selector']}` by "
        f"{manifest['created_by']} (purpose: {manifest['purpose']}) on {manifest['created_at']}, for model "
        "adaptation and evaluation inside the project. Task: " + _TASK_DESCRIPTIONS[params["task"]] + ".",
        "",
        "## Composition",
        f"{counts['items']} items from {counts['patients']} patients "
        f"({counts['without_patient']} items have no patient and are grouped by record id).",
        "",
        "| split | items | " + " | ".join(sources) + " |",
        "|---|---|" + "---|" * len(sources),
    ]
    for split in SPLITS:
        cells = " | ".join(str(by_split_source[(split, s)]) for s in sources)
        lines.append(f"| {split} | {counts[split]} | {cells} |")
    lines += [
        "",
        "Record types: " + ", ".join(f"{t} {n}" for t, n in sorted(by_type.items())) + ".",
        f"Records read but not usable for this task (missing fields): {counts['skipped']}.",
        "Each item: `record_id` and `patient` as the creator's view names them, `source`, `resource_type`, "
        "`split`, and the task fields.",
        "",
        "## Collection process",
        "Records were read through the governed store (policy action `snapshot`; every read is in the audit log) "
        "from these source datasets:",
        "",
        *_sources_table(settings, (str(i["source"]) for i in items)),
        "",
        "## Preprocessing and de-identification",
    ]
    if deid["applied"]:
        lines.append(
            f"De-identified with `{deid['method']}`: free text and structured fields de-identified, dates shifted "
            "per patient, patient ids replaced by stable pseudonyms (`pseudo-…`), source file paths scrubbed."
        )
    else:
        lines.append(
            "Not de-identified by SAGE-Health: records are as stored (identified view). Use only for the purpose "
            "it was made for; researchers cannot export it."
        )
    lines += [
        "Text fields are copied verbatim from the (viewed) records; no other cleaning, deduplication or filtering.",
        "",
        "## Consent filter",
        f"Research opt-outs excluded inside the query: {'yes' if consent['exclude_opted_out'] else 'no'}; "
        f"opted-out patients excluded: {consent['opted_out_patients_excluded']}.",
        "",
        "## Splits",
        f"{params['split'][0]}/{params['split'][1]}/{params['split'][2]} (train/val/test), seed {params['seed']}: "
        'an item\'s split is `sha256("<seed>:<group>") mod 100` against the cumulative percentages, where group is '
        "its `patient`, else its `record_id` — all items of one patient are in one split. Proportions are per "
        "group, so realised counts vary around the targets.",
        "",
        "## Identity and integrity",
        f"Hash `{manifest['hash']}` (sha256 `{manifest['sha256']}`) over the format version, the content-defining "
        "parameters and the sha256 of each split file; the creator and timestamps are not hashed. Files: "
        + ", ".join(f"`{f}` sha256 `{v['sha256'][:16]}…`" for f, v in sorted(manifest["files"].items()))
        + ". The snapshot is immutable: a changed input gives a new hash, never an edited folder.",
        "",
        "## Uses and limitations",
        "Intended for training and evaluating the project's models under the same governance. Not for clinical "
        "decisions. Small selections can be unrepresentative; check the composition table. If a record in this "
        "snapshot is later erased, the snapshot is marked tainted and can no longer be exported: create a new one.",
    ]
    if "iu-xray" in sources:
        lines.append(
            "IU X-ray text is CC BY-NC-ND 4.0: non-commercial only, and derived text must not be redistributed "
            "outside the project."
        )
    if any(s not in LICENCES for s in sources):
        lines.append("Some sources have no recorded licence here: check their terms before any use.")
    return "\n".join(lines) + "\n"
