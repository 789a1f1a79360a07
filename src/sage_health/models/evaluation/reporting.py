"""Evaluation runs as data, and the report files written from them.

An :class:`EvalRun` holds everything needed to reproduce and audit one number: the dataset files with their
sha256, split, seed, configuration, model id and version, creation time (UTC), package and Python versions, the
metrics (a :data:`~sage_health.models.evaluation.metrics.MetricTree`) and the per-item outputs.

:func:`write_report` writes ``<run_id>.json`` (the run itself; it validates back into an :class:`EvalRun`),
``<run_id>.md`` (markdown tables), ``<run_id>.html`` (self-contained: every text escaped, plots embedded as
base64 PNG) and one PNG per plot. Each file is written to a temporary file in the output folder and moved into
place with ``os.replace``, so a reader never sees half a report.

PHI: per-item outputs should hold record ids and model text only -- what goes in is the caller's decision. They
are stored in the JSON file only (the markdown and HTML show counts, never item text) and are never logged.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import platform
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from sage_health import __version__
from sage_health.core.errors import EvaluationError
from sage_health.core.hashing import sha256_file
from sage_health.models.evaluation.metrics import MetricTree, MetricValue

_RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_SUMMARY_SECTION = "summary"
_MISSING = "n/a"

# ---------------------------------------------------------------------- the run


class DatasetFile(BaseModel):
    """One input file of an evaluation, identified by its path and the sha256 of its bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @classmethod
    def from_path(cls, path: Path) -> DatasetFile:
        """Hash a file now (resolved path)."""
        if not path.is_file():
            raise EvaluationError(f"dataset file {path} does not exist: pass an existing file")
        return cls(path=str(path.resolve()), sha256=sha256_file(path))


class DatasetInfo(BaseModel):
    """The dataset an evaluation ran on: a name and the exact files."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    files: tuple[DatasetFile, ...] = Field(min_length=1)


class ItemOutput(BaseModel):
    """One evaluated item: its id, the model's output, the reference and optional per-item scores."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    id: str
    prediction: str
    reference: str
    scores: dict[str, float] = Field(default_factory=dict)


class EvalRun(BaseModel):
    """One evaluation run: inputs, settings, model, metrics and per-item outputs."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    run_id: str = Field(pattern=_RUN_ID_PATTERN)
    """Names the report files: letters, digits, ``.``, ``_``, ``-``; starts with a letter or digit."""
    task: str = Field(min_length=1)
    """E.g. ``report_generation``, ``medqa``, ``pubmedqa``."""
    dataset: DatasetInfo
    split: str = Field(min_length=1)
    seed: int
    config: dict[str, JsonValue] = Field(default_factory=dict)
    model_id: str = Field(min_length=1)
    model_version: str = Field(min_length=1)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    """Timezone-aware; stored in UTC."""
    metrics: MetricTree
    items: tuple[ItemOutput, ...] = ()
    package_version: str = __version__
    python_version: str = Field(default_factory=platform.python_version)
    git_commit: str | None = None

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("created_at must be timezone-aware (use datetime.now(UTC))")
        return value.astimezone(UTC)

    @property
    def model_label(self) -> str:
        """``model_id@model_version``."""
        return f"{self.model_id}@{self.model_version}"


def metric_value(metrics: MetricTree, key: str) -> MetricValue | None:
    """The value at a dotted key (``"text.bleu_4"``, ``"ce_per_observation.Edema.f1"``), None when absent."""
    node: MetricValue | dict[str, MetricValue] | dict[str, MetricValue | dict[str, MetricValue]] | MetricTree
    node = metrics
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return None if isinstance(node, dict) else node


# ---------------------------------------------------------------------- formatting


def format_metric(value: MetricValue) -> str:
    """Counts (``int``) without decimals, scores (``float``) with four: ``3``, ``0.6000``."""
    if isinstance(value, int):
        return str(int(value))
    return f"{value:.4f}"


@dataclass(frozen=True)
class _Table:
    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def _tables(metrics: MetricTree) -> list[_Table]:
    """Metric sections as tables: flat values as (metric, value) rows, nested ones as row x column grids."""
    tables: list[_Table] = []
    summary = [(key, format_metric(value)) for key, value in metrics.items() if not isinstance(value, dict)]
    if summary:
        tables.append(_Table(_SUMMARY_SECTION, ("metric", "value"), tuple(summary)))
    for section, content in metrics.items():
        if not isinstance(content, dict):
            continue
        flat = [(key, format_metric(value)) for key, value in content.items() if not isinstance(value, dict)]
        if flat:
            tables.append(_Table(section, ("metric", "value"), tuple(flat)))
        nested = {key: value for key, value in content.items() if isinstance(value, dict)}
        if nested:
            columns: list[str] = []
            for row in nested.values():
                columns.extend(column for column in row if column not in columns)
            rows = tuple(
                (key, *(format_metric(row[c]) if c in row else "" for c in columns)) for key, row in nested.items()
            )
            title = section if not flat else f"{section} (per row)"
            tables.append(_Table(title, ("", *columns), rows))
    return tables


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: bool = True) -> list[str]:
    """A markdown table; ``numeric`` right-aligns every column but the first."""
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:" if numeric else "---"] * (len(header) - 1)) + "|")
    lines.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows)
    return lines


def _run_fields(run: EvalRun) -> list[tuple[str, str]]:
    return [
        ("run id", run.run_id),
        ("task", run.task),
        ("model", run.model_label),
        ("dataset", run.dataset.name),
        ("split", run.split),
        ("seed", str(run.seed)),
        ("created (UTC)", run.created_at.isoformat()),
        ("items", str(len(run.items))),
        ("sage-health", run.package_version),
        ("python", run.python_version),
        ("git commit", run.git_commit or _MISSING),
    ]


def _config_json(run: EvalRun) -> str:
    return json.dumps(run.config, indent=2, sort_keys=True, ensure_ascii=False)


def render_markdown(run: EvalRun, plot_files: Sequence[tuple[str, str]] = ()) -> str:
    """The markdown report: run fields, dataset files, config, one table per metric section, plot links.

    ``plot_files`` are ``(title, file name)`` pairs of PNGs written next to the markdown file.
    """
    lines = [f"# Evaluation report: {_md_cell(run.run_id)}", ""]
    lines += [*_md_table(("field", "value"), _run_fields(run), numeric=False), ""]
    lines += ["## Dataset files", ""]
    lines += [*_md_table(("path", "sha256"), [(f.path, f.sha256) for f in run.dataset.files], numeric=False), ""]
    config = _config_json(run)
    fence = "```"
    while fence in config:
        fence += "`"
    lines += ["## Configuration", "", f"{fence}json", config, fence, ""]
    lines += ["## Metrics", ""]
    for table in _tables(run.metrics):
        lines += [f"### {_md_cell(table.title)}", "", *_md_table(table.header, table.rows), ""]
    if plot_files:
        lines += ["## Plots", ""]
        for title, name in plot_files:
            alt = title.replace("[", "(").replace("]", ")")
            lines += [f"![{alt}]({name})", ""]
    return "\n".join(lines)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
    "th,td{border:1px solid #bbb;padding:0.2em 0.6em;text-align:right}"
    "th:first-child,td:first-child{text-align:left}"
    "pre{background:#f4f4f4;padding:0.6em}img{max-width:100%}"
)


def render_html(run: EvalRun, plots: Sequence[tuple[str, bytes]] = ()) -> str:
    """The self-contained HTML report: every text through ``html.escape``, ``plots`` (title, PNG bytes) inline."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Evaluation report: {esc(run.run_id)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Evaluation report: {esc(run.run_id)}</h1>",
        _html_table(("field", "value"), _run_fields(run)),
        "<h2>Dataset files</h2>",
        _html_table(("path", "sha256"), [(f.path, f.sha256) for f in run.dataset.files]),
        "<h2>Configuration</h2>",
        f"<pre>{esc(_config_json(run))}</pre>",
        "<h2>Metrics</h2>",
    ]
    for table in _tables(run.metrics):
        parts += [f"<h3>{esc(table.title)}</h3>", _html_table(table.header, table.rows)]
    if plots:
        parts.append("<h2>Plots</h2>")
        for title, png in plots:
            data = base64.b64encode(png).decode("ascii")
            parts.append(f'<figure><img alt="{esc(title)}" src="data:image/png;base64,{data}">')
            parts.append(f"<figcaption>{esc(title)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------- plots


@dataclass(frozen=True)
class _Plot:
    slug: str
    title: str
    labels: tuple[str, ...]
    values: tuple[MetricValue, ...]
    ylabel: str


def _plot_specs(run: EvalRun) -> list[_Plot]:
    """One F1 bar chart per table section with an ``f1`` column (per observation, per class); else the scores."""
    plots: list[_Plot] = []
    for section, content in run.metrics.items():
        if not isinstance(content, dict):
            continue
        rows = {key: row for key, row in content.items() if isinstance(row, dict) and "f1" in row}
        if rows:
            plots.append(
                _Plot(
                    slug=f"{section}_f1",
                    title=f"{run.model_label}: F1 by {section}",
                    labels=tuple(rows),
                    values=tuple(row["f1"] for row in rows.values()),
                    ylabel="F1",
                )
            )
    if plots:
        return plots
    flat: dict[str, MetricValue] = {}
    for section, content in run.metrics.items():
        if isinstance(content, dict):
            flat.update({f"{section}.{key}": v for key, v in content.items() if not isinstance(v, dict)})
        else:
            flat[section] = content
    scores = {key: value for key, value in flat.items() if not isinstance(value, int)}
    flat = scores or flat  # counts (n_items ...) would dwarf the scores; plot them only when there is nothing else
    if not flat:
        raise EvaluationError(f"run {run.run_id} has no metric values to plot: compute metrics before reporting")
    return [_Plot("metrics", f"{run.model_label}: metrics", tuple(flat), tuple(flat.values()), "value")]


def _render_png(plot: _Plot) -> bytes:
    """Draw a bar chart with matplotlib's Agg canvas (no pyplot, no global backend state) and return PNG bytes."""
    try:
        # imported here: matplotlib is heavy and only report writing needs it
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise EvaluationError(
            "matplotlib is needed to draw report plots: pip install 'sage-health[eval]' (or matplotlib)"
        ) from exc
    width = max(6.0, 0.5 * len(plot.labels) + 2.0)
    figure = Figure(figsize=(width, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = list(range(len(plot.labels)))
    bars = axes.bar(positions, plot.values, color="#3b6ea5")
    axes.bar_label(bars, labels=[format_metric(v) for v in plot.values], fontsize=7)
    axes.set_xticks(positions, plot.labels, rotation=45, ha="right", fontsize=8)
    axes.set_ylabel(plot.ylabel)
    if all(0.0 <= v <= 1.0 for v in plot.values):
        axes.set_ylim(0.0, 1.05)
    axes.set_title(plot.title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


# ---------------------------------------------------------------------- files


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file in ``path``'s folder, fsync it, then ``os.replace`` it into place.

    The file keeps ``tempfile.mkstemp``'s mode 0600 (owner only): reports may hold model text about patients.
    """
    tmp: Path | None = None
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        tmp = Path(name)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise EvaluationError(f"could not write {path}: {exc.strerror}; check that the folder is writable") from exc


@dataclass(frozen=True)
class ReportFiles:
    """The files one :func:`write_report` call wrote."""

    json_path: Path
    markdown_path: Path
    html_path: Path
    plot_paths: tuple[Path, ...]


def write_report(run: EvalRun, out_dir: Path) -> ReportFiles:
    """Write the JSON, markdown, HTML and PNG files of ``run`` into ``out_dir`` (created when missing).

    Files: ``<run_id>.json`` (``EvalRun.model_validate_json`` reads it back), ``<run_id>.md``, ``<run_id>.html``
    and ``<run_id>_<section>_f1.png`` per section with an ``f1`` column (``<run_id>_metrics.png`` when none).
    Existing files of the same run id are replaced.
    """
    if not run.metrics:
        raise EvaluationError(f"run {run.run_id} has no metrics: compute metrics before writing its report")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvaluationError(f"could not create report folder {out_dir}: {exc.strerror}") from exc
    rendered = [(spec, _render_png(spec)) for spec in _plot_specs(run)]
    plot_paths: list[Path] = []
    for spec, png in rendered:
        path = out_dir / f"{run.run_id}_{_slug(spec.slug)}.png"
        _atomic_write(path, png)
        plot_paths.append(path)
    json_path = out_dir / f"{run.run_id}.json"
    markdown_path = out_dir / f"{run.run_id}.md"
    html_path = out_dir / f"{run.run_id}.html"
    _atomic_write(json_path, (run.model_dump_json(indent=2) + "\n").encode("utf-8"))
    plot_links = [(spec.title, path.name) for (spec, _), path in zip(rendered, plot_paths, strict=True)]
    _atomic_write(markdown_path, render_markdown(run, plot_links).encode("utf-8"))
    _atomic_write(html_path, render_html(run, [(spec.title, png) for spec, png in rendered]).encode("utf-8"))
    return ReportFiles(
        json_path=json_path, markdown_path=markdown_path, html_path=html_path, plot_paths=tuple(plot_paths)
    )


def _slug(text: str) -> str:
    """A file-name-safe form of a section name."""
    slug = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in text)
    return slug or "plot"


def comparison_table(runs: Sequence[EvalRun], metric_keys: Sequence[str]) -> str:
    """A markdown table with one row per run (``model@version``) and one column per dotted metric key.

    Keys address the metric tree (``"text.bleu_4"``, ``"ce.micro_f1"``, ``"ce_per_observation.Edema.f1"``);
    a run without a key shows ``n/a``.
    """
    if not runs:
        raise EvaluationError("runs is empty: pass at least one evaluation run to compare")
    if not metric_keys:
        raise EvaluationError("metric_keys is empty: pass the dotted metric keys to compare, e.g. 'text.bleu_4'")
    rows = []
    for run in runs:
        values = [metric_value(run.metrics, key) for key in metric_keys]
        rows.append((run.model_label, *(_MISSING if v is None else format_metric(v) for v in values)))
    return "\n".join(_md_table(("model", *metric_keys), rows)) + "\n"
