"""How the co-evolution loop scores models: the snapshot as the harness's train file, the overlap (leak) guard,
the verifier's flag rate, rejected-draft recurrence, and the evaluator of the fixed evaluation set (which reuses a
stored evaluation of the same set)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sage_health.agents.support import split_sentences
from sage_health.agents.trace import TraceStore
from sage_health.agents.types import Draft, DraftSentence, EvidenceItem
from sage_health.agents.verifier import verify
from sage_health.apps.coevolve.records import LoopState
from sage_health.apps.coevolve.spec import RECURRENCE_ROUGE, TASK_SPECS, Progress
from sage_health.core.config import Settings
from sage_health.core.errors import EvaluationError, ModelError, RunNotFoundError
from sage_health.data.datasets import SnapshotInfo
from sage_health.data.feedback import FeedbackEvent
from sage_health.models.adaptation.lora import snapshot_train_items
from sage_health.models.catalog import GeneratorPool
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


@dataclass
class ModelScores:
    ref: str
    eval_set: str
    metrics: dict[str, float | None]
    per_item: dict[str, float]
    report_path: str | None
    cached: bool


def pmid(record_id: str) -> str:
    return record_id.rsplit("/", 1)[-1]


def snapshot_as_train_file(snapshot: SnapshotInfo, task: str, path: Path) -> Path:
    """The snapshot's train items in the harness's train-file format (reports.jsonl, or PubMedQA JSON for qa): the
    exemplar memory / majority baseline, and the leak guard against the evaluation set."""
    if task == "qa":
        rows = {
            pmid(str(item["record_id"])): {
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


class Evaluator:
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


def negatives_of(settings: Settings, task: str, events: Sequence[FeedbackEvent], limit: int) -> list[tuple[str, str]]:
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
