"""What the co-evolution loop runs on: its tasks, its options, and where its work files live.

Work files (``<store>/coevolve/<task>/cycle-NNN/``): the cycle's copy of the snapshot's training items in the
harness's train-file format (:data:`TRAIN_FILES`) and the evaluation reports of the fixed evaluation set
(``eval/``). The training copy holds (de-identified) patient data: erasure scrubs it
(:mod:`sage_health.apps.coevolve.erasure`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sage_health.apps.radiology.workflow import SIGNED_SOURCE
from sage_health.apps.radiology.workflow import TASK as RADIOLOGY_TASK
from sage_health.core.config import Settings

TAINTED_MARGIN = 0.02
RECURRENCE_ROUGE = 0.8
"""A model *repeats* a rejected draft when its output on the same input has ROUGE-L >= this against it."""

Progress = Callable[[str], None]


def quiet(message: str) -> None:
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


TRAIN_FILES = {"reports": "train.reports.jsonl", "qa": "train.pubmedqa.json"}
"""The file names of a cycle's training copy: reports.jsonl format (impression, findings) or PubMedQA JSON (qa)."""


def work_root(settings: Settings) -> Path:
    """Where every co-evolution cycle of the store keeps its work files."""
    return settings.store / "coevolve"


def cycle_dir(settings: Settings, task: str, cycle: int) -> Path:
    return work_root(settings) / task / f"cycle-{cycle:03d}"


def train_file_name(task: str) -> str:
    return TRAIN_FILES["qa" if task == "qa" else "reports"]
