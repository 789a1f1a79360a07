"""``sage-health`` evaluation commands: ``eval report|qa|labeler|deid|split-iu`` and ``label``.

Each command parses its options, calls one use case of :mod:`sage_health.services.evaluations` and renders it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from sage_health.core.errors import EvaluationError
from sage_health.interfaces.cli.common import Cli, JsonOpt, echo_json, err, out, run_command, session_command
from sage_health.models.evaluation.harness import EvalOutcome
from sage_health.models.evaluation.labeler import OBSERVATIONS
from sage_health.services import evaluations
from sage_health.services.evaluations import outcome_summary

ModelOpt = Annotated[str, typer.Option("--model", help="NAME[@VERSION] from the registry, or a built-in backend.")]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="Evaluate a seeded sample of N test items.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Sampling seed (recorded with the run).")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Report folder (default <store>/evals).")]
DropLeaksOpt = Annotated[
    bool, typer.Option("--drop-leaks", help="Evaluate without test items that also occur in the train file.")
]
LabelerDirOpt = Annotated[
    Path | None, typer.Option("--labeler-dir", help="CheXpert labeler folder (default SAGE_DATA_DIR/chexpert_labeler).")
]


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )


def _print_summary(outcome: EvalOutcome, keys: list[tuple[str, str]]) -> None:
    table = Table(title=f"{outcome.run.task} · {outcome.run.model_label} · {outcome.eval_set}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for section, key in keys:
        block = outcome.run.metrics.get(section)
        if isinstance(block, dict) and key in block:
            value = block[key]
            table.add_row(f"{section}.{key}", f"{value:.4f}" if isinstance(value, float) else str(value))
    out.print(table)
    out.print(f"report: {outcome.files.html_path}")


@session_command
def eval_report(
    cli: Cli,
    train: Annotated[Path, typer.Option("--train", help="reports.jsonl-format file: exemplar memory only.")],
    test: Annotated[Path, typer.Option("--test", help="reports.jsonl-format file to evaluate on.")],
    model: ModelOpt,
    task: Annotated[str, typer.Option("--task", help="impression (from findings) or findings.")] = "impression",
    limit: LimitOpt = None,
    seed: SeedOpt = 13,
    exemplars: Annotated[
        int | None, typer.Option("--exemplars", min=0, help="Override the model's in-context exemplar count.")
    ] = None,
    labeler_dir: LabelerDirOpt = None,
    drop_leaks: DropLeaksOpt = False,
    out_dir: OutOpt = None,
) -> None:
    """Report generation: BLEU-1..4, ROUGE-L, distinct-output ratio and CheXpert CE metrics vs the references."""

    def body() -> None:
        with cli.session() as session, _progress() as bar:
            job = bar.add_task(f"{model} {task}", total=None)
            outcome = evaluations.evaluate_report(
                session, train=train, test=test, model=model, task=task, limit=limit, seed=seed,
                exemplars=exemplars, labeler_dir=labeler_dir, drop_leaks=drop_leaks, out_dir=out_dir,
                on_progress=lambda done, total: bar.update(job, completed=done, total=total),
            )  # fmt: skip
        keys = (
            [("text", k) for k in ("bleu_1", "bleu_4", "rouge_l", "distinct_output_ratio")]
            + [("ce", k) for k in ("micro_f1", "macro_f1", "common_micro_f1", "common_macro_f1")]
            + [("run", k) for k in ("n_items", "generation_failures", "leaked_test_items_dropped")]
        )
        cli.emit(outcome_summary(outcome), lambda: _print_summary(outcome, keys))

    run_command(body)


@session_command
def eval_qa(
    cli: Cli,
    file: Annotated[Path, typer.Option("--file", help="The test file (PubMedQA ori_pqal_*.json or MIRAGE json).")],
    fmt: Annotated[Literal["pubmedqa", "mirage"], typer.Option("--format", help="pubmedqa or mirage.")],
    model: ModelOpt,
    retrieval: Annotated[
        Literal["on", "off"], typer.Option("--retrieval", help="PubMedQA: quote the item's abstract as evidence.")
    ] = "off",
    train: Annotated[
        Path | None, typer.Option("--train", help="Same-format file for the majority-class baseline.")
    ] = None,
    limit: LimitOpt = None,
    seed: SeedOpt = 13,
    drop_leaks: DropLeaksOpt = False,
    out_dir: OutOpt = None,
) -> None:
    """Multiple-choice / yes-no-maybe QA: accuracy and macro-F1 beside majority and random baselines."""

    def body() -> None:
        with cli.session() as session, _progress() as bar:
            job = bar.add_task(f"{model} {fmt}", total=None)
            outcome = evaluations.evaluate_qa(
                session, file=file, fmt=fmt, model=model, retrieval=retrieval == "on", train=train, limit=limit,
                seed=seed, drop_leaks=drop_leaks, out_dir=out_dir,
                on_progress=lambda done, total: bar.update(job, completed=done, total=total),
            )  # fmt: skip
        keys = [("qa", k) for k in ("accuracy", "macro_f1", "invalid_predictions", "n_items")] + [
            ("qa_baselines", k) for k in ("majority_accuracy", "random_accuracy")
        ]
        cli.emit(outcome_summary(outcome), lambda: _print_summary(outcome, keys))

    run_command(body)


@session_command
def eval_labeler(
    cli: Cli,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Public data (default SAGE_DATA_DIR).")] = None,
) -> None:
    """Validate the CheXpert-style labeler: vs the CheXpert labeler's own outputs and vs IU X-ray MeSH terms.
    Policy: ``evaluate``."""

    def body() -> None:
        with cli.session() as session:
            result = evaluations.evaluate_labeler(session, data_dir=data_dir)

        def render() -> None:
            mesh = result.mesh
            table = Table(title=f"labeler vs IU X-ray MeSH ({mesh.n_reports} reports)")
            for col in ("observation", "support", "precision", "recall", "F1", "TP", "FP", "FN"):
                table.add_column(col, justify="right" if col != "observation" else "left")
            for m in mesh.per_observation:
                table.add_row(m.observation, str(m.tp + m.fn), f"{m.precision:.3f}", f"{m.recall:.3f}",
                              f"{m.f1:.3f}", str(m.tp), str(m.fp), str(m.fn))  # fmt: skip
            out.print(table)

        cli.emit(result.as_dict(), render)

    run_command(body)


def split_iu(
    reports: Annotated[Path, typer.Option("--reports", help="IU X-ray reports.jsonl.")],
    annotation: Annotated[Path, typer.Option("--annotation", help="R2Gen annotation.json with the split ids.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for <split>.jsonl files.")],
    as_json: JsonOpt = False,
) -> None:
    """Write the R2Gen train/val splits of a reports.jsonl file (lines copied byte for byte)."""

    def body() -> None:
        files = evaluations.split_iu(reports, annotation, out_dir)
        if as_json:
            echo_json({f.split: {"path": str(f.path), "studies": f.studies} for f in files})
        else:
            for f in files:
                out.print(f"{f.split}: {f.studies} studies -> {f.path}")

    run_command(body)


def label(
    text: Annotated[str | None, typer.Argument(help="Report text (or use --file).")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="A text file holding one report.")] = None,
    labeler_dir: LabelerDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Label a report with the 14 CheXpert observations (positive / negative / uncertain / blank)."""

    def body() -> None:
        if (text is None) == (file is None):
            raise EvaluationError("give the report either as TEXT or with --file, not both")
        report = text if text is not None else _read(file)
        result = evaluations.label_report(report, labeler_dir=labeler_dir or Cli().settings().data_dir
                                          / "chexpert_labeler")  # fmt: skip
        if as_json:
            echo_json(result.as_dict())
            return
        table = Table(title="CheXpert observations")
        table.add_column("observation")
        table.add_column("label")
        table.add_column("evidence")
        for obs in OBSERVATIONS:
            table.add_row(obs, result.labels[obs], result.evidence.get(obs, ""))
        out.print(table)

    run_command(body)


def _read(path: Path | None) -> str:
    if path is None:
        raise EvaluationError("no --file given")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"{path}: cannot read as UTF-8 text ({type(exc).__name__})") from exc


@session_command
def eval_deid(
    cli: Cli,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="Presidio-format JSON (default SAGE_DATA_DIR/presidio_synthetic_pii/*_dev.json)."),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option("--mode", help="Also de-identify in this mode (tag|surrogate|shift) and count surviving values."),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Public data (default SAGE_DATA_DIR).")] = None,
    cv_by: Annotated[
        str | None,
        typer.Option(
            "--cv-by",
            help="template: also 5-fold cross-validation grouped by template_id (settings chosen on the other folds).",
        ),
    ] = None,
) -> None:
    """Evaluate de-identification: span P/R/F1 per entity (strict + relaxed) and eponym over-redaction.
    Policy: ``evaluate``."""

    def body() -> None:
        from sage_health.data.governance.deid_eval import rows

        with cli.session() as session:
            result = evaluations.evaluate_deid(session, file=file, mode=mode, data_dir=data_dir, cv_by=cv_by)
        if cli.as_json:
            echo_json(result.model_dump(mode="json"))
            return
        spans = result.spans
        table = Table(title=f"de-identification vs {Path(spans.file).name} ({spans.texts} texts)")
        table.caption = "s = strict, r = relaxed, Rt = strict type-aware recall (matching rule below)"
        for col in ("label", "n", "pred", "Ps", "Rs", "F1s", "Pr", "Rr", "F1r", "Rt", "target"):
            table.add_column(col, justify="left" if col == "label" else "right")

        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f}"

        for m in rows(spans):
            target = "-" if m.meets_target is None else ("met" if m.meets_target else "NOT met")
            table.add_row(
                m.label, str(m.support), str(m.predicted), fmt(m.precision_strict), fmt(m.recall_strict),
                fmt(m.f1_strict), fmt(m.precision_relaxed), fmt(m.recall_relaxed), fmt(m.f1_relaxed),
                fmt(m.recall_strict_typed), target,
            )  # fmt: skip
        out.print(table)
        out.print(f"matching rule: {spans.matching_rule}", highlight=False)
        if spans.missing_target_labels:
            out.print(f"no gold spans in this file for: {', '.join(spans.missing_target_labels)}")
        out.print(f"throughput: {spans.texts_per_second} texts/s")
        over = result.over_redaction
        if over is not None:
            out.print(
                f"eponym over-redaction: {over.eponym_occurrences_redacted}/{over.eponym_occurrences} occurrences "
                f"({over.eponym_redaction_rate:.1%}, target <= 5%: {'met' if over.meets_target else 'NOT met'}); "
                f"sentences with any redaction: eponym {over.eponym_sentences_with_any_redaction:.1%} "
                f"of {over.eponym_sentences}, other {over.other_sentences_with_any_redaction:.1%} "
                f"of {over.other_sentences}",
                highlight=False,
            )
        if result.mode_check is not None:
            out.print(
                f"{mode} mode: {int(result.mode_check['survived'])} of {int(result.mode_check['gold_values'])} gold "
                f"values survive verbatim ({result.mode_check['survival_rate']:.1%})"
            )
        cv = result.cross_validation
        if cv is not None:
            figures = ", ".join(
                f"{m.label} {fmt(m.recall_strict)}/{fmt(m.precision_strict)}"
                for m in rows(cv.spans)
                if m.label in ("NAME", "ADDRESS", "PHONE", "LOCATION", "ALL")
            )
            out.print(
                f"{cv.cv_by}-CV ({cv.folds} folds, strict R/P): {figures}; chosen per fold: "
                f"{', '.join(f.selected for f in cv.per_fold)}",
                highlight=False,
            )

    run_command(body)


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    eval_app.command("report")(eval_report)
    eval_app.command("qa")(eval_qa)
    eval_app.command("labeler")(eval_labeler)
    eval_app.command("deid")(eval_deid)
    eval_app.command("split-iu")(split_iu)
    app.command("label")(label)
