"""The co-evolution loop's share of an erasure: its on-disk training copies and its replay ledger.

Every cycle writes the snapshot's training items once more, in the harness's train-file format
(``<store>/coevolve/<task>/cycle-NNN/train.reports.jsonl`` or ``train.pubmedqa.json``, see :mod:`.spec`): the
exemplar memory and leak guard of that cycle's evaluation. Those copies outlive the snapshot they came from, so
erasing a patient must reach them too. :class:`CoevolveErasureHook`:

- removes, from every cycle's training copy, the items whose record id is one of the erased patient's (a signed
  report's id is ``sage-radiology/DiagnosticReport/<run id>``; a PubMedQA copy is keyed by the id's last part), and
  rewrites the file atomically, or deletes it when nothing is left;
- removes the replay-ledger lines (:mod:`.replay`) of runs whose signed report is erased, so the ledger no longer
  links a study to the erased run.

It is idempotent (a second run finds nothing to remove) and reports counts and the sha256 of each file's path,
never a path: file and directory names can carry identifiers.

What it does not cover, and why: the cycles' evaluation reports (``eval/``) hold the fixed evaluation file's
studies and the models' outputs on them, not store records; the snapshot itself (``<store>/datasets/…``) is the
dataset layer's hook; the LoRA adapters trained on it are tainted through lineage by the erasure and retrained by
the next cycle.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from pathlib import Path

from sage_health.apps.coevolve.replay import forget_runs
from sage_health.apps.coevolve.scoring import pmid
from sage_health.apps.coevolve.spec import TRAIN_FILES, work_root
from sage_health.apps.radiology.workflow import SIGNED_SOURCE
from sage_health.core.config import Settings
from sage_health.core.errors import StoreError
from sage_health.core.hashing import sha256_text
from sage_health.data.governance.hooks import ErasureScope, HookReport

SIGNED_PREFIX = f"{SIGNED_SOURCE}/DiagnosticReport/"


def path_sha256(path: Path) -> str:
    """How a file is named in an erasure report or an audit event: the sha256 of its absolute path."""
    return sha256_text(str(path.resolve()))


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(
            f"cannot rewrite a co-evolution training copy (path sha256 {path_sha256(path)[:12]}): "
            f"{type(exc).__name__}; fix the permissions of <store>/coevolve and run the erasure again"
        ) from exc


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(
            f"cannot read a co-evolution training copy (path sha256 {path_sha256(path)[:12]}): "
            f"{type(exc).__name__}; fix or remove it under <store>/coevolve and run the erasure again"
        ) from exc


def _scrub_reports(path: Path, ids: frozenset[str]) -> tuple[int, int]:
    """Drop the lines of ``ids`` from a reports.jsonl copy: (lines removed, lines kept)."""
    kept: list[str] = []
    removed = 0
    for line in _read(path).splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            mine = isinstance(row, dict) and bool({str(row.get("uid")), str(row.get("id"))} & ids)
        except json.JSONDecodeError:
            mine = any(i in line for i in ids)  # an unparsable line is kept only if it names none of the ids
        if mine:
            removed += 1
        else:
            kept.append(line)
    if removed and kept:
        _replace(path, "\n".join(kept) + "\n")
    return removed, len(kept)


def _scrub_qa(path: Path, keys: frozenset[str]) -> tuple[int, int]:
    """Drop the questions of ``keys`` from a PubMedQA-format copy: (items removed, items kept)."""
    try:
        rows = json.loads(_read(path))
    except json.JSONDecodeError as exc:
        raise StoreError(
            f"a co-evolution training copy is not JSON (path sha256 {path_sha256(path)[:12]}); remove it under "
            "<store>/coevolve (the next cycle writes it again) and run the erasure again"
        ) from exc
    if not isinstance(rows, dict):
        return 0, 0
    gone = [k for k in rows if k in keys]
    for k in gone:
        del rows[k]
    if gone and rows:
        _replace(path, json.dumps(rows, sort_keys=True))
    return len(gone), len(rows)


class CoevolveErasureHook:
    """Scrubs the erased patient's items from every co-evolution cycle's training copy (module docstring)."""

    name = "coevolve"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def erase(self, scope: ErasureScope) -> HookReport:
        ids = frozenset({*scope.record_ids, scope.patient_id})
        qa_keys = frozenset(pmid(r) for r in scope.record_ids if "/QAItem/" in r)
        removed: Counter[str] = Counter()
        touched: list[str] = []
        root = work_root(self._settings)
        copies = [(p, "reports") for p in sorted(root.glob(f"*/cycle-*/{TRAIN_FILES['reports']}"))]
        copies += [(p, "qa") for p in sorted(root.glob(f"*/cycle-*/{TRAIN_FILES['qa']}"))]
        for path, kind in copies:
            gone, left = _scrub_reports(path, ids) if kind == "reports" else _scrub_qa(path, qa_keys)
            if not gone:
                continue
            touched.append(path_sha256(path))
            removed["training_items"] += gone
            if left:
                removed["training_files_scrubbed"] += 1
            else:
                path.unlink(missing_ok=True)
                removed["training_files_deleted"] += 1
        runs = [r.removeprefix(SIGNED_PREFIX) for r in scope.record_ids if r.startswith(SIGNED_PREFIX)]
        ledger = forget_runs(self._settings.db_path, runs)
        if ledger:
            removed["replay_ledger_rows"] = ledger
        return HookReport(
            hook=self.name,
            removed=dict(removed),
            files_sha256=tuple(touched),
            notes=(f"{len(copies)} cycle training copies checked",),
        )
