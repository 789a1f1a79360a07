"""The evaluation harness: report generation (IU X-ray style) and medical QA, recorded in the model registry.

Rules every evaluation follows:

- Train and test are **explicit files**. Retrieval memory, in-context exemplars and any fitted state (the
  majority-class baseline) are built only from the train file — never from the store or other data.
- **Leak guard:** the run is refused when train and test share a study/question id or an identical example
  (input + reference after normalising case, punctuation and whitespace), unless ``drop_leaks`` excludes those
  test items (their number is recorded). The reference text alone is not the criterion: radiology impressions
  are templated (180 of the 296 IU X-ray R2Gen-val impressions occur verbatim in train, e.g. "No acute
  cardiopulmonary abnormality."), so that rule would refuse every standard split while catching no leak.
- Every run records dataset files (path + sha256), split, seed, config, model id/version, and writes JSON +
  markdown + HTML (with plots) through :mod:`sage_health.models.evaluation.reporting`; the metrics are stored
  on the model version in the registry under an *evaluation set* key (dataset, task, test-file hash, limit),
  so two models are compared only on identical items.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sage_health.core.errors import EvaluationError, ModelError
from sage_health.core.hashing import sha256_file
from sage_health.data.embed import Embedder
from sage_health.models.evaluation.labeler import COMMON_FIVE, OBSERVATIONS, CheXpertLabeler
from sage_health.models.evaluation.metrics import (
    MetricTree,
    ce_metrics,
    qa_baselines,
    qa_metrics,
    text_metrics,
)
from sage_health.models.evaluation.reporting import (
    DatasetFile,
    DatasetInfo,
    EvalRun,
    ItemOutput,
    ReportFiles,
    write_report,
)
from sage_health.models.generation.base import GenerationParams, Generator
from sage_health.models.generation.prompts import (
    FINDINGS_FROM_INDICATION,
    IMPRESSION_FROM_FINDINGS,
    MULTIPLE_CHOICE,
    PUBMEDQA,
    Evidence,
    Exemplar,
    PromptTemplate,
)
from sage_health.models.registry import ModelRegistry, ModelVersion

ReportTask = Literal["impression", "findings"]
QAFormat = Literal["pubmedqa", "mirage"]
Progress = Callable[[int, int], None]


def _noop(done: int, total: int) -> None:
    return None


# ----------------------------------------------------------------------------- report generation


@dataclass(frozen=True)
class ReportStudy:
    """One study of a ``reports.jsonl``-format file (IU X-ray, Open-i fields)."""

    id: str
    indication: str
    comparison: str
    findings: str
    impression: str


@dataclass(frozen=True)
class TaskSpec:
    template: PromptTemplate
    max_new_tokens: int

    def input_of(self, s: ReportStudy) -> str:
        if self.template is IMPRESSION_FROM_FINDINGS:
            return s.findings
        parts = [
            f"Indication: {s.indication}" if s.indication else "",
            f"Comparison: {s.comparison}" if s.comparison else "",
        ]
        return "\n".join(p for p in parts if p)

    def example_of(self, s: ReportStudy) -> str:
        """Input and reference together: what makes two studies the same example."""
        return f"{self.input_of(s)} || {self.reference_of(s)}"

    def reference_of(self, s: ReportStudy) -> str:
        return s.impression if self.template is IMPRESSION_FROM_FINDINGS else s.findings


REPORT_TASKS: dict[str, TaskSpec] = {
    "impression": TaskSpec(IMPRESSION_FROM_FINDINGS, 64),
    "findings": TaskSpec(FINDINGS_FROM_INDICATION, 160),
}


def _text(value: Any) -> str:
    return " ".join(str(value).split()) if isinstance(value, str) else ""


def load_report_file(path: Path) -> list[ReportStudy]:
    """Studies of a ``reports.jsonl``-format file; a malformed line fails the evaluation naming ``file:line``."""
    if not path.is_file():
        raise EvaluationError(f"{path}: no such file (expected a reports.jsonl-format file)")
    studies: list[ReportStudy] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvaluationError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict) or "uid" not in row:
                raise EvaluationError(f"{path}:{lineno}: expected an object with a 'uid' (reports.jsonl format)")
            sid = f"iu:{row['uid']}"
            if sid in seen:
                raise EvaluationError(f"{path}:{lineno}: duplicate study uid {row['uid']}")
            seen.add(sid)
            studies.append(
                ReportStudy(
                    id=sid,
                    indication=_text(row.get("indication")),
                    comparison=_text(row.get("comparison")),
                    findings=_text(row.get("findings")),
                    impression=_text(row.get("impression")),
                )
            )
    if not studies:
        raise EvaluationError(f"{path}: no studies")
    return studies


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


@dataclass(frozen=True)
class LeakReport:
    """Test items that also occur in the train file: by id, or as an identical (normalised) example."""

    shared_ids: tuple[str, ...]
    duplicate_examples: tuple[str, ...]

    @property
    def leaked(self) -> frozenset[str]:
        return frozenset(self.shared_ids) | frozenset(self.duplicate_examples)


def find_leaks(
    train_ids: Sequence[str], train_texts: Sequence[str], test_ids: Sequence[str], test_texts: Sequence[str]
) -> LeakReport:
    """Ids in both files, and test items whose text (input + reference) equals a train item's after normalising
    case, punctuation and whitespace."""
    shared = tuple(sorted(set(train_ids) & set(test_ids)))
    seen = {_norm(t) for t in train_texts if t}
    dup = tuple(i for i, t in zip(test_ids, test_texts, strict=True) if t and _norm(t) in seen and i not in shared)
    return LeakReport(shared_ids=shared, duplicate_examples=dup)


def check_leaks(report: LeakReport, *, drop: bool) -> None:
    """Refuse a leaking evaluation (or, with ``drop``, let the caller exclude the leaked items)."""
    if report.shared_ids and not drop:
        raise EvaluationError(
            f"train/test leak: {len(report.shared_ids)} id(s) in both files (e.g. {', '.join(report.shared_ids[:3])}); "
            "remove them from the train file"
        )
    if report.duplicate_examples and not drop:
        raise EvaluationError(
            f"train/test leak: {len(report.duplicate_examples)} test item(s) are identical to a train item "
            f"(e.g. {', '.join(report.duplicate_examples[:3])}); de-duplicate the files or pass --drop-leaks to "
            "evaluate without them"
        )


class ExemplarMemory:
    """Nearest train examples by embedding cosine (MiniLM), built only from the train file's items."""

    def __init__(self, inputs: Sequence[str], outputs: Sequence[str], ids: Sequence[str], embedder: Embedder) -> None:
        self._inputs = list(inputs)
        self._outputs = list(outputs)
        self._ids = list(ids)
        self._embedder = embedder
        self._matrix = embedder.embed(self._inputs) if self._inputs else np.zeros((0, embedder.dim), np.float32)

    def __len__(self) -> int:
        return len(self._inputs)

    def nearest(self, query: str, k: int) -> list[Exemplar]:
        if k <= 0 or not self._inputs:
            return []
        q = self._embedder.embed([query])[0]
        scores = self._matrix @ q
        top = np.argsort(-scores, kind="stable")[:k]
        # most similar last: the exemplar closest to the question sits right before it in the prompt
        return [Exemplar(input=self._inputs[i], output=self._outputs[i], id=self._ids[i]) for i in top[::-1]]


@dataclass(frozen=True)
class EvalOutcome:
    run: EvalRun
    files: ReportFiles
    eval_set: str


def _sample(items: list[Any], limit: int | None, seed: int) -> list[Any]:
    if limit is None or limit >= len(items):
        return items
    rng = random.Random(seed)  # noqa: S311 - reproducible sampling, not cryptography
    picked = sorted(rng.sample(range(len(items)), limit))
    return [items[i] for i in picked]


def eval_set_key(dataset: str, task: str, test_file: Path, limit: int | None, seed: int, extra: str = "") -> str:
    key = f"{dataset}:{task}:{sha256_file(test_file)[:12]}"
    if limit is not None:
        key += f":n{limit}:s{seed}"
    return key + (f":{extra}" if extra else "")


def _run_id(prefix: str, model: ModelVersion) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", f"{model.name}-{model.version}")
    return f"{prefix}-{safe}-{stamp}-{uuid.uuid4().hex[:6]}"


def _git_commit() -> str | None:
    """The source tree's commit when running from a git checkout (recorded with every run), else None."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],  # noqa: S607 - git from PATH, fixed arguments
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


def _publish(run: EvalRun, out_dir: Path, registry: ModelRegistry, model: ModelVersion, eval_set: str) -> EvalOutcome:
    """Write the run's report files and record its metrics on the model version under ``eval_set``."""
    files = write_report(run, out_dir)
    registry.record_evaluation(
        model.name,
        model.version,
        eval_set=eval_set,
        run_id=run.run_id,
        metrics=run.metrics,
        report_path=str(files.json_path),
    )
    return EvalOutcome(run=run, files=files, eval_set=eval_set)


def _generate(gen: Generator, messages: Any, params: GenerationParams) -> str:
    try:
        return gen.generate(messages, params).text
    except ModelError as exc:
        # One failed item must not sink a run of hundreds: it is scored as an empty output and counted.
        return f"\x00error:{type(exc).__name__}"


def run_report_eval(
    *,
    train_file: Path,
    test_file: Path,
    task: str,
    model: ModelVersion,
    generator: Generator,
    registry: ModelRegistry,
    labeler: CheXpertLabeler,
    embedder: Embedder,
    out_dir: Path,
    limit: int | None = None,
    seed: int = 13,
    exemplars: int | None = None,
    dataset_name: str | None = None,
    drop_leaks: bool = False,
    progress: Progress = _noop,
) -> EvalOutcome:
    """Generate the ``task`` section for each test study and score it against the reference."""
    if task not in REPORT_TASKS:
        raise EvaluationError(f"unknown report task {task!r}: use impression or findings")
    spec = REPORT_TASKS[task]
    train = [s for s in load_report_file(train_file) if spec.input_of(s) and spec.reference_of(s)]
    test_all = [s for s in load_report_file(test_file) if spec.input_of(s) and spec.reference_of(s)]
    if not test_all:
        raise EvaluationError(f"{test_file}: no study has both the input and the reference of task {task}")
    leaks = find_leaks(
        [s.id for s in train],
        [spec.example_of(s) for s in train],
        [s.id for s in test_all],
        [spec.example_of(s) for s in test_all],
    )
    check_leaks(leaks, drop=drop_leaks)
    test_all = [s for s in test_all if s.id not in leaks.leaked]
    if not test_all:
        raise EvaluationError(f"{test_file}: every test item also occurs in the train file")
    test = _sample(test_all, limit, seed)
    k = int(model.config.get("exemplars", 0)) if exemplars is None else exemplars
    memory = (
        ExemplarMemory(
            [spec.input_of(s) for s in train], [spec.reference_of(s) for s in train], [s.id for s in train], embedder
        )
        if k > 0
        else None
    )
    params = GenerationParams(max_new_tokens=spec.max_new_tokens, temperature=0.0, seed=seed)
    preds: list[str] = []
    failures = 0
    for n, study in enumerate(test, 1):
        inp = spec.input_of(study)
        shots = memory.nearest(inp, k) if memory is not None else []
        text = _generate(generator, spec.template.messages(inp, exemplars=shots), params)
        if text.startswith("\x00error:"):
            failures += 1
            text = ""
        preds.append(text)
        progress(n, len(test))
    refs = [spec.reference_of(s) for s in test]
    tm = text_metrics([p or "" for p in preds], refs)
    gen_labels = labeler.label_many(preds)
    ref_labels = labeler.label_many(refs)
    ce = ce_metrics(
        [{k_: v.value for k_, v in r.labels.items()} for r in gen_labels],
        [{k_: v.value for k_, v in r.labels.items()} for r in ref_labels],
        OBSERVATIONS,
        COMMON_FIVE,
    )
    metrics: MetricTree = {**tm.as_metrics(), **ce.as_metrics()}
    metrics["run"] = {
        "n_items": len(test),
        "generation_failures": failures,
        "train_items": len(train),
        "exemplars": k,
        "leaked_test_items_dropped": len(leaks.leaked),
    }
    name = dataset_name or test_file.stem
    leak_tag = f"minus-train-{sha256_file(train_file)[:8]}" if leaks.leaked else ""
    eval_set = eval_set_key(name, task, test_file, limit, seed, leak_tag)
    run = EvalRun(
        run_id=_run_id(f"report-{task}", model),
        task=f"report_generation:{task}",
        dataset=DatasetInfo(name=name, files=(DatasetFile.from_path(train_file), DatasetFile.from_path(test_file))),
        split=f"train={train_file.name} test={test_file.name}",
        seed=seed,
        config={
            "eval_set": eval_set,
            "task": task,
            "template": f"{spec.template.name}@{spec.template.version}",
            "exemplars": k,
            "exemplar_memory": "train file only; MiniLM cosine on the input section" if k else None,
            "limit": limit,
            "max_new_tokens": spec.max_new_tokens,
            "decoding": "greedy",
            "model_ref": model.ref,
            "backend": model.backend,
            "dataset_snapshot_id": model.dataset_snapshot_id,
            "ce_labeler": "sage_health CheXpert-style labeler (positive=1, else 0)",
        },
        model_id=model.name,
        model_version=model.version,
        git_commit=_git_commit(),
        metrics=metrics,
        items=tuple(
            ItemOutput(id=s.id, prediction=p, reference=r, scores={"rouge_l": float(sc)})
            for s, p, r, sc in zip(test, preds, refs, tm.rouge_l_per_item, strict=True)
        ),
    )
    return _publish(run, out_dir, registry, model, eval_set)


# ----------------------------------------------------------------------------- QA


@dataclass(frozen=True)
class QAExample:
    id: str
    question: str
    options: tuple[str, ...]  # "A. text" lines for multiple choice; empty for yes/no/maybe
    labels: tuple[str, ...]
    answer: str
    contexts: tuple[str, ...]


PUBMEDQA_LABELS = ("yes", "no", "maybe")


def load_qa_file(path: Path, fmt: QAFormat) -> list[QAExample]:
    """PubMedQA ``ori_pqal_*.json`` or MIRAGE ``{"task": {"key": {question, options, answer}}}``."""
    if not path.is_file():
        raise EvaluationError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not data:
        raise EvaluationError(f"{path}: expected a non-empty JSON object")
    items: list[QAExample] = []
    if fmt == "pubmedqa":
        for pmid, row in data.items():
            if not isinstance(row, dict) or row.get("final_decision") not in PUBMEDQA_LABELS or not row.get("QUESTION"):
                raise EvaluationError(f"{path}:$.{pmid}: not a PubMedQA item (QUESTION, CONTEXTS, final_decision)")
            items.append(
                QAExample(
                    id=f"pubmedqa:{pmid}",
                    question=str(row["QUESTION"]),
                    options=(),
                    labels=PUBMEDQA_LABELS,
                    answer=str(row["final_decision"]),
                    contexts=tuple(str(c) for c in row.get("CONTEXTS", [])),
                )
            )
        return items
    for task, rows in data.items():
        if not isinstance(rows, dict):
            raise EvaluationError(f"{path}:$.{task}: expected an object of questions (MIRAGE format)")
        for key, row in rows.items():
            opts = row.get("options") if isinstance(row, dict) else None
            if not isinstance(opts, dict) or not opts or row.get("answer") not in opts:
                raise EvaluationError(f"{path}:$.{task}.{key}: expected question, options and an answer among them")
            letters = tuple(sorted(opts))
            items.append(
                QAExample(
                    id=f"{task}:{key}",
                    question=str(row["question"]),
                    options=tuple(f"{letter}. {opts[letter]}" for letter in letters),
                    labels=letters,
                    answer=str(row["answer"]),
                    contexts=(),
                )
            )
    return items


def parse_answer(text: str, example: QAExample) -> str:
    """The answer label in a model's output, or ``"invalid"`` when none can be found."""
    low = text.strip().lower()
    if not example.options:
        m = re.search(r"\b(yes|no|maybe)\b", low)
        return m.group(1) if m else "invalid"
    m = re.match(r"^\W*\(?([a-z])\b[).:]?", low)
    if m and m.group(1).upper() in example.labels:
        return m.group(1).upper()
    m = re.search(r"\b(?:answer|option)\s*(?:is|:)?\s*\(?([a-z])\b", low)
    if m and m.group(1).upper() in example.labels:
        return m.group(1).upper()
    for opt in example.options:  # the option text itself
        letter, _, body = opt.partition(". ")
        if body and body.lower().rstrip(".") in low:
            return letter
    return "invalid"


def run_qa_eval(
    *,
    test_file: Path,
    fmt: QAFormat,
    model: ModelVersion,
    generator: Generator,
    registry: ModelRegistry,
    out_dir: Path,
    retrieval: bool,
    train_file: Path | None = None,
    limit: int | None = None,
    seed: int = 13,
    max_context_words: int = 400,
    drop_leaks: bool = False,
    progress: Progress = _noop,
) -> EvalOutcome:
    """Accuracy / macro-F1 of a model's answers, beside majority (from ``train_file``) and random baselines.

    ``retrieval=True`` for PubMedQA quotes the item's own abstract contexts as evidence (the standard
    reasoning-required setting). MIRAGE items carry no evidence; retrieval there needs a corpus and is
    refused rather than silently skipped.
    """
    if retrieval and fmt == "mirage":
        raise EvaluationError("--retrieval on is not available for MIRAGE files (no evidence corpus is given)")
    test_all = load_qa_file(test_file, fmt)
    train = load_qa_file(train_file, fmt) if train_file is not None else []
    dropped = 0
    if train:
        leaks = find_leaks(
            [t.id for t in train], [t.question for t in train], [t.id for t in test_all], [t.question for t in test_all]
        )
        check_leaks(leaks, drop=drop_leaks)
        test_all = [t for t in test_all if t.id not in leaks.leaked]
        dropped = len(leaks.leaked)
    test = _sample(test_all, limit, seed)
    labels = PUBMEDQA_LABELS if fmt == "pubmedqa" else tuple(sorted({lab for ex in test for lab in ex.labels}))
    template = PUBMEDQA if fmt == "pubmedqa" else MULTIPLE_CHOICE
    params = GenerationParams(max_new_tokens=8, temperature=0.0, seed=seed)
    preds: list[str] = []
    raw: list[str] = []
    for n, ex in enumerate(test, 1):
        evidence: list[Evidence] = []
        if retrieval:
            words = 0
            for i, ctx in enumerate(ex.contexts):
                if words >= max_context_words:
                    break
                cut = " ".join(ctx.split()[: max_context_words - words])
                words += len(cut.split())
                evidence.append(Evidence(id=f"{ex.id}#ctx{i}", text=cut))
        messages = template.messages(None, evidence=evidence, question=ex.question, options=ex.options)
        text = _generate(generator, messages, params)
        raw.append("" if text.startswith("\x00error:") else text)
        preds.append(parse_answer(raw[-1], ex))
        progress(n, len(test))
    refs = [ex.answer for ex in test]
    qm = qa_metrics(preds, refs, labels)
    metrics: MetricTree = dict(qm.as_metrics())
    metrics["run"] = {"n_items": len(test), "leaked_test_items_dropped": dropped}
    if train:
        metrics.update(qa_baselines(refs, [t.answer for t in train], labels).as_metrics())
    else:
        rnd = 1.0 / len(labels)
        metrics["qa_baselines"] = {"random_accuracy": rnd}
    name = test_file.stem
    tag = "ctx" if retrieval else "noctx"
    if dropped and train_file is not None:
        tag += f":minus-train-{sha256_file(train_file)[:8]}"
    eval_set = eval_set_key(name, f"qa-{fmt}", test_file, limit, seed, tag)
    files_info = [DatasetFile.from_path(test_file)] + ([DatasetFile.from_path(train_file)] if train_file else [])
    run = EvalRun(
        run_id=_run_id(f"qa-{fmt}", model),
        task=f"qa:{fmt}",
        dataset=DatasetInfo(name=name, files=tuple(files_info)),
        split=f"test={test_file.name}" + (f" train={train_file.name}" if train_file else ""),
        seed=seed,
        config={
            "eval_set": eval_set,
            "format": fmt,
            "retrieval": retrieval,
            "evidence": "the item's own abstract contexts" if retrieval else None,
            "max_context_words": max_context_words if retrieval else None,
            "template": f"{template.name}@{template.version}",
            "limit": limit,
            "decoding": "greedy, 8 new tokens",
            "model_ref": model.ref,
            "backend": model.backend,
        },
        model_id=model.name,
        model_version=model.version,
        git_commit=_git_commit(),
        metrics=metrics,
        items=tuple(
            ItemOutput(id=ex.id, prediction=p, reference=ex.answer, scores={"correct": float(p == ex.answer)})
            for ex, p in zip(test, preds, strict=True)
        ),
    )
    return _publish(run, out_dir, registry, model, eval_set)


# ----------------------------------------------------------------------------- splits


def write_r2gen_splits(reports: Path, annotation: Path, out_dir: Path) -> dict[str, Path]:
    """Split a ``reports.jsonl`` file by the R2Gen annotation (``CXR<uid>_...`` ids) into ``<split>.jsonl`` files.

    Lines are copied byte for byte. Splits absent from the annotation file (the held-out test) are not written.
    """
    try:
        ann = json.loads(annotation.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EvaluationError(f"{annotation}: cannot read the R2Gen annotation ({exc})") from exc
    split_of: dict[int, str] = {}
    for split, entries in ann.items():
        for e in entries:
            m = re.match(r"CXR(\d+)_", str(e.get("id", "")))
            if m:
                split_of[int(m.group(1))] = split.strip() or "test"
    out_dir.mkdir(parents=True, exist_ok=True)
    handles: dict[str, Any] = {}
    paths: dict[str, Path] = {}
    try:
        with reports.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    uid = int(json.loads(line)["uid"])
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    raise EvaluationError(f"{reports}:{lineno}: no integer uid") from exc
                split = split_of.get(uid)
                if split is None:
                    continue
                if split not in handles:
                    paths[split] = out_dir / f"{split}.jsonl"
                    handles[split] = (out_dir / f"{split}.jsonl.partial").open("w", encoding="utf-8")
                handles[split].write(line if line.endswith("\n") else line + "\n")
    finally:
        for h in handles.values():
            h.close()
    for split, path in paths.items():
        (out_dir / f"{split}.jsonl.partial").replace(path)
    return paths
