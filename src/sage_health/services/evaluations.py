"""Evaluation use cases: report generation, medical QA, the labeler and de-identification (``eval report|qa|
labeler|deid``), plus the file-only helpers ``eval split-iu`` and ``label``.

Policy: ``evaluate`` (secondary use: research opt-outs apply to anything read from the store). These evaluations
read explicit files only — train/test files, the public labeler and de-identification data — never store records:
the harness builds exemplar memory and baselines from the train file alone. Should one ever read the store, it must
read through ``session.governed().acting(Action.EVALUATE)`` so opted-out patients are excluded inside the query.

Each run is audited with the model ref, the evaluation set key and content hashes of the files (never their paths:
a file name can carry a patient's name). Evaluating a tainted model is refused (the generator pool refuses to load
it), and the metrics are recorded on the model version in the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sage_health.core.errors import EvaluationError
from sage_health.core.hashing import sha256_file
from sage_health.data.embed import embedder_for
from sage_health.data.governance.deid_eval import DeidEvaluation
from sage_health.data.governance.policy import Action
from sage_health.models.evaluation.harness import EvalOutcome, run_qa_eval, run_report_eval, write_r2gen_splits
from sage_health.models.evaluation.labeler import OBSERVATIONS, CheXpertLabeler
from sage_health.models.evaluation.labeler_validation import LabeledReportsValidation, MeshValidation
from sage_health.services.session import Session

OnProgress = Callable[[int, int], None]
"""``(done, total)`` items of an evaluation run."""


def _noop(done: int, total: int) -> None:
    return None


def outcome_summary(outcome: EvalOutcome) -> dict[str, Any]:
    """The JSON summary of one evaluation run (what ``--json`` prints)."""
    run = outcome.run
    return {
        "run_id": run.run_id,
        "model": run.model_label,
        "eval_set": outcome.eval_set,
        "task": run.task,
        "seed": run.seed,
        "config": run.config,
        "metrics": run.metrics,
        "report": {
            "json": str(outcome.files.json_path),
            "markdown": str(outcome.files.markdown_path),
            "html": str(outcome.files.html_path),
        },
    }


def _labeler(session: Session, labeler_dir: Path | None) -> CheXpertLabeler:
    return CheXpertLabeler.from_dir(labeler_dir or session.settings.data_dir / "chexpert_labeler")


def _file_hash(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def evaluate_report(
    session: Session,
    *,
    train: Path,
    test: Path,
    model: str,
    task: str = "impression",
    limit: int | None = None,
    seed: int = 13,
    exemplars: int | None = None,
    labeler_dir: Path | None = None,
    drop_leaks: bool = False,
    out_dir: Path | None = None,
    on_progress: OnProgress | None = None,
) -> EvalOutcome:
    """Report generation: BLEU-1..4, ROUGE-L, distinct-output ratio and CheXpert CE metrics vs the references."""
    session.decide(Action.EVALUATE, detail={"task": task})
    settings = session.settings
    mv, gen = session.pool().get(model)
    outcome = run_report_eval(
        train_file=train,
        test_file=test,
        task=task,
        model=mv,
        generator=gen,
        registry=session.registry,
        labeler=_labeler(session, labeler_dir),
        embedder=embedder_for(settings),
        out_dir=out_dir or settings.store / "evals",
        limit=limit,
        seed=seed,
        exemplars=exemplars,
        drop_leaks=drop_leaks,
        progress=on_progress or _noop,
    )
    session.audit(
        Action.EVALUATE.value,
        detail={
            "task": task,
            "model": mv.ref,
            "eval_set": outcome.eval_set,
            "run_id": outcome.run.run_id,
            "test_sha256": _file_hash(test),
            "train_sha256": _file_hash(train),
        },
    )
    return outcome


def evaluate_qa(
    session: Session,
    *,
    file: Path,
    fmt: Literal["pubmedqa", "mirage"],
    model: str,
    retrieval: bool = False,
    train: Path | None = None,
    limit: int | None = None,
    seed: int = 13,
    drop_leaks: bool = False,
    out_dir: Path | None = None,
    on_progress: OnProgress | None = None,
) -> EvalOutcome:
    """Multiple-choice / yes-no-maybe QA: accuracy and macro-F1 beside majority and random baselines."""
    session.decide(Action.EVALUATE, detail={"task": f"qa-{fmt}"})
    mv, gen = session.pool().get(model)
    outcome = run_qa_eval(
        test_file=file,
        fmt=fmt,
        model=mv,
        generator=gen,
        registry=session.registry,
        out_dir=out_dir or session.settings.store / "evals",
        retrieval=retrieval,
        train_file=train,
        limit=limit,
        seed=seed,
        drop_leaks=drop_leaks,
        progress=on_progress or _noop,
    )
    session.audit(
        Action.EVALUATE.value,
        detail={
            "task": f"qa-{fmt}",
            "model": mv.ref,
            "eval_set": outcome.eval_set,
            "run_id": outcome.run.run_id,
            "test_sha256": _file_hash(file),
        },
    )
    return outcome


@dataclass(frozen=True)
class LabelerEvaluation:
    """The labeler vs the CheXpert labeler's own outputs, and vs IU X-ray MeSH terms."""

    chexpert: LabeledReportsValidation
    mesh: MeshValidation

    def as_dict(self) -> dict[str, Any]:
        return {
            "chexpert_labeled_reports": self.chexpert.model_dump(mode="json"),
            "iu_mesh": self.mesh.model_dump(mode="json"),
        }


def evaluate_labeler(session: Session, *, data_dir: Path | None = None) -> LabelerEvaluation:
    """Validate the CheXpert-style labeler on the public data (``SAGE_DATA_DIR``)."""
    from sage_health.models.evaluation.labeler_validation import (
        validate_against_iu_mesh,
        validate_against_labeled_reports,
    )

    session.decide(Action.EVALUATE, detail={"task": "labeler"})
    root = data_dir or session.settings.data_dir
    labeler = CheXpertLabeler.from_dir(root / "chexpert_labeler")
    result = LabelerEvaluation(
        chexpert=validate_against_labeled_reports(labeler, root / "chexpert_labeler"),
        mesh=validate_against_iu_mesh(labeler, root),
    )
    session.audit(Action.EVALUATE.value, detail={"task": "labeler", "iu_reports": result.mesh.n_reports})
    return result


def evaluate_deid(
    session: Session,
    *,
    file: Path | None = None,
    mode: str | None = None,
    data_dir: Path | None = None,
    cv_by: str | None = None,
) -> DeidEvaluation:
    """De-identification: span P/R/F1 per entity (strict + relaxed) and eponym over-redaction; with ``mode``,
    how many gold values survive de-identification in that mode; with ``cv_by="template"``, template-grouped
    5-fold cross-validation (the de-identifier's settings chosen on the other folds)."""
    from sage_health.data.governance.deid import DEID_MODES, PresidioDeidentifier, deid_key
    from sage_health.data.governance.deid_eval import CV_BY, evaluate

    if mode is not None and mode not in DEID_MODES:
        raise EvaluationError(f"unknown --mode {mode!r}; use one of {', '.join(DEID_MODES)}")
    if cv_by is not None and cv_by not in CV_BY:
        raise EvaluationError(f"unknown --cv-by {cv_by!r}; use one of {', '.join(CV_BY)}")
    session.decide(Action.EVALUATE, detail={"task": "deid"})
    settings = session.settings
    result = evaluate(
        PresidioDeidentifier(deid_key(settings)), data_dir or settings.data_dir, file=file, mode=mode, cv_by=cv_by
    )
    session.audit(
        Action.EVALUATE.value,
        detail={
            "task": "deid",
            "mode": mode,
            "cv_by": cv_by,
            "texts": result.spans.texts,
            "file_sha256": _file_hash(Path(result.spans.file)),
        },
    )
    return result


# ---------------------------------------------------------------------------------------------- file-only helpers


@dataclass(frozen=True)
class SplitFile:
    split: str
    path: Path
    studies: int


def split_iu(reports: Path, annotation: Path, out_dir: Path) -> list[SplitFile]:
    """Write the R2Gen train/val splits of a reports.jsonl file (public data; lines copied byte for byte)."""
    paths = write_r2gen_splits(reports, annotation, out_dir)
    out = []
    for split, path in paths.items():
        with path.open(encoding="utf-8") as handle:
            out.append(SplitFile(split=split, path=path, studies=sum(1 for _ in handle)))
    return out


@dataclass(frozen=True)
class ReportLabelling:
    """The 14 CheXpert observations of one report text, with the evidence phrase behind each non-blank label."""

    labels: dict[str, str]
    evidence: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return {"labels": self.labels, "evidence": self.evidence}


def label_report(text: str, *, labeler_dir: Path) -> ReportLabelling:
    """Label one report text (no store, no patient record: the caller's own text)."""
    result = CheXpertLabeler.from_dir(labeler_dir).label(text)
    return ReportLabelling(
        labels={obs: result.labels[obs].value for obs in OBSERVATIONS},
        evidence={obs: ev.explain() for obs, ev in result.evidence.items()},
    )
