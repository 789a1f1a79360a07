"""Versioned, de-identified, content-addressed dataset snapshots (``sage-health dataset create|list|show|export``).

A snapshot turns governed store records into task items (``impression``: findings → impression; ``findings``:
indication → findings; ``qa``: question + options → answer; ``text``: the record's rendered text), splits them
deterministically, and writes them once, immutably, to ``<store>/datasets/<name>/<hash>/``:

- ``train.jsonl``, ``val.jsonl``, ``test.jsonl`` — one item per line, sorted by record id, canonical JSON;
- ``manifest.json`` — parameters, counts, sources, per-file sha256, consent filter, de-identification, creator;
- ``datasheet.md`` — a datasheet for datasets (Gebru et al.): motivation, composition, collection and licences,
  preprocessing, consent, split rule, hash, uses and limitations.

**Content addressing.** ``hash`` is the first 16 hex digits of the sha256 of ``{format, params, sha256 of each
split file}``, where params are only what defines the content (task, selector, split, seed, de-identification,
limit). Timestamps, the creator and the purpose are recorded but never hashed, so the same inputs and seed give
the same hash; a second ``create`` with the same result finds ``name@hash`` already there and changes nothing.

**Governance.** Every read goes through :meth:`GovernedStore.acting` (``snapshot``): the policy decides, research
opt-outs are pushed into the query (a snapshot is secondary use), every read is audited, and principals whose view
is de-identified (researchers, admins) receive de-identified records and pseudonymous patient ids. Such a principal
must ask for it explicitly with ``deid=True`` (``--deid``); otherwise :class:`PolicyViolation` — an explicit error
rather than a silent change of what the dataset contains. A data steward may ask for ``deid=True`` too; the
de-identified view is then applied here to each record. Lineage edges ``record:<real id> → snapshot:<name>@<hash>``
are written with the stored (real) record ids, so erasure finds and taints the snapshots a patient's data went
into; a tainted snapshot is listed as such and cannot be exported.

**Splits.** ``split_of(group) = sha256("<seed>:<group>") mod 100`` against the cumulative split percentages, where
``group`` is the item's ``patient`` as written in the dataset, or its ``record_id`` when it has no patient. All
items of one patient land in the same split (no patient leakage), and anyone holding the files can re-derive the
split. Percentages are per group, so the realised proportions of a small dataset vary around the targets.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import sqlite3
import uuid
from collections import Counter
from collections.abc import Generator, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from sage_health.core.config import Settings
from sage_health.core.errors import PolicyViolation, RecordNotFoundError, StoreError, ValidationError
from sage_health.core.hashing import canonical_json, sha256_file, sha256_json
from sage_health.data.governance.access import GovernedStore, RecordView
from sage_health.data.governance.lineage import Edge, LineageStore, record_node, snapshot_node
from sage_health.data.governance.policy import Action, Decision
from sage_health.data.governance.views import PSEUDONYM_PREFIX
from sage_health.data.schema import AnyRecord, DiagnosticReport, QAItem, RecordType
from sage_health.data.sqlite_tables import connect, immediate
from sage_health.data.store.protocol import SearchFilters, SearchQuery, StoredRecord

Task = Literal["impression", "findings", "qa", "text"]
TASKS: tuple[Task, ...] = get_args(Task)
ExportFormat = Literal["jsonl", "parquet"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)
SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_SPLIT: tuple[int, int, int] = (80, 10, 10)
DEFAULT_SEED = 13
DEFAULT_QUERY_LIMIT = 1000
FORMAT_VERSION = 1
HASH_CHARS = 16
DATASHEET = "datasheet.md"
MANIFEST = "manifest.json"

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_HASH = re.compile(r"^[0-9a-f]{4,64}$")

_TASK_TYPES: dict[Task, str | None] = {
    "impression": RecordType.DIAGNOSTIC_REPORT.value,
    "findings": RecordType.DIAGNOSTIC_REPORT.value,
    "qa": RecordType.QA_ITEM.value,
    "text": None,
}
"""The record type a task reads (``None``: any)."""

_TASK_DESCRIPTIONS: dict[Task, str] = {
    "impression": "input = the report's FINDINGS section, target = its IMPRESSION (reports with both)",
    "findings": "input = the report's INDICATION (or 'none'), target = its FINDINGS (reports with findings)",
    "qa": "input = the question with its options, target = the answer key (items with an answer)",
    "text": "text = the record rendered as readable text (records with text)",
}

LICENCES: dict[str, tuple[str, str | None]] = {
    "iu-xray": ("CC BY-NC-ND 4.0 (attribution, non-commercial, no derivatives may be redistributed)", "iu_xray"),
    "synthea": ("Apache-2.0 (synthetic patients generated by Synthea)", "synthea_fhir_r4"),
    "medquad": ("CC BY 4.0", "medquad"),
    "pubmedqa": ("MIT", "pubmedqa"),
    "mirage": ("MIT (MMLU, MedQA, MedMCQA); BioASQ terms unclear: research only", "mirage"),
    "covid-cxr": ("per image: CC BY-NC-SA 4.0 / CC BY 3.0 / CC BY 4.0 (see images.csv)", "covid_chestxray_subset"),
    "nih-cxr14": ("NIH Clinical Center: no restrictions, attribution requested", "nih_chestxray14_samples"),
    "dicom": ("MIT (pydicom test files)", "dicom_samples"),
}
"""Licence per record ``source``, checked against each folder's ``SOURCE.md`` in the shared data."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dataset_snapshots (
    name TEXT NOT NULL,
    hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    purpose TEXT,
    task TEXT NOT NULL,
    selector TEXT NOT NULL,
    params_json TEXT NOT NULL,
    counts_json TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (name, hash)
);
"""


# ---------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Selector:
    """Which records a snapshot reads: one record type (optionally of one source), or a hybrid-search query."""

    resource_type: str | None = None
    source: str | None = None
    query: str | None = None

    @property
    def text(self) -> str:
        """The canonical form (recorded in the manifest and hashed)."""
        if self.query is not None:
            return f"query:{self.query}"
        return f"{self.resource_type}:{self.source}" if self.source else str(self.resource_type)

    def describe(self) -> str:
        """How errors name the selector (a query is not repeated: it may hold anything)."""
        return "the query selector" if self.query is not None else f"selector {self.text!r}"


def parse_selector(text: str) -> Selector:
    """``TYPE``, ``TYPE:SOURCE``, ``TYPE:source=SOURCE`` or ``query:TEXT``; :class:`ValidationError` otherwise."""
    raw = (text or "").strip()
    if not raw:
        raise ValidationError("empty --from selector; use a record type (e.g. DiagnosticReport:iu-xray) or query:TEXT")
    head, sep, rest = raw.partition(":")
    if head == "query":
        query = rest.strip()
        if not query:
            raise ValidationError("empty query in selector; use query:TEXT")
        return Selector(query=query)
    types = [t.value for t in RecordType]
    if head not in types:
        raise ValidationError(f"unknown record type {head!r} in selector; use one of {', '.join(types)} or query:TEXT")
    source = rest.strip()
    if source.startswith("source="):
        source = source[len("source=") :].strip()
    if sep and not source:
        raise ValidationError(f"empty source in selector {raw!r}; use {head}:SOURCE (e.g. {head}:iu-xray)")
    return Selector(resource_type=head, source=source or None)


def parse_split(value: str | Sequence[int]) -> tuple[int, int, int]:
    """``"80/10/10"`` (or three integers): train/val/test percentages summing to 100, train above 0."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace(",", "/").split("/")]
        try:
            numbers = [int(p) for p in parts]
        except ValueError as exc:
            raise ValidationError(f"invalid split {value!r}: use three integers TRAIN/VAL/TEST, e.g. 80/10/10") from exc
    else:
        numbers = [int(v) for v in value]
    shown = value if isinstance(value, str) else "/".join(str(n) for n in numbers)
    if len(numbers) != 3:
        raise ValidationError(f"invalid split {shown!r}: use three integers TRAIN/VAL/TEST, e.g. 80/10/10")
    if any(n < 0 for n in numbers) or sum(numbers) != 100 or numbers[0] == 0:
        raise ValidationError(
            f"invalid split {shown!r}: the three percentages must be non-negative, sum to 100 and give train > 0"
        )
    return numbers[0], numbers[1], numbers[2]


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise ValidationError(
            f"invalid dataset name {name!r}: 1-64 characters, lower-case letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return name


def split_of(group: str, seed: int, split: tuple[int, int, int]) -> str:
    """The split of every item whose group (patient, else record id) is ``group``."""
    bucket = int(hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()[:15], 16) % 100
    if bucket < split[0]:
        return "train"
    return "val" if bucket < split[0] + split[1] else "test"


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SnapshotInfo:
    """One registered snapshot version."""

    name: str
    hash: str
    path: Path
    created_at: str
    created_by: str
    purpose: str | None
    task: str
    selector: str
    params: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    existed: bool = False
    """True when ``create_snapshot`` found this exact content already stored (nothing was rewritten)."""
    taint: str | None = None
    """Why the snapshot is tainted (built from records erased since), or ``None``."""

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.hash}"

    @property
    def tainted(self) -> bool:
        return self.taint is not None

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def datasheet_path(self) -> Path:
        return self.path / DATASHEET

    def manifest(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise StoreError(
                f"snapshot {self.ref}: cannot read {self.manifest_path} ({type(exc).__name__}); "
                "the snapshot folder was moved or damaged"
            ) from exc
        return data

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "hash": self.hash, "ref": self.ref, "path": str(self.path),
                "created_at": self.created_at, "created_by": self.created_by, "purpose": self.purpose,
                "task": self.task, "selector": self.selector, "params": self.params, "counts": self.counts,
                "existed": self.existed, "tainted": self.tainted, "taint": self.taint}  # fmt: skip


@dataclass(frozen=True)
class ExportResult:
    snapshot: SnapshotInfo
    path: Path
    format: ExportFormat
    files: tuple[str, ...]
    existed: bool = False
    """True when the same export was already at ``path`` (verified by sha256; nothing rewritten)."""

    def as_dict(self) -> dict[str, Any]:
        return {"snapshot": self.snapshot.ref, "path": str(self.path), "format": self.format,
                "files": list(self.files), "existed": self.existed}  # fmt: skip


# ---------------------------------------------------------------------------------------------- items


def _item(record: AnyRecord, task: Task) -> dict[str, Any] | None:
    """The task fields of one record, or ``None`` when the record does not make an item for this task."""
    if task in ("impression", "findings"):
        if not isinstance(record, DiagnosticReport):
            return None
        rs = record.report_sections
        if task == "impression":
            if not (rs.findings and rs.impression):
                return None
            return {"input": rs.findings, "target": rs.impression}
        if not rs.findings:
            return None
        return {"input": rs.indication or "none", "target": rs.findings}
    if task == "qa":
        if not isinstance(record, QAItem) or not record.answer:
            return None
        prompt = record.question.strip()
        if record.options:
            prompt += "\n" + "\n".join(f"({k}) {v}" for k, v in sorted(record.options.items()))
        return {"input": prompt, "question": record.question, "options": dict(sorted(record.options.items())),
                "target": record.answer}  # fmt: skip
    text = record.render()
    return {"text": text} if text.strip() else None


def _lines(items: Iterable[dict[str, Any]]) -> str:
    return "".join(canonical_json(item) + "\n" for item in sorted(items, key=lambda i: str(i["record_id"])))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass
class _Collected:
    items: list[dict[str, Any]] = field(default_factory=list)
    real_ids: list[str] = field(default_factory=list)
    skipped: int = 0


def _deid_method(view: RecordView | None) -> str | None:
    if view is None:
        return None
    method = getattr(view, "method", None)
    return str(method) if method else type(view).__name__


# ---------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class _Registry:
    settings: Settings

    def _conn(self) -> AbstractContextManager[sqlite3.Connection]:
        return connect(self.settings.db_path, schema=_SCHEMA, what="the dataset snapshot registry")

    def add(self, info: SnapshotInfo) -> None:
        rel = os.path.relpath(info.path, self.settings.store)
        with self._conn() as conn, immediate(conn):
            conn.execute(
                "INSERT OR IGNORE INTO dataset_snapshots(name, hash, created_at, created_by, purpose, task, selector, "
                "params_json, counts_json, path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (info.name, info.hash, info.created_at, info.created_by, info.purpose, info.task, info.selector,
                 canonical_json(info.params), canonical_json(info.counts), rel),
            )  # fmt: skip

    def rows(self, name: str | None = None) -> list[sqlite3.Row]:
        sql = "SELECT * FROM dataset_snapshots"
        params: list[str] = []
        if name is not None:
            sql += " WHERE name = ?"
            params.append(name)
        with self._conn() as conn:
            rows: list[sqlite3.Row] = conn.execute(sql + " ORDER BY created_at DESC, rowid DESC", params).fetchall()
        return rows

    def info(self, row: sqlite3.Row, lineage: LineageStore) -> SnapshotInfo:
        path = Path(row["path"])
        taint = lineage.taint_of(snapshot_node(row["name"], row["hash"]))
        return SnapshotInfo(
            name=row["name"],
            hash=row["hash"],
            path=path if path.is_absolute() else self.settings.store / path,
            created_at=row["created_at"],
            created_by=row["created_by"],
            purpose=row["purpose"],
            task=row["task"],
            selector=row["selector"],
            params=json.loads(row["params_json"]),
            counts=json.loads(row["counts_json"]),
            taint=taint.reason if taint is not None else None,
        )


def list_snapshots(settings: Settings, *, name: str | None = None) -> list[SnapshotInfo]:
    """Every registered snapshot (of ``name`` when given), newest first, with its taint."""
    registry, lineage = _Registry(settings), LineageStore(settings.db_path)
    return [registry.info(r, lineage) for r in registry.rows(name)]


def get_snapshot(settings: Settings, ref: str) -> SnapshotInfo:
    """``NAME`` (the newest version) or ``NAME@HASH`` (a unique hash prefix of at least 4 digits is enough)."""
    name, _, digest = (ref or "").strip().partition("@")
    check_name(name)
    if digest and not _HASH.match(digest):
        raise ValidationError(f"invalid snapshot hash {digest!r}: 4-64 lower-case hex digits")
    versions = list_snapshots(settings, name=name)
    if not versions:
        raise RecordNotFoundError(f"no dataset snapshot named {name!r}; see `sage-health dataset list`")
    if not digest:
        return versions[0]
    found = [v for v in versions if v.hash.startswith(digest)]
    if not found:
        raise RecordNotFoundError(
            f"dataset {name!r} has no version {digest!r}; versions: {', '.join(v.hash for v in versions)}"
        )
    if len(found) > 1:
        raise ValidationError(f"hash prefix {digest!r} matches {len(found)} versions of {name!r}; give more digits")
    return found[0]


# ---------------------------------------------------------------------------------------------- create


def _real_id(viewed_id: str, governed: GovernedStore, decision: Decision) -> str:
    """The stored id behind an id as the caller's view shows it (only a Patient record's id is pseudonymised)."""
    if decision.view == "deidentified" and governed.view is not None and viewed_id.startswith(PSEUDONYM_PREFIX):
        return governed.resolve_viewed_id(viewed_id)
    return viewed_id


def _records(
    snap: GovernedStore, decision: Decision, selector: Selector, task: Task, limit: int | None
) -> Generator[StoredRecord, None, None]:
    wanted = _TASK_TYPES[task]
    if selector.query is not None:
        k = limit or DEFAULT_QUERY_LIMIT
        filters = SearchFilters(resource_types=(wanted,) if wanted else ())
        hits = snap.search(SearchQuery(text=selector.query, k=k, mode="hybrid", filters=filters))
        ids = list(dict.fromkeys(_real_id(h.record_id, snap, decision) for h in hits))
        if ids:
            yield from snap.iter_records(SearchFilters(record_ids=tuple(ids)))
        return
    assert selector.resource_type is not None  # noqa: S101 - a non-query selector always names a type
    yield from snap.iter_records(
        SearchFilters(resource_types=(selector.resource_type,), sources=(selector.source,) if selector.source else ())
    )


def _collect(
    snap: GovernedStore,
    decision: Decision,
    view: RecordView | None,
    selector: Selector,
    task: Task,
    split: tuple[int, int, int],
    seed: int,
    limit: int | None,
) -> _Collected:
    got = _Collected()
    records = _records(snap, decision, selector, task, limit)
    try:
        for stored in records:
            real = stored.record.id if view is not None else _real_id(stored.record.id, snap, decision)
            shown = view.record(stored).record if view is not None else stored.record
            fields = _item(shown, task)
            if fields is None:
                got.skipped += 1
                continue
            group = shown.patient_id or shown.id
            got.items.append({**fields, "record_id": shown.id, "patient": shown.patient_id, "source": shown.source,
                              "resource_type": shown.resource_type, "split": split_of(group, seed, split)})  # fmt: skip
            got.real_ids.append(real)
            if selector.query is None and limit is not None and len(got.items) >= limit:
                break
    finally:
        records.close()  # ends the governed iterator now, so its read is audited with exactly what was handed out
    return got


def _consent_excluded(snap: GovernedStore, decision: Decision, selector: Selector) -> int:
    """How many opted-out patients had records this selector would otherwise have read (counted, never read)."""
    if not decision.exclude_opted_out:
        return 0
    if selector.query is not None:
        return snap.opted_out_with_records()
    return snap.opted_out_with_records(
        SearchFilters(
            resource_types=(selector.resource_type,) if selector.resource_type else (),
            sources=(selector.source,) if selector.source else (),
        )
    )


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


def create_snapshot(
    governed: GovernedStore,
    settings: Settings,
    name: str,
    selector: str | Selector,
    *,
    task: Task | str,
    split: tuple[int, int, int] | str = DEFAULT_SPLIT,
    seed: int = DEFAULT_SEED,
    deid: bool = False,
    limit: int | None = None,
) -> SnapshotInfo:
    """Build (or find, when identical) the snapshot ``name@hash``; see the module docstring for the rules.

    Bad input (name, selector, task, split, limit), an empty result and a policy denial raise before anything
    is written; a failure while writing leaves no folder behind."""
    check_name(name)
    sel = selector if isinstance(selector, Selector) else parse_selector(selector)
    if task not in TASKS:
        raise ValidationError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    the_task: Task = task
    wanted = _TASK_TYPES[the_task]
    if wanted is not None and sel.resource_type is not None and sel.resource_type != wanted:
        raise ValidationError(
            f"task {the_task} needs {wanted} records, but {sel.describe()} selects {sel.resource_type}"
        )
    parts = parse_split(split)
    if limit is not None and (limit < 1 or (sel.query is not None and limit > DEFAULT_QUERY_LIMIT)):
        raise ValidationError(
            f"invalid --limit {limit}: use 1..{DEFAULT_QUERY_LIMIT} for a query selector, >= 1 otherwise"
        )

    snap = governed.acting(Action.SNAPSHOT)
    decision = snap.decide(Action.SNAPSHOT)
    if decision.view == "deidentified" and not deid:
        message = f"{governed.access.principal.role}s only receive de-identified data; add --deid"
        snap.log(Action.SNAPSHOT.value, detail={"name": name, "denied": message}, outcome="denied")
        raise PolicyViolation(message)
    view: RecordView | None = None
    if deid and decision.view == "identified":
        from sage_health.data.governance.views import build_view

        view = build_view(settings)
    method = _deid_method(view if view is not None else snap.view) if deid else None

    got = _collect(snap, decision, view, sel, the_task, parts, seed, limit)
    if not got.items:
        raise ValidationError(f"no records match {sel.describe()} for task {the_task} (after consent filter)")
    excluded = _consent_excluded(snap, decision, sel)

    params: dict[str, Any] = {"task": the_task, "selector": sel.text, "split": list(parts), "seed": seed,
                              "deid": deid, "limit": limit}  # fmt: skip
    bodies = {s: _lines(i for i in got.items if i["split"] == s) for s in SPLITS}
    files = {f"{s}.jsonl": {"sha256": hashlib.sha256(bodies[s].encode("utf-8")).hexdigest(),
                            "items": sum(1 for i in got.items if i["split"] == s)} for s in SPLITS}  # fmt: skip
    full = sha256_json({"format": FORMAT_VERSION, "params": params,
                        "files": {f: v["sha256"] for f, v in files.items()}})  # fmt: skip
    digest = full[:HASH_CHARS]
    split_counts = Counter(str(i["split"]) for i in got.items)
    patients = {str(i["patient"]) for i in got.items if i["patient"]}
    counts = {"items": len(got.items), **{s: split_counts[s] for s in SPLITS}, "patients": len(patients),
              "without_patient": sum(1 for i in got.items if not i["patient"]), "skipped": got.skipped}  # fmt: skip
    created_at, created_by = _now(), governed.access.principal.name
    manifest: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "name": name,
        "hash": digest,
        "sha256": full,
        "hash_covers": "format, params and the sha256 of each split file (not created_at, created_by, purpose)",
        "params": params,
        "counts": counts,
        "sources": dict(sorted(Counter(str(i["source"]) for i in got.items).items())),
        "resource_types": dict(sorted(Counter(str(i["resource_type"]) for i in got.items).items())),
        "files": files,
        "consent": {"exclude_opted_out": decision.exclude_opted_out, "opted_out_patients_excluded": excluded},
        "deidentification": {"applied": deid, "method": method, "pseudonymous_patient_ids": deid},
        "split_rule": "sha256('<seed>:<patient or record_id>') mod 100 against cumulative train/val/test percentages",
        "licences": {s: LICENCES.get(s, ("unknown", None))[0] for s in sorted({str(i["source"]) for i in got.items})},
        "created_at": created_at,
        "created_by": created_by,
        "purpose": governed.access.purpose,
    }

    parent = settings.store / "datasets" / name
    final = parent / digest
    existed = final.is_dir()
    if not existed:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".tmp-{uuid.uuid4().hex}"
        try:
            tmp.mkdir()
            for s in SPLITS:
                (tmp / f"{s}.jsonl").write_text(bodies[s], encoding="utf-8")
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            (tmp / DATASHEET).write_text(_datasheet(settings, manifest, got.items), encoding="utf-8")
            try:
                tmp.rename(final)
            except OSError:
                if not final.is_dir():  # anything but a concurrent creator of the same content is an error
                    raise
                existed = True
        except OSError as exc:
            raise StoreError(f"cannot write snapshot {name}@{digest} under {parent}: {type(exc).__name__}") from exc
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    if existed:
        try:
            kept = json.loads((final / MANIFEST).read_text(encoding="utf-8"))
            created_at, created_by = str(kept["created_at"]), str(kept["created_by"])
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise StoreError(f"snapshot {name}@{digest} exists but its manifest is unreadable; remove {final}") from exc

    info = SnapshotInfo(name=name, hash=digest, path=final, created_at=created_at, created_by=created_by,
                        purpose=governed.access.purpose, task=the_task, selector=sel.text, params=params,
                        counts=counts, existed=existed)  # fmt: skip
    _Registry(settings).add(info)
    node = snapshot_node(name, digest)
    LineageStore(settings.db_path).add(Edge(record_node(r), node, "in_snapshot") for r in got.real_ids)
    snap.log(Action.SNAPSHOT.value, detail={"snapshot": info.ref, "counts": counts, "existed": existed,
                                            "deid": deid, "consent_excluded_patients": excluded})  # fmt: skip
    return replace(get_snapshot(settings, info.ref), existed=existed)


# ---------------------------------------------------------------------------------------------- export


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
