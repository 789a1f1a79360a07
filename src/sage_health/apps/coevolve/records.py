"""The co-evolution loop's own tables (``coevolve_state``: the fixed settings of each task's loop;
``coevolve_cycles``: one row per finished cycle) and the plot of the cycles' primary metric."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sage_health.apps.coevolve.spec import LoopOptions, TaskSpec
from sage_health.core.config import Settings
from sage_health.core.errors import CoevolutionError
from sage_health.core.hashing import sha256_file
from sage_health.data.sqlite_tables import connect, immediate

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


def fix_state(settings: Settings, opts: LoopOptions, spec: TaskSpec, actor: str, *, write: bool) -> LoopState:
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
            created_at=now(),
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


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
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


def record_cycle(settings: Settings, rec: CycleRecord) -> None:
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
