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
import json
import shutil
import uuid
from collections import Counter
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sage_health.core.config import Settings
from sage_health.core.errors import PolicyViolation, StoreError, ValidationError
from sage_health.core.hashing import canonical_json, sha256_json
from sage_health.data.datasets_export import _patients_opted_out_since, export_snapshot
from sage_health.data.datasets_registry import SnapshotErasureHook, _Registry, get_snapshot, list_snapshots
from sage_health.data.datasets_sheet import _datasheet
from sage_health.data.datasets_types import (
    _TASK_TYPES,
    DATASHEET,
    DEFAULT_QUERY_LIMIT,
    DEFAULT_SEED,
    DEFAULT_SPLIT,
    EXPORT_FORMATS,
    FORMAT_VERSION,
    HASH_CHARS,
    LICENCES,
    MANIFEST,
    SPLITS,
    TASKS,
    ExportFormat,
    ExportResult,
    Selector,
    SnapshotInfo,
    Task,
    check_name,
    parse_selector,
    parse_split,
    split_of,
)
from sage_health.data.governance.access import GovernedStore, RecordView
from sage_health.data.governance.lineage import Edge, LineageStore, record_node, snapshot_node
from sage_health.data.governance.policy import Action, Decision
from sage_health.data.governance.views import PSEUDONYM_PREFIX
from sage_health.data.schema import AnyRecord, DiagnosticReport, QAItem
from sage_health.data.store.protocol import SearchFilters, SearchQuery, StoredRecord

__all__ = [
    "DATASHEET",
    "DEFAULT_QUERY_LIMIT",
    "DEFAULT_SEED",
    "DEFAULT_SPLIT",
    "EXPORT_FORMATS",
    "FORMAT_VERSION",
    "HASH_CHARS",
    "LICENCES",
    "MANIFEST",
    "SPLITS",
    "TASKS",
    "ExportFormat",
    "ExportResult",
    "Selector",
    "SnapshotErasureHook",
    "SnapshotInfo",
    "Task",
    "_patients_opted_out_since",
    "check_name",
    "create_snapshot",
    "export_snapshot",
    "get_snapshot",
    "list_snapshots",
    "parse_selector",
    "parse_split",
    "split_of",
]


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
