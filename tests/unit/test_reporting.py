"""Evaluation runs and their report files: JSON that validates back, markdown tables with the figures, a
self-contained escaped HTML page with the plot inline, real PNG files, atomic writes, comparison tables."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pydantic
import pytest
from PIL import Image

from sage_health import __version__
from sage_health.core.errors import EvaluationError
from sage_health.models.evaluation.metrics import ce_metrics, qa_metrics, text_metrics
from sage_health.models.evaluation.reporting import (
    DatasetFile,
    DatasetInfo,
    EvalRun,
    ItemOutput,
    comparison_table,
    format_metric,
    metric_value,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
OBSERVATIONS = [
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
    "No Finding",
]
COMMON_FIVE = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
CREATED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def dataset(tmp_path: Path) -> DatasetInfo:
    path = tmp_path / "data" / "test.jsonl"
    path.parent.mkdir()
    path.write_bytes(b'{"id": "r1"}\n')
    return DatasetInfo(name="iu_xray", files=(DatasetFile.from_path(path),))


def _report_run(dataset: DatasetInfo, **overrides: object) -> EvalRun:
    generated = ["Heart size is normal. Lungs are clear.", "Cardiomegaly. Small pleural effusion."]
    references = ["The heart size is normal. The lungs are clear.", "Cardiomegaly with pleural effusion."]
    ce = ce_metrics(
        [{"No Finding": "positive"}, {"Cardiomegaly": "positive", "Pleural Effusion": "positive"}],
        [{"No Finding": "positive"}, {"Cardiomegaly": "positive", "Edema": "uncertain"}],
        OBSERVATIONS,
        COMMON_FIVE,
    )
    fields: dict[str, object] = {
        "run_id": "rrg-2025-01-02",
        "task": "report_generation",
        "dataset": dataset,
        "split": "test",
        "seed": 13,
        "config": {"max_new_tokens": 128, "prompt": "findings", "beams": [1, 2]},
        "model_id": "smollm2-135m",
        "model_version": "3",
        "created_at": CREATED,
        "metrics": {**text_metrics(generated, references).as_metrics(), **ce.as_metrics()},
        "items": [
            {"id": "r1", "prediction": generated[0], "reference": references[0], "scores": {"rouge_l": 0.8}},
            {"id": "r2", "prediction": generated[1], "reference": references[1]},
        ],
    }
    fields.update(overrides)
    return EvalRun.model_validate(fields)


def test_dataset_file_hashes_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"abc")
    ref = DatasetFile.from_path(path)
    assert ref.sha256 == hashlib.sha256(b"abc").hexdigest()
    assert ref.path == str(path.resolve())
    with pytest.raises(EvaluationError, match="does not exist"):
        DatasetFile.from_path(tmp_path / "missing.txt")


def test_eval_run_fields_and_validation(dataset: DatasetInfo) -> None:
    run = _report_run(dataset)
    assert run.package_version == __version__
    assert run.model_label == "smollm2-135m@3"
    assert run.items[0] == ItemOutput(
        id="r1", prediction=run.items[0].prediction, reference=run.items[0].reference, scores={"rouge_l": 0.8}
    )
    # counts stay ints, scores floats
    assert metric_value(run.metrics, "ce_per_observation.Cardiomegaly.tp") == 1
    assert isinstance(metric_value(run.metrics, "ce_per_observation.Cardiomegaly.tp"), int)
    assert isinstance(metric_value(run.metrics, "ce.micro_f1"), float)
    assert metric_value(run.metrics, "ce_per_observation.Cardiomegaly") is None
    assert metric_value(run.metrics, "nope.f1") is None
    # created_at: converted to UTC; naive times refused
    shifted = _report_run(dataset, created_at=datetime(2025, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2))))
    assert shifted.created_at == CREATED
    assert shifted.created_at.utcoffset() == timedelta(0)
    with pytest.raises(pydantic.ValidationError, match="timezone-aware"):
        _report_run(dataset, created_at=datetime(2025, 1, 2))
    with pytest.raises(pydantic.ValidationError, match="finite"):
        _report_run(dataset, metrics={"qa": {"accuracy": float("nan")}})
    with pytest.raises(pydantic.ValidationError, match="run_id"):
        _report_run(dataset, run_id="../escape")
    with pytest.raises(pydantic.ValidationError, match="sha256"):
        DatasetFile(path="x", sha256="not-a-hash")


def test_write_report_files(dataset: DatasetInfo, tmp_path: Path) -> None:
    run = _report_run(dataset)
    out = tmp_path / "reports" / "nested"
    files = write_report(run, out)
    assert files.json_path == out / "rrg-2025-01-02.json"
    assert files.markdown_path == out / "rrg-2025-01-02.md"
    assert files.html_path == out / "rrg-2025-01-02.html"
    assert files.plot_paths == (out / "rrg-2025-01-02_ce_per_observation_f1.png",)
    # no temporary files left behind
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in (files.json_path, files.markdown_path, files.html_path, *files.plot_paths)
    )

    # JSON: valid, and validates back into the same run
    raw = json.loads(files.json_path.read_text(encoding="utf-8"))
    assert raw["seed"] == 13
    assert raw["created_at"].startswith("2025-01-02T03:04:05")
    assert EvalRun.model_validate_json(files.json_path.read_text(encoding="utf-8")) == run

    # PNG: a real image of the expected size (14 observations: 9 x 4.5 inches at 100 dpi)
    png = files.plot_paths[0].read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        assert image.size == (900, 450)

    # markdown: the run fields and the metric values in tables
    md = files.markdown_path.read_text(encoding="utf-8")
    ce = run.metrics["ce"]
    text = run.metrics["text"]
    assert isinstance(ce, dict)
    assert isinstance(text, dict)
    assert "| model | smollm2-135m@3 |" in md
    assert "| seed | 13 |" in md
    assert f"| {dataset.files[0].path} | {dataset.files[0].sha256} |" in md
    assert f"| bleu_4 | {text['bleu_4']:.4f} |" in md
    assert f"| micro_f1 | {ce['micro_f1']:.4f} |" in md
    # CE: generated positives No Finding, Cardiomegaly, Pleural Effusion; reference No Finding, Cardiomegaly
    assert ce["micro_f1"] == pytest.approx(0.8)
    assert "| micro_f1 | 0.8000 |" in md
    assert "|  | precision | recall | f1 | tp | fp | fn | tn |" in md
    assert "| Cardiomegaly | 1.0000 | 1.0000 | 1.0000 | 1 | 0 | 0 | 1 |" in md
    assert "| Pleural Effusion | 0.0000 | 0.0000 | 0.0000 | 0 | 1 | 0 | 1 |" in md
    assert '"max_new_tokens": 128' in md
    assert "](rrg-2025-01-02_ce_per_observation_f1.png)" in md

    # HTML: self-contained, the same PNG inline as base64
    page = files.html_path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    match = re.search(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)
    assert match is not None
    assert base64.b64decode(match.group(1)) == png
    assert "<td>micro_f1</td><td>0.8000</td>" in page
    assert "http://" not in page
    assert "https://" not in page

    # per-item text goes to the JSON only, never into the markdown or HTML
    for item in run.items:
        assert item.prediction not in md
        assert item.prediction not in page


def test_html_escapes_every_text(dataset: DatasetInfo, tmp_path: Path) -> None:
    run = _report_run(
        dataset,
        model_id="<script>alert(1)</script>",
        metrics={"qa": {"acc<b>": 0.5}, "rows": {"A&B": {"f1": 0.25}}},
        config={"note": "</pre><script>x</script>"},
    )
    files = write_report(run, tmp_path)
    page = files.html_path.read_text(encoding="utf-8")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;@3" in page
    assert "<td>acc&lt;b&gt;</td><td>0.5000</td>" in page
    assert "<td>A&amp;B</td><td>0.2500</td>" in page
    assert "&lt;/pre&gt;&lt;script&gt;x&lt;/script&gt;" in page


def test_qa_report_plots_per_class_f1_and_shows_the_confusion_matrix(dataset: DatasetInfo, tmp_path: Path) -> None:
    qa = qa_metrics(["A", "B", "B", "C"], ["A", "A", "B", "C"], ["A", "B", "C", "D"])
    run = _report_run(dataset, run_id="medqa-1", task="medqa", metrics=qa.as_metrics(), items=[])
    files = write_report(run, tmp_path)
    assert [p.name for p in files.plot_paths] == ["medqa-1_qa_per_class_f1.png"]
    assert files.plot_paths[0].read_bytes().startswith(PNG_SIGNATURE)
    md = files.markdown_path.read_text(encoding="utf-8")
    assert "| accuracy | 0.7500 |" in md
    assert "### qa_confusion" in md
    assert "|  | A | B | C | D |" in md
    assert "| A | 1 | 1 | 0 | 0 |" in md
    assert "| items | 0 |" in md


def test_flat_metrics_get_a_summary_plot(dataset: DatasetInfo, tmp_path: Path) -> None:
    run = _report_run(dataset, metrics={"text": {"bleu_4": 0.12, "rouge_l": 0.3, "n_items": 40}, "score": 0.5})
    files = write_report(run, tmp_path)
    assert [p.name for p in files.plot_paths] == ["rrg-2025-01-02_metrics.png"]
    md = files.markdown_path.read_text(encoding="utf-8")
    assert "### summary" in md
    assert "| score | 0.5000 |" in md
    assert "| n_items | 40 |" in md


def test_write_report_errors_leave_nothing_behind(dataset: DatasetInfo, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(EvaluationError, match="has no metrics"):
        write_report(_report_run(dataset, metrics={}), out)
    assert not out.exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(EvaluationError, match="could not create report folder"):
        write_report(_report_run(dataset), blocker / "sub")


def test_rewriting_a_report_replaces_the_files(dataset: DatasetInfo, tmp_path: Path) -> None:
    write_report(_report_run(dataset, seed=1), tmp_path)
    files = write_report(_report_run(dataset, seed=2), tmp_path)
    assert EvalRun.model_validate_json(files.json_path.read_text(encoding="utf-8")).seed == 2
    assert len(list(tmp_path.glob("rrg-2025-01-02*"))) == 4


def test_comparison_table(dataset: DatasetInfo) -> None:
    a = _report_run(dataset, metrics={"text": {"bleu_4": 0.1234567}, "ce": {"micro_f1": 0.3}})
    b = _report_run(
        dataset, model_id="gpt|x", model_version="2", metrics={"text": {"bleu_4": 0.2}, "rows": {"Edema": {"f1": 1.0}}}
    )
    table = comparison_table([a, b], ["text.bleu_4", "ce.micro_f1", "rows.Edema.f1"])
    assert table == (
        "| model | text.bleu_4 | ce.micro_f1 | rows.Edema.f1 |\n"
        "|---|---:|---:|---:|\n"
        "| smollm2-135m@3 | 0.1235 | 0.3000 | n/a |\n"
        "| gpt\\|x@2 | 0.2000 | n/a | 1.0000 |\n"
    )
    with pytest.raises(EvaluationError, match="runs is empty"):
        comparison_table([], ["text.bleu_4"])
    with pytest.raises(EvaluationError, match="metric_keys is empty"):
        comparison_table([a], [])


def test_format_metric() -> None:
    assert format_metric(3) == "3"
    assert format_metric(3.0) == "3.0000"
    assert format_metric(0.123456) == "0.1235"
