"""The data-model co-evolution loop: feedback becomes data, data becomes a snapshot, the snapshot trains a candidate,
and the candidate replaces production only if it is better beyond noise on a fixed held-out set.

One cycle (:func:`run_cycle`, ``sage-health coevolve``), each step timed and recorded:

1. **collect** — the feedback events (radiologists' approvals, edits and rejections from the radiology workflow)
   newer than the last cycle's, and the task's records now in the store;
2. **snapshot** — the next version of the de-identified, consent-respecting snapshot ``coevolve-<task>`` (all
   items in ``train``: approved/edited reports are training targets); rejected drafts become negative examples,
   used only in evaluation (never written to disk: they are model text about a patient);
3. **memory** — approved reports were written to the store at review time with their chunks and embeddings, so
   they are retrievable as exemplars at once; the step checks that each one is, and counts them;
4. **train** — a LoRA candidate adapter on the snapshot, initialised from the production adapter (the production
   model's lineage) unless production is tainted, then from the base model; checkpoints make a re-run resume;
5. **evaluate** — candidate and production on the fixed evaluation set (fixed at the first cycle, path + sha256;
   refused if it overlaps the training snapshot): ROUGE-L, BLEU-4, CE-F1, distinct ratio, verifier flag rate and
   rejected-draft recurrence (:mod:`.decision`);
6. **decide** — :data:`.decision.RULE`; promotion goes through the registry's own gates (evaluation on production's
   sets, taint). When production itself is tainted the rule becomes non-inferiority (``min_gain`` =
   ``-TAINTED_MARGIN``): an erased patient's data must leave production even at equal quality;
7. **record** — the cycle (inputs, snapshot, candidate, metrics, bootstrap, decision, reasons, timings) in
   ``coevolve_cycles``, and the audit log (``coevolve`` and ``promote`` events).

A crash anywhere leaves nothing half-done that matters: the snapshot is content-addressed, training resumes from
its checkpoints, the candidate is found again by its adapter hash, and a cycle row is written only at the end.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sage_health.agents.support import split_sentences
from sage_health.agents.trace import TraceStore
from sage_health.agents.types import Draft, DraftSentence, EvidenceItem
from sage_health.agents.verifier import verify
from sage_health.apps.coevolve.decision import Decision, decide, paired_bootstrap, safety_checks
from sage_health.apps.radiology.workflow import SIGNED_SOURCE
from sage_health.apps.radiology.workflow import TASK as RADIOLOGY_TASK
from sage_health.core.config import Settings
from sage_health.core.errors import CoevolutionError, EvaluationError, ModelError, RegistryError, RunNotFoundError
from sage_health.core.hashing import sha256_file
from sage_health.data.datasets import SnapshotInfo, create_snapshot
from sage_health.data.feedback import FeedbackEvent, FeedbackStore
from sage_health.data.governance.access import GovernedStore
from sage_health.data.governance.policy import Action
from sage_health.data.sqlite_tables import connect, immediate
from sage_health.models.adaptation.lora import (
    LoraConfig,
    base_registry_fields,
    has_checkpoint,
    lora_run_dir,
    register_lora_candidate,
    snapshot_train_items,
    train_lora,
)
from sage_health.models.catalog import BUILTIN_MODELS, GeneratorPool, resolve_model
from sage_health.models.evaluation.harness import (
    REPORT_TASKS,
    EvalOutcome,
    eval_set_key,
    find_leaks,
    load_qa_file,
    load_report_file,
    run_qa_eval,
    run_report_eval,
)
from sage_health.models.evaluation.labeler import CheXpertLabeler
from sage_health.models.evaluation.metrics import text_metrics
from sage_health.models.generation.base import GenerationParams
from sage_health.models.registry import ModelRegistry, ModelVersion

TAINTED_MARGIN = 0.02
RECURRENCE_ROUGE = 0.8
"""A model *repeats* a rejected draft when its output on the same input has ROUGE-L >= this against it."""

Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    return None


@dataclass(frozen=True)
class TaskSpec:
    task: str
    feedback_task: str | None
    """``feedback_events.task`` whose events feed this loop (None: the labels in the records are the feedback)."""
    selector: str
    primary: str
    """Per-item score of the harness that the paired bootstrap compares."""

    @property
    def is_qa(self) -> bool:
        return self.task == "qa"


TASK_SPECS: dict[str, TaskSpec] = {
    "impression": TaskSpec("impression", RADIOLOGY_TASK, f"DiagnosticReport:{SIGNED_SOURCE}", "rouge_l"),
    "findings": TaskSpec("findings", RADIOLOGY_TASK, f"DiagnosticReport:{SIGNED_SOURCE}", "rouge_l"),
    # PubMedQA-style labelled questions: each labelled QAItem in the store is the feedback (its answer the label).
    "qa": TaskSpec("qa", None, "QAItem", "correct"),
}


@dataclass(frozen=True)
class LoopOptions:
    task: str = "impression"
    model: str | None = None
    """Registry name of the model the loop evolves (default: ``settings.generator``, what the Planner uses)."""
    base: str = "smollm2"
    """``smollm2`` or a folder saved with ``save_pretrained`` (the tiny test LM)."""
    eval_file: Path | None = None
    eval_limit: int | None = None
    eval_seed: int = 13
    selector: str | None = None
    steps: int = 60
    batch_size: int = 8
    max_length: int = 320
    learning_rate: float = 2e-4
    seed: int = 0
    min_gain: float = 0.0
    resamples: int = 2000
    negatives_limit: int = 30
    force: bool = False
    dry_run: bool = False


# ------------------------------------------------------------------------------------------------ tables

_SCHEMA = """
CREATE TABLE IF NOT EXISTS coevolve_state (
    task TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    base TEXT NOT NULL,
    selector TEXT NOT NULL,
    eval_file TEXT NOT NULL,
    eval_sha256 TEXT NOT NULL,
    eval_limit INTEGER,
    eval_seed INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS coevolve_cycles (
    id INTEGER PRIMARY KEY,
    task TEXT NOT NULL,
    cycle INTEGER NOT NULL,
    status TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    actor TEXT NOT NULL,
    feedback_to_id INTEGER NOT NULL,
    snapshot_ref TEXT,
    candidate_ref TEXT,
    production_before TEXT,
    production_after TEXT,
    record_json TEXT NOT NULL,
    UNIQUE (task, cycle)
);
"""


@contextmanager
def _conn(settings: Settings) -> Iterator[sqlite3.Connection]:
    with connect(settings.db_path, schema=_SCHEMA, what="the co-evolution tables") as conn:
        yield conn


@dataclass(frozen=True)
class LoopState:
    task: str
    model: str
    base: str
    selector: str
    eval_file: str
    eval_sha256: str
    eval_limit: int | None
    eval_seed: int
    created_at: str
    created_by: str


def loop_state(settings: Settings, task: str) -> LoopState | None:
    with _conn(settings) as conn:
        row = conn.execute("SELECT * FROM coevolve_state WHERE task=?", (task,)).fetchone()
    return LoopState(**dict(row)) if row else None


def _fix_state(settings: Settings, opts: LoopOptions, spec: TaskSpec, actor: str, *, write: bool) -> LoopState:
    """The loop's fixed settings: set at the first cycle, then checked on every later one."""
    state = loop_state(settings, spec.task)
    if state is None:
        if opts.eval_file is None:
            raise CoevolutionError(
                f"the {spec.task} loop has no evaluation set yet: pass --eval-file (a reports.jsonl-format file the "
                "models are never trained on, e.g. the IU X-ray val split); it is then fixed for every later cycle"
            )
        if not opts.eval_file.is_file():
            raise CoevolutionError(f"{opts.eval_file}: no such evaluation file")
        state = LoopState(
            task=spec.task,
            model=opts.model or (f"{settings.generator}-qa" if spec.is_qa else settings.generator),
            base=opts.base,
            selector=opts.selector or spec.selector,
            eval_file=str(opts.eval_file.resolve()),
            eval_sha256=sha256_file(opts.eval_file),
            eval_limit=opts.eval_limit,
            eval_seed=opts.eval_seed,
            created_at=_now(),
            created_by=actor,
        )
        if write:
            with _conn(settings) as conn, immediate(conn):
                conn.execute(
                    "INSERT INTO coevolve_state VALUES (?,?,?,?,?,?,?,?,?,?)",
                    tuple(asdict(state).values()),
                )
        return state
    fixed = Path(state.eval_file)
    if opts.eval_file is not None and opts.eval_file.resolve() != fixed:
        raise CoevolutionError(
            f"the {spec.task} loop's evaluation set is fixed at {fixed} since {state.created_at}; drop --eval-file "
            "(comparisons across cycles need the same items)"
        )
    if opts.eval_limit is not None and opts.eval_limit != state.eval_limit:
        raise CoevolutionError(f"the {spec.task} loop's evaluation limit is fixed at {state.eval_limit}")
    if opts.model is not None and opts.model != state.model:
        raise CoevolutionError(f"the {spec.task} loop evolves model {state.model!r}; drop --model")
    if not fixed.is_file() or sha256_file(fixed) != state.eval_sha256:
        raise CoevolutionError(
            f"{fixed}: the fixed evaluation file is missing or changed since {state.created_at} (sha256 "
            f"{state.eval_sha256[:12]}…); restore it — a changed evaluation set makes cycles incomparable"
        )
    return state


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------ records


@dataclass
class ModelScores:
    ref: str
    eval_set: str
    metrics: dict[str, float | None]
    per_item: dict[str, float]
    report_path: str | None
    cached: bool


@dataclass
class CycleRecord:
    task: str
    cycle: int
    status: str
    """``promoted`` | ``kept`` | ``refused`` | ``skipped`` | ``dry-run``."""
    started_at: str
    finished_at: str = ""
    actor: str = ""
    model: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)
    snapshot_ref: str | None = None
    candidate_ref: str | None = None
    production_before: str | None = None
    production_after: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    eval_set: str | None = None
    candidate_metrics: dict[str, float | None] = field(default_factory=dict)
    production_metrics: dict[str, float | None] = field(default_factory=dict)
    decision: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    feedback_to_id: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def history(settings: Settings, task: str | None = None) -> list[CycleRecord]:
    """Every recorded cycle (oldest first), optionally of one task."""
    with _conn(settings) as conn:
        rows = conn.execute(
            "SELECT record_json FROM coevolve_cycles WHERE (? IS NULL OR task=?) ORDER BY id", (task, task)
        ).fetchall()
    return [CycleRecord(**json.loads(r["record_json"])) for r in rows]


def _record(settings: Settings, rec: CycleRecord) -> None:
    with _conn(settings) as conn, immediate(conn):
        conn.execute(
            "INSERT INTO coevolve_cycles(task, cycle, status, started_at, finished_at, actor, feedback_to_id,"
            " snapshot_ref, candidate_ref, production_before, production_after, record_json)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                rec.task,
                rec.cycle,
                rec.status,
                rec.started_at,
                rec.finished_at,
                rec.actor,
                rec.feedback_to_id,
                rec.snapshot_ref,
                rec.candidate_ref,
                rec.production_before,
                rec.production_after,
                json.dumps(rec.as_dict(), sort_keys=True),
            ),
        )


# ------------------------------------------------------------------------------------------------ models


def _registry_fields(base: str) -> dict[str, Any]:
    if base != "smollm2" and not (Path(base) / "config.json").is_file():
        raise CoevolutionError(f"--base {base}: neither 'smollm2' nor a folder saved with save_pretrained")
    return base_registry_fields(base)


def _production(registry: ModelRegistry, state: LoopState, actor: str, *, write: bool) -> ModelVersion:
    """Production of the loop's model; at the first cycle the base model is registered and made production."""
    prod = registry.production(state.model)
    if prod is not None:
        return prod
    fields = _registry_fields(state.base)
    builtin = BUILTIN_MODELS.get(state.model)
    if builtin is not None and state.base == "smollm2":
        base = resolve_model(registry, f"{state.model}@{builtin.version}")  # the base, not a newer candidate
    else:
        base = registry.ensure(
            state.model,
            backend=fields["backend"],
            version="base",
            base_model=fields["base_model"],
            config={"backend_options": fields["backend_options"]} if fields["backend_options"] else None,
            description=f"base model of the {state.task} co-evolution loop",
            actor="coevolve",
        )
    if not write:
        return base
    return registry.promote(
        base.name, base.version, actor=actor, reason="coevolve: the base model is the first production version"
    )


def _find_candidate(registry: ModelRegistry, name: str, adapter_sha: str, snapshot_ref: str) -> ModelVersion | None:
    for mv in registry.list_versions(name):
        if mv.adapter_sha256 == adapter_sha and mv.dataset_snapshot_id == snapshot_ref:
            return mv
    return None


# ------------------------------------------------------------------------------------------------ evaluation


def _pmid(record_id: str) -> str:
    return record_id.rsplit("/", 1)[-1]


def _snapshot_as_train_file(snapshot: SnapshotInfo, task: str, path: Path) -> Path:
    """The snapshot's train items in the harness's train-file format (reports.jsonl, or PubMedQA JSON for qa): the
    exemplar memory / majority baseline, and the leak guard against the evaluation set."""
    if task == "qa":
        rows = {
            _pmid(str(item["record_id"])): {
                "QUESTION": item.get("question") or item.get("input", ""),
                "CONTEXTS": [],
                "final_decision": str(item.get("target", "")).lower(),
            }
            for item in snapshot_train_items(snapshot)
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, sort_keys=True), encoding="utf-8")
        return path
    lines = []
    for item in snapshot_train_items(snapshot):
        row: dict[str, Any] = {"uid": item["record_id"], "id": item["record_id"]}
        if task == "impression":
            row.update(findings=item.get("input", ""), impression=item.get("target", ""))
        else:
            indication = item.get("input", "")
            row.update(indication="" if indication == "none" else indication, findings=item.get("target", ""))
        lines.append(json.dumps(row, sort_keys=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def overlap(train_file: Path, eval_file: Path, task: str) -> int:
    """Evaluation items that also occur in the training file (same id, or identical input + reference; for QA the
    same question)."""
    if task == "qa":
        qtrain, qtest = load_qa_file(train_file, "pubmedqa"), load_qa_file(eval_file, "pubmedqa")
        qa_leaks = find_leaks(
            [q.id for q in qtrain], [q.question for q in qtrain], [q.id for q in qtest], [q.question for q in qtest]
        )
        return len(qa_leaks.leaked)
    spec = REPORT_TASKS[task]
    train = [s for s in load_report_file(train_file) if spec.input_of(s) and spec.reference_of(s)]
    test = [s for s in load_report_file(eval_file) if spec.input_of(s) and spec.reference_of(s)]
    leaks = find_leaks(
        [s.id for s in train],
        [spec.example_of(s) for s in train],
        [s.id for s in test],
        [spec.example_of(s) for s in test],
    )
    return len(leaks.leaked)


def flag_rate(task: str, inputs: Sequence[str], outputs: Sequence[str], labeler: CheXpertLabeler) -> float | None:
    """Share of outputs with a clinical-consistency flag of the verifier (label conflict, negation, laterality, or
    an impression sentence whose observation has the opposite polarity in the findings)."""
    if not outputs:
        return None
    flagged = 0
    for source, out in zip(inputs, outputs, strict=True):
        evidence_text = source if task == "impression" else out
        evidence = [EvidenceItem(id="input", kind="similar_report", text=evidence_text or ".")]
        sentences: list[DraftSentence] = []
        if task == "impression":
            sentences += [
                DraftSentence(section="findings", text=s, citations=("input",)) for s in split_sentences(source)
            ]
            sentences += [
                DraftSentence(section="impression", text=s, citations=("input",)) for s in split_sentences(out)
            ]
        else:
            sentences += [DraftSentence(section="findings", text=s, citations=("input",)) for s in split_sentences(out)]
        if not any(s.section == ("impression" if task == "impression" else "findings") for s in sentences):
            continue  # an empty output is scored by ROUGE-L, not here
        result = verify(Draft(sentences=tuple(sentences)), evidence, None, labeler=labeler, threshold=0.0)
        if any(
            f.kind in ("label_conflict", "negation", "laterality")
            or (f.kind == "unsupported" and "in cited evidence" in f.detail)
            for f in result.flags
        ):
            flagged += 1
    return flagged / len(outputs)


def _flat(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    if "qa" in metrics:
        qa = metrics["qa"]
        n = qa.get("n_items") or 0
        return {
            "accuracy": qa.get("accuracy"),
            "macro_f1": qa.get("macro_f1"),
            "qa_invalid_rate": (qa.get("invalid_predictions") or 0) / n if n else None,
        }
    text = metrics.get("text", {})
    ce = metrics.get("ce", {})
    return {
        "rouge_l": text.get("rouge_l"),
        "bleu_4": text.get("bleu_4"),
        "distinct_ratio": text.get("distinct_output_ratio"),
        "ce_f1": ce.get("micro_f1"),
    }


class _Evaluator:
    """Scores models on the loop's fixed evaluation set, reusing a stored evaluation of the same set."""

    def __init__(self, settings: Settings, registry: ModelRegistry, state: LoopState, out_dir: Path) -> None:
        self.settings = settings
        self.registry = registry
        self.state = state
        self.out_dir = out_dir
        self.pool = GeneratorPool(settings, registry)
        self._labeler: CheXpertLabeler | None = None
        self.eval_file = Path(state.eval_file)
        self.qa = state.task == "qa"
        self.studies = {} if self.qa else {s.id: s for s in load_report_file(self.eval_file)}
        if self.qa:
            self.eval_set = eval_set_key(
                self.eval_file.stem, "qa-pubmedqa", self.eval_file, state.eval_limit, state.eval_seed, "noctx"
            )
        else:
            self.eval_set = eval_set_key(
                self.eval_file.stem, state.task, self.eval_file, state.eval_limit, state.eval_seed
            )

    @property
    def labeler(self) -> CheXpertLabeler:
        if self._labeler is None:
            self._labeler = CheXpertLabeler.from_data_dir(self.settings.data_dir)
        return self._labeler

    def _cached(self, mv: ModelVersion) -> ModelScores | None:
        found = [e for e in mv.evaluations if e.eval_set == self.eval_set and e.report_path]
        for ev in reversed(found):
            path = Path(str(ev.report_path))
            try:
                report = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            if int(report.get("config", {}).get("exemplars", 0) or 0) != int(mv.config.get("exemplars", 0) or 0):
                continue
            items = report.get("items", [])
            return self._scores(mv, ev.metrics, items, str(path), cached=True)
        return None

    def _scores(
        self, mv: ModelVersion, metrics: Mapping[str, Any], items: Sequence[Mapping[str, Any]], path: str | None,
        *, cached: bool,
    ) -> ModelScores:  # fmt: skip
        per_item = {str(i["id"]): float(i["scores"][TASK_SPECS[self.state.task].primary]) for i in items}
        flat = _flat(metrics)
        if self.qa:
            return ModelScores(mv.ref, self.eval_set, flat, per_item, path, cached)
        spec = REPORT_TASKS[self.state.task]
        inputs = [spec.input_of(self.studies[str(i["id"])]) for i in items if str(i["id"]) in self.studies]
        outputs = [str(i.get("prediction") or "") for i in items if str(i["id"]) in self.studies]
        flat["verifier_flag_rate"] = flag_rate(self.state.task, inputs, outputs, self.labeler)
        return ModelScores(mv.ref, self.eval_set, flat, per_item, path, cached)

    def score(self, mv: ModelVersion, train_file: Path, progress: Progress) -> ModelScores:
        cached = self._cached(mv)
        if cached is not None:
            progress(f"evaluation of {mv.ref} on {self.eval_set}: reused")
            return cached
        _, gen = self.pool.get(mv.ref)
        progress(f"evaluating {mv.ref} on {self.eval_file.name} ...")
        outcome: EvalOutcome
        if self.qa:
            outcome = run_qa_eval(
                test_file=self.eval_file,
                fmt="pubmedqa",
                model=mv,
                generator=gen,
                registry=self.registry,
                out_dir=self.out_dir / mv.ref.replace("@", "-"),
                retrieval=False,
                train_file=train_file,
                limit=self.state.eval_limit,
                seed=self.state.eval_seed,
            )
        else:
            outcome = run_report_eval(
                train_file=train_file,
                test_file=self.eval_file,
                task=self.state.task,
                model=mv,
                generator=gen,
                registry=self.registry,
                labeler=self.labeler,
                embedder=_LazyEmbedder(self.settings),
                out_dir=self.out_dir / mv.ref.replace("@", "-"),
                limit=self.state.eval_limit,
                seed=self.state.eval_seed,
            )
        if outcome.eval_set != self.eval_set:  # pragma: no cover - the harness and the loop share eval_set_key
            raise EvaluationError(f"evaluation set mismatch: {outcome.eval_set} != {self.eval_set}")
        items = [{"id": i.id, "prediction": i.prediction, "scores": dict(i.scores)} for i in outcome.run.items]
        return self._scores(mv, outcome.run.metrics, items, str(outcome.files.json_path), cached=False)

    def recurrence(self, mv: ModelVersion, negatives: Sequence[tuple[str, str]]) -> float | None:
        """Share of rejected (input, draft) pairs on which ``mv`` writes the rejected text again."""
        if not negatives:
            return None
        _, gen = self.pool.get(mv.ref)
        spec = REPORT_TASKS[self.state.task]
        params = GenerationParams(max_new_tokens=spec.max_new_tokens, temperature=0.0, seed=self.state.eval_seed)
        outs = []
        for inp, _rejected in negatives:
            try:
                outs.append(gen.generate(spec.template.messages(inp, exemplars=[]), params).text)
            except ModelError:
                outs.append("")
        scores = text_metrics(outs, [r for _, r in negatives]).rouge_l_per_item
        return sum(1 for s in scores if s >= RECURRENCE_ROUGE) / len(negatives)


class _LazyEmbedder:
    """The configured embedder, built only if the harness asks for exemplars (a LoRA candidate needs none)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._inner: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._inner is None:
            from sage_health.data.embed import embedder_for

            s = self._settings
            self._inner = embedder_for(s)
        return getattr(self._inner, name)


def _negatives(settings: Settings, task: str, events: Sequence[FeedbackEvent], limit: int) -> list[tuple[str, str]]:
    """(input, rejected text) of the newest rejected drafts; kept in memory only."""
    traces = TraceStore(settings.db_path)
    out: list[tuple[str, str]] = []
    for ev in reversed(events):
        if ev.kind != "rejected" or len(out) >= limit:
            continue
        draft = ev.draft
        if task == "impression":
            inp, rejected = str(draft.get("findings") or ""), str(draft.get("impression") or "")
        else:
            try:
                inp = "Indication: " + str(traces.get_run(ev.run_id).request.get("indication") or "")
            except RunNotFoundError:  # a run erased with its patient has no request any more
                continue
            rejected = str(draft.get("findings") or "")
        if inp.strip() and rejected.strip():
            out.append((inp, rejected))
    return out


# ------------------------------------------------------------------------------------------------ the cycle


def _timed(timings: dict[str, float], name: str, started: float) -> None:
    timings[name] = round(time.perf_counter() - started, 2)


def run_cycle(
    settings: Settings, governed: GovernedStore, opts: LoopOptions, *, progress: Progress = _quiet
) -> CycleRecord:
    """One co-evolution cycle (module docstring). ``opts.dry_run`` reports what would happen and writes nothing."""
    spec = TASK_SPECS.get(opts.task)
    if spec is None:
        raise CoevolutionError(f"unknown task {opts.task!r}; the loop runs for: {', '.join(TASK_SPECS)}")
    for action in (Action.SNAPSHOT, Action.TRAIN, Action.EVALUATE, Action.PROMOTE):
        governed.decide(action)
    actor = governed.access.principal.name
    write = not opts.dry_run
    state = _fix_state(settings, opts, spec, actor, write=write)
    registry = ModelRegistry(settings.db_path)
    past = [c for c in history(settings, spec.task) if c.status != "skipped"]
    last = past[-1] if past else None
    rec = CycleRecord(
        task=spec.task, cycle=len(history(settings, spec.task)) + 1, status="dry-run", started_at=_now(), actor=actor,
        model=state.model,
    )  # fmt: skip
    timings = rec.timings
    cycle_dir = settings.store / "coevolve" / spec.task / f"cycle-{rec.cycle:03d}"

    # 1. collect
    t = time.perf_counter()
    watermark = last.feedback_to_id if last else 0
    all_events = FeedbackStore(settings.db_path).events(task=spec.feedback_task) if spec.feedback_task else []
    new = [e for e in all_events if e.id > watermark]
    kinds = Counter(e.kind for e in new)
    rec.feedback_to_id = max((e.id for e in all_events), default=watermark)
    production = _production(registry, state, actor, write=write)
    rec.production_before = production.ref
    taint = registry.taint(production)
    rec.inputs = {
        "new_feedback_events": len(new),
        "approved": kinds["approved"],
        "edited": kinds["edited"],
        "rejected": kinds["rejected"],
        "feedback_events_total": len(all_events),
        "production_tainted": taint,
        "eval_file": state.eval_file,
        "eval_sha256": state.eval_sha256,
    }
    _timed(timings, "collect", t)
    progress(
        f"cycle {rec.cycle}: {len(new)} new feedback events ({kinds['approved']} approved, {kinds['edited']} edited, "
        f"{kinds['rejected']} rejected); production {production.ref}" + (f" (tainted: {taint})" if taint else "")
    )
    if opts.dry_run:
        rec.finished_at = _now()
        rec.reasons = ["dry run: nothing written"]
        return rec

    # 2. snapshot
    t = time.perf_counter()
    snap = create_snapshot(
        governed, settings, f"coevolve-{spec.task}", state.selector, task=spec.task, split="100/0/0", seed=0, deid=True
    )
    rec.snapshot_ref = snap.ref
    previous_items = int(last.inputs.get("snapshot_train_items", 0)) if last else 0
    rec.inputs.update(
        snapshot_train_items=int(snap.counts["train"]), new_items=int(snap.counts["train"]) - previous_items
    )
    negatives = _negatives(settings, spec.task, all_events, opts.negatives_limit)
    rec.inputs["negatives"] = len(negatives)
    _timed(timings, "snapshot", t)
    progress(f"snapshot {snap.ref}: {snap.counts['train']} training items ({rec.inputs['new_items']:+d})")
    if last is not None and snap.ref == last.snapshot_ref and taint is None and not new and not opts.force:
        rec.status = "skipped"
        rec.reasons = [f"nothing new since cycle {last.cycle} (same snapshot {snap.ref}, no feedback)"]
        rec.production_after = production.ref
        rec.finished_at = _now()
        _record(settings, rec)
        governed.log("coevolve", detail={"task": spec.task, "cycle": rec.cycle, "status": rec.status})
        return rec

    # 3. retrieval memory: approved reports are indexed at review time; check they are retrievable
    t = time.perf_counter()
    signed = [e.record_id for e in new if e.kind in ("approved", "edited") and e.record_id]
    retrievable = governed.indexed(signed) if signed else 0  # decided and audited once, not per record
    rec.inputs["memory_new_reports"] = len(signed)
    rec.inputs["memory_retrievable"] = retrievable
    _timed(timings, "memory", t)

    # 4. train
    t = time.perf_counter()
    init_adapter = Path(production.adapter_path) if production.adapter_path and taint is None else None
    config = LoraConfig(
        task=spec.task, steps=opts.steps, batch_size=opts.batch_size, max_length=opts.max_length,
        learning_rate=opts.learning_rate, seed=opts.seed,
    )  # fmt: skip
    run_dir = lora_run_dir(
        settings, name=state.model, snapshot_ref=snap.ref, config=config, base=state.base, init_adapter=init_adapter
    )
    resume = has_checkpoint(run_dir)
    train_items = snapshot_train_items(snap)
    progress(
        f"training a LoRA candidate on {len(train_items)} items, {opts.steps} steps"
        + (f", from {production.ref}'s adapter" if init_adapter else ", from the base model")
        + (" (resuming)" if resume else "")
    )
    result = train_lora(
        train_items, base=state.base, settings=settings, run_dir=run_dir, config=config, init_adapter=init_adapter,
        resume=resume,
        progress=lambda step, total, loss: progress(f"  step {step}/{total} loss {loss:.3f}") if step % 10 == 0 or step == total else None,  # noqa: E501
    )  # fmt: skip
    candidate = _find_candidate(registry, state.model, result.adapter_sha256, snap.ref)
    if candidate is None:
        candidate = register_lora_candidate(
            registry, result, name=state.model, snapshot_ref=snap.ref, base=state.base,
            registry_fields=_registry_fields(state.base), parent=production.ref if init_adapter else None,
            actor=actor, description=f"coevolve {spec.task} cycle {rec.cycle}",
        )  # fmt: skip
    rec.candidate_ref = candidate.ref
    rec.training = {
        **result.metrics(),
        "run_dir": str(result.run_dir),
        "loss_plot": str(result.loss_plot),
        "parent": production.ref if init_adapter else None,
        "adapter_sha256": result.adapter_sha256,
    }
    _timed(timings, "train", t)
    governed.log(Action.TRAIN.value, detail={"model": candidate.ref, "snapshot": snap.ref, "cycle": rec.cycle})

    # 5. evaluate
    t = time.perf_counter()
    train_file = _snapshot_as_train_file(
        snap, spec.task, cycle_dir / ("train.pubmedqa.json" if spec.is_qa else "train.reports.jsonl")
    )
    evaluator = _Evaluator(settings, registry, state, cycle_dir / "eval")
    rec.eval_set = evaluator.eval_set
    blockers: list[str] = []
    leaked = overlap(train_file, Path(state.eval_file), spec.task)
    if leaked:
        blockers.append(
            f"the evaluation set overlaps the training snapshot {snap.ref} ({leaked} items): the candidate's scores "
            "would be inflated; evaluation studies must never be reviewed into the training data"
        )
    cand_taint = registry.taint(candidate)
    if cand_taint:
        blockers.append(f"candidate {candidate.ref} is tainted ({cand_taint})")
    decision: Decision
    if blockers:
        decision = decide(spec.primary, None, blockers=blockers)
    else:
        cand_scores = evaluator.score(candidate, train_file, progress)
        prod_scores = evaluator.score(production, train_file, progress)
        for scores, mv in ((cand_scores, candidate), (prod_scores, production)):
            scores.metrics["rejected_recurrence"] = evaluator.recurrence(mv, negatives) if negatives else None
        rec.candidate_metrics, rec.production_metrics = cand_scores.metrics, prod_scores.metrics
        common = sorted(set(cand_scores.per_item) & set(prod_scores.per_item))
        boot = paired_bootstrap(
            [prod_scores.per_item[i] for i in common],
            [cand_scores.per_item[i] for i in common],
            resamples=opts.resamples,
            seed=opts.seed,
        )
        min_gain = -TAINTED_MARGIN if taint else opts.min_gain
        checks = safety_checks(
            {k: v for k, v in prod_scores.metrics.items() if v is not None},
            {k: v for k, v in cand_scores.metrics.items() if v is not None},
        )
        decision = decide(spec.primary, boot, checks, min_gain=min_gain)
    _timed(timings, "evaluate", t)

    # 6. decide (the registry's gates apply on top of the rule)
    t = time.perf_counter()
    reasons = list(decision.reasons)
    status = "refused" if blockers else "kept"
    after = production
    if decision.promote:
        try:
            after = registry.promote(candidate.name, candidate.version, actor=actor, reason=decision.summary)
            status = "promoted"
            governed.log(
                Action.PROMOTE.value, detail={"model": after.ref, "replaced": production.ref, "cycle": rec.cycle}
            )
        except RegistryError as exc:
            reasons.append(f"registry refused the promotion: {exc}")
    rec.status = status
    rec.production_after = after.ref
    rec.decision = decision.as_dict()
    rec.reasons = reasons
    _timed(timings, "decide", t)

    # 7. record
    rec.finished_at = _now()
    _record(settings, rec)
    governed.log(
        "coevolve",
        detail={"task": spec.task, "cycle": rec.cycle, "status": status, "snapshot": snap.ref,
                "candidate": candidate.ref, "production": after.ref, "reasons": reasons},
    )  # fmt: skip
    progress(f"cycle {rec.cycle}: {status}; production is {after.ref}")
    return rec


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def plot_history(records: Sequence[CycleRecord], path: Path) -> Path | None:
    """Primary metric of candidate and production per cycle (promotions marked) as a PNG; None without data."""
    points = [r for r in records if r.candidate_metrics]
    if not points:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = "rouge_l" if any(r.candidate_metrics.get("rouge_l") is not None for r in points) else "accuracy"
    fig = Figure(figsize=(6.4, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = [r.cycle for r in points]
    ax.plot(xs, [_nan(r.production_metrics.get(metric)) for r in points], "o--", label="production (before the cycle)")
    ax.plot(xs, [_nan(r.candidate_metrics.get(metric)) for r in points], "s-", label="candidate")
    promoted = [r for r in points if r.status == "promoted"]
    if promoted:
        ax.scatter([r.cycle for r in promoted], [_nan(r.candidate_metrics.get(metric)) for r in promoted], s=160,
                   facecolors="none", edgecolors="green", label="promoted")  # fmt: skip
    ax.set_xlabel("cycle")
    ax.set_ylabel(f"{metric} on the fixed evaluation set")
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), format="png", dpi=110)
    return path


__all__ = [
    "TASK_SPECS",
    "CycleRecord",
    "LoopOptions",
    "LoopState",
    "flag_rate",
    "history",
    "loop_state",
    "overlap",
    "plot_history",
    "run_cycle",
]
