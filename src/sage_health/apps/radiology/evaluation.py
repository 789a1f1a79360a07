"""``sage-health eval radiology``: the whole report workflow per test study, scored against the reference report.

Rules (the model layer's harness rules apply):

- Train and test are explicit ``reports.jsonl``-format files. The workflow's **retrieval memory is a fresh store
  built from the train file only** (its reports become ``DiagnosticReport`` records); nothing else — not the
  configured store, not the test file — is searchable during the evaluation.
- The leak guard refuses overlapping study ids or identical studies (indication + findings + impression) between
  train and test (``--drop-leaks`` evaluates without them and records how many).
- Input per test study: its indication (and comparison), plus its images where the study has some in the data
  (the shared IU X-ray val studies have none, so the imaging agent abstains there). Reference: FINDINGS (what
  R2Gen scores) and FINDINGS + IMPRESSION (the clinical-efficacy labels).
- Each system (the model, and the ``extractive`` nearest-neighbour baseline in the same run) goes through the
  same workflow: retrieval, screening, writer, verifier, safety. Scores are of the verified draft — what a
  radiologist would see; the writer's raw text is scored too, so the verifier's effect is visible.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sage_health.agents.base import AgentContext
from sage_health.agents.trace import StepRecord, TraceStore
from sage_health.agents.types import Draft
from sage_health.apps.radiology.workflow import DraftRequest, draft_report
from sage_health.core.config import Settings
from sage_health.core.errors import EvaluationError
from sage_health.core.hashing import sha256_file
from sage_health.data.chunking import Chunker
from sage_health.data.embed import CachedEmbedder, Embedder, embedder_for
from sage_health.data.governance.access import GovernedStore
from sage_health.data.governance.policy import Action
from sage_health.data.ingest.iu_xray import iu_report
from sage_health.data.store.sqlite import SqliteDocumentStore
from sage_health.models.catalog import GeneratorPool, resolve_model
from sage_health.models.evaluation.harness import (
    EvalOutcome,
    ReportStudy,
    _git_commit,
    _publish,
    _run_id,
    _sample,
    check_leaks,
    eval_set_key,
    find_leaks,
    load_report_file,
)
from sage_health.models.evaluation.labeler import COMMON_FIVE, OBSERVATIONS, CheXpertLabeler
from sage_health.models.evaluation.metrics import MetricTree, ce_metrics, text_metrics
from sage_health.models.evaluation.reporting import (
    DatasetFile,
    DatasetInfo,
    EvalRun,
    ItemOutput,
    format_metric,
    metric_value,
)
from sage_health.models.registry import ModelRegistry

Progress = Callable[[str, int, int], None]
MEMORY_SOURCE = "iu-xray-train"
DEFAULT_INDICATION = "Chest radiograph."
"""Input for a test study without an indication section (counted in the run's ``workflow`` metrics)."""

PUBLISHED = (
    # (system, BLEU-4, ROUGE-L, note): IU X-ray *test* split, image inputs — not the same inputs or split as ours.
    ("R2Gen (Chen et al., EMNLP 2020), published", 0.165, 0.371, "IU X-ray test, images → findings"),
    ("R2Gen, realistic reproductions (range)", "0.118 to 0.155", "0.325 to 0.334", "IU X-ray test, images → findings"),
)


def _noop(system: str, done: int, total: int) -> None:
    return None


def _example(s: ReportStudy) -> str:
    return f"{s.indication} || {s.findings} || {s.impression}"


def build_memory_store(train: list[ReportStudy], path: Path, embedder: Embedder, settings: Settings) -> int:
    """A fresh store holding only the train file's reports (the workflow's retrieval memory)."""
    if path.exists():
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    records = [
        iu_report(
            s.id.removeprefix("iu:"),
            source=MEMORY_SOURCE,
            indication=s.indication or None,
            comparison=s.comparison or None,
            findings=s.findings or None,
            impression=s.impression or None,
            mesh_major=[],
            mesh_automatic=[],
            images=[],
        )
        for s in train
    ]
    with SqliteDocumentStore(
        path, embedder, Chunker(settings.chunk_words, settings.chunk_overlap_words), bm25_index="memory"
    ) as store:
        for i in range(0, len(records), 500):
            store.write(records[i : i + 500], run_id="eval-memory")
    return len(records)


@dataclass(frozen=True)
class SystemResult:
    ref: str
    outcome: EvalOutcome


def _score(preds: list[str], refs: list[str], prefix: str) -> MetricTree:
    tm = text_metrics(preds, refs).as_metrics()["text"]
    return {prefix: tm}


def run_radiology_eval(
    *,
    settings: Settings,
    governed: GovernedStore,
    registry: ModelRegistry,
    train_file: Path,
    test_file: Path,
    out_dir: Path,
    models: list[str],
    labeler: CheXpertLabeler,
    limit: int | None = None,
    seed: int = 13,
    drop_leaks: bool = False,
    dataset_name: str | None = None,
    progress: Progress | None = None,
) -> list[SystemResult]:
    """Run the workflow for every test study once per model in ``models`` (e.g. the generator and
    ``extractive@1``) and record each run in the registry under the same evaluation-set key.

    ``governed`` is the acting principal's governed store: the evaluation is policy-checked (``evaluate``) and the
    workflow's reads and searches of the retrieval memory run under the same principal, purpose and audit log."""
    governed.decide(Action.EVALUATE)
    tick = progress or _noop
    train = [s for s in load_report_file(train_file) if s.findings or s.impression]
    test_all = [s for s in load_report_file(test_file) if s.findings]
    if not test_all:
        raise EvaluationError(f"{test_file}: no study has a FINDINGS section to score against")
    leaks = find_leaks([s.id for s in train], [_example(s) for s in train], [s.id for s in test_all],
                       [_example(s) for s in test_all])  # fmt: skip
    check_leaks(leaks, drop=drop_leaks)
    test = _sample([s for s in test_all if s.id not in leaks.leaked], limit, seed)
    if not test:
        raise EvaluationError(f"{test_file}: every test item also occurs in the train file")
    out_dir.mkdir(parents=True, exist_ok=True)
    memory_dir = out_dir / "memory"
    memory_dir.mkdir(parents=True, exist_ok=True)
    base = embedder_for(settings)
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    embedder = CachedEmbedder(base, settings.models_dir / "embed-cache.db")
    t0 = time.perf_counter()
    n_memory = build_memory_store(train, memory_dir / "sage.db", embedder, settings)
    memory_seconds = time.perf_counter() - t0
    mem_settings = settings.model_copy(update={"store": memory_dir})
    name = dataset_name or test_file.stem
    leak_tag = f"minus-train-{sha256_file(train_file)[:8]}" if leaks.leaked else ""
    eval_set = eval_set_key(name, "radiology-workflow", test_file, limit, seed, leak_tag)
    refs_findings = [s.findings for s in test]
    refs_report = [f"{s.findings} {s.impression}".strip() for s in test]
    ref_labels = labeler.label_many(refs_report)
    results: list[SystemResult] = []
    with SqliteDocumentStore(
        mem_settings.db_path,
        embedder,
        Chunker(settings.chunk_words, settings.chunk_overlap_words),
        bm25_index="memory",
        dense_weight=settings.hybrid_dense_weight,
    ) as memory:
        pool = GeneratorPool(settings, registry)
        for ref in models:
            model = resolve_model(registry, ref)
            memory_access = governed.over(memory).acting(Action.EVALUATE)
            ctx = AgentContext(settings=mem_settings, store=memory_access, registry=registry, pool=pool)
            drafts: list[Draft] = []
            raw: list[Draft] = []
            seconds: list[float] = []
            flagged = removed = blocked = failures = fallbacks = no_indication = 0
            run_ids: list[str] = []
            for n, study in enumerate(test, 1):
                if not study.indication:
                    no_indication += 1
                request = DraftRequest(
                    indication=study.indication or DEFAULT_INDICATION,
                    comparison=study.comparison or None,
                    study_id=f"{MEMORY_SOURCE}/DiagnosticReport/{study.id.removeprefix('iu:')}",
                    model=model.ref,
                    seed=seed,
                )
                t = time.perf_counter()
                outcome = draft_report(ctx, request)
                seconds.append(time.perf_counter() - t)
                run_ids.append(outcome.run_id)
                drafts.append(outcome.draft)
                steps = {s.step: s for s in _steps(mem_settings, outcome.run_id)}
                write_out = steps["write"].output if "write" in steps else None
                raw.append(Draft.model_validate(write_out) if write_out else outcome.draft)
                flagged += bool(outcome.flags)
                removed += sum(1 for f in outcome.flags if f.get("action") == "removed")
                blocked += outcome.blocked
                fallbacks += outcome.model_ref != model.ref
                tick(model.ref, n, len(test))
            preds_findings = [d.findings for d in drafts]
            preds_report = [f"{d.findings} {d.impression}".strip() for d in drafts]
            raw_findings = [d.findings for d in raw]
            gen_labels = labeler.label_many(preds_report)
            ce = ce_metrics(
                [{k: v.value for k, v in r.labels.items()} for r in gen_labels],
                [{k: v.value for k, v in r.labels.items()} for r in ref_labels],
                OBSERVATIONS,
                COMMON_FIVE,
            )
            tm = text_metrics(preds_findings, refs_findings)
            metrics: MetricTree = {**tm.as_metrics(), **ce.as_metrics()}
            metrics.update(_score(preds_report, refs_report, "report_text"))
            metrics.update(_score(raw_findings, refs_findings, "raw_writer_text"))
            total_sentences = sum(len(d.sentences) for d in raw) or 1
            metrics["workflow"] = {
                "n_studies": len(test),
                "verifier_flag_rate": flagged / len(test),
                "removed_sentence_rate": removed / total_sentences,
                "blocked_rate": blocked / len(test),
                "seconds_per_study_mean": statistics.fmean(seconds),
                "seconds_per_study_p50": statistics.median(seconds),
                "fallback_drafts": fallbacks,
                "generation_failures": failures,
                "studies_without_indication": no_indication,
                "memory_reports": n_memory,
                "memory_build_seconds": round(memory_seconds, 1),
                "leaked_test_items_dropped": len(leaks.leaked),
            }
            run = EvalRun(
                run_id=_run_id("radiology-workflow", model),
                task="radiology_workflow",
                dataset=DatasetInfo(
                    name=name, files=(DatasetFile.from_path(train_file), DatasetFile.from_path(test_file))
                ),
                split=f"train={train_file.name} test={test_file.name}",
                seed=seed,
                config={
                    "eval_set": eval_set,
                    "model_ref": model.ref,
                    "backend": model.backend,
                    "retrieval_memory": f"fresh store of the {n_memory} train-file reports only",
                    "similar_reports": settings.similar_reports,
                    "support_threshold": settings.support_threshold,
                    "input": "indication + comparison (+ images where present: none in IU X-ray val)",
                    "reference": "text metrics: FINDINGS; CE labels: FINDINGS + IMPRESSION",
                    "scored_text": "verified draft (after the verifier removed unsupported sentences)",
                    "decoding": "greedy",
                    "limit": limit,
                    "ce_labeler": "sage_health CheXpert-style labeler (positive/uncertain = 1)",
                    "agent_runs": f"{len(run_ids)} runs in {mem_settings.db_path}",
                },
                model_id=model.name,
                model_version=model.version,
                git_commit=_git_commit(),
                metrics=metrics,
                items=tuple(
                    ItemOutput(id=s.id, prediction=p, reference=r, scores={"rouge_l": float(sc)})
                    for s, p, r, sc in zip(test, preds_findings, refs_findings, tm.rouge_l_per_item, strict=True)
                ),
            )
            results.append(SystemResult(ref=model.ref, outcome=_publish(run, out_dir, registry, model, eval_set)))
    embedder.close()
    governed.log(
        Action.EVALUATE.value,
        detail={"task": "radiology", "eval_set": eval_set, "models": [r.ref for r in results], "studies": len(test),
                "train_sha256": sha256_file(train_file), "test_sha256": sha256_file(test_file)},
    )  # fmt: skip
    return results


def _steps(settings: Settings, run_id: str) -> list[StepRecord]:
    return TraceStore(settings.db_path).steps(run_id)


COMPARISON_KEYS = (
    "text.bleu_4",
    "text.rouge_l",
    "ce.micro_f1",
    "ce.macro_f1",
    "ce.common_micro_f1",
    "text.distinct_output_ratio",
    "workflow.verifier_flag_rate",
    "workflow.seconds_per_study_mean",
)


def comparison_markdown(results: list[SystemResult]) -> str:
    """One table: our systems from this run, then the published R2Gen numbers (different inputs and split)."""
    header = ["system", "BLEU-4", "ROUGE-L", "CE micro-F1 (14)", "CE macro-F1 (14)", "CE micro-F1 (5)",
              "distinct", "verifier flag rate", "s / study"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        vals = []
        for key in COMPARISON_KEYS:
            v = metric_value(r.outcome.run.metrics, key)
            vals.append("n/a" if v is None else format_metric(v))
        lines.append(f"| {r.ref} (this run, val) | " + " | ".join(vals) + " |")
    for system, bleu, rouge, _ in PUBLISHED:
        b = f"{bleu:.3f}" if isinstance(bleu, float) else bleu
        rl = f"{rouge:.3f}" if isinstance(rouge, float) else rouge
        lines.append(f"| {system} | {b} | {rl} | n/a | n/a | n/a | n/a | n/a | n/a |")
    return "\n".join(lines) + "\n"
