"""A small explicit runner: executes a workflow's steps in order and persists every step (see :mod:`.trace`).

Why not LangGraph: the workflow is a fixed sequence with one human checkpoint at the end; what matters is the
trace schema (ours), crash-resume from the last finished step, and pausing for a radiologist — a loop over
named steps with one transaction per step gives all three without a graph runtime, and the trace rows stay
the contract whether or not a graph library is used later.

Semantics:

- ``start`` creates the run row (status ``running``) and executes steps; ``resume`` rebuilds the state from the
  persisted outputs of finished steps and continues with the first unfinished one — the same code path, so a
  run killed at any point (even mid-step) resumes correctly; a step that had not finished is re-run.
- A step raising a :class:`~sage_health.core.errors.SageError` is recorded as an ``error`` step, the run
  becomes ``failed`` with the message, and :class:`~sage_health.core.errors.AgentError` is raised naming the
  run and how to resume it (a failed run can be resumed: the failed step is retried).
- After the last step the workflow's ``finish`` decides the status: ``paused`` (waiting for a human),
  ``blocked`` (the safety agent refused the draft) or ``completed``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from pydantic import BaseModel

from sage_health.agents.base import Agent, AgentContext
from sage_health.agents.trace import RunRecord, RunStatus, TraceStore, now_iso
from sage_health.core.errors import AgentError, RunStateError, SageError

_M = TypeVar("_M", bound=BaseModel)


@dataclass
class RunState:
    """What a run knows: its request and the outputs of the steps finished so far."""

    run_id: str
    request: BaseModel
    outputs: dict[str, BaseModel] = field(default_factory=dict)

    def output(self, step: str, kind: type[_M]) -> _M:
        value = self.outputs.get(step)
        if not isinstance(value, kind):
            raise AgentError(f"run {self.run_id}: step '{step}' has no {kind.__name__} output yet")
        return value


def _no_ids(_: BaseModel) -> Sequence[str]:
    return ()


def _model_ref(output: BaseModel) -> str | None:
    ref = getattr(output, "model_ref", None)
    return ref if isinstance(ref, str) else None


@dataclass(frozen=True)
class WorkflowStep:
    name: str
    agent: Agent[Any, Any]
    output_model: type[BaseModel]
    build_input: Callable[[RunState], BaseModel]
    evidence_of: Callable[[BaseModel], Sequence[str]] = _no_ids
    model_of: Callable[[BaseModel], str | None] = _model_ref


@dataclass(frozen=True)
class Workflow:
    task: str
    request_model: type[BaseModel]
    steps: tuple[WorkflowStep, ...]
    finish: Callable[[RunState], tuple[RunStatus, dict[str, Any]]]
    plan_step: str | None = None
    """The step whose output is the plan (stored on the run row too)."""


def new_run_id(task: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{task.replace('_', '-')}-{stamp}-{uuid.uuid4().hex[:6]}"


class Runner:
    def __init__(self, ctx: AgentContext, traces: TraceStore | None = None) -> None:
        self._ctx = ctx
        self._traces = traces or TraceStore(ctx.settings.db_path)

    @property
    def traces(self) -> TraceStore:
        return self._traces

    def start(
        self,
        workflow: Workflow,
        request: BaseModel,
        *,
        run_id: str | None = None,
        patient_id: str | None = None,
        study_id: str | None = None,
    ) -> RunRecord:
        run_id = run_id or new_run_id(workflow.task)
        self._traces.create_run(
            run_id, workflow.task, request.model_dump(mode="json"), patient_id=patient_id, study_id=study_id
        )
        return self._execute(workflow, RunState(run_id=run_id, request=request))

    def resume(self, workflow: Workflow, run_id: str) -> RunRecord:
        run = self._traces.get_run(run_id)
        if run.task != workflow.task:
            raise RunStateError(f"run {run_id} is a {run.task} run, not {workflow.task}")
        if run.status not in ("running", "failed"):
            raise RunStateError(
                f"run {run_id} is {run.status}; only running (interrupted) or failed runs resume"
                + (f" — review it with `sage-health radiology review {run_id}`" if run.status == "paused" else "")
            )
        state = RunState(run_id=run_id, request=workflow.request_model.model_validate(run.request))
        by_name = {s.name: s for s in workflow.steps}
        for rec in self._traces.steps(run_id):
            step = by_name.get(rec.step)
            if rec.status == "ok" and step is not None and rec.output is not None:
                state.outputs[rec.step] = step.output_model.model_validate(rec.output)
        return self._execute(workflow, state)

    def _execute(self, workflow: Workflow, state: RunState) -> RunRecord:
        for step in workflow.steps:
            if step.name in state.outputs:
                continue
            started = now_iso()
            t0 = time.perf_counter()
            payload: BaseModel | None = None
            try:
                payload = step.build_input(state)
                output = cast(BaseModel, step.agent.run(payload, self._ctx))
            except SageError as exc:
                latency = (time.perf_counter() - t0) * 1000
                message = f"{type(exc).__name__}: {exc}"
                with self._traces.transaction() as conn:
                    self._traces.add_step(
                        run_id=state.run_id,
                        step=step.name,
                        agent=step.agent.name,
                        status="error",
                        input=payload.model_dump(mode="json") if payload is not None else {},
                        output=None,
                        evidence_ids=(),
                        model_ref=None,
                        latency_ms=latency,
                        error=message,
                        started_at=started,
                        conn=conn,
                    )
                    self._traces.set_status(state.run_id, "failed", error=f"step {step.name}: {message}", conn=conn)
                raise AgentError(
                    f"run {state.run_id}: step '{step.name}' ({step.agent.name}) failed: {exc}. Fix the cause and "
                    f"resume with `sage-health runs resume {state.run_id}`"
                ) from exc
            latency = (time.perf_counter() - t0) * 1000
            dumped = output.model_dump(mode="json")
            with self._traces.transaction() as conn:
                self._traces.add_step(
                    run_id=state.run_id,
                    step=step.name,
                    agent=step.agent.name,
                    status="ok",
                    input=payload.model_dump(mode="json"),
                    output=dumped,
                    evidence_ids=tuple(step.evidence_of(output)),
                    model_ref=step.model_of(output),
                    latency_ms=latency,
                    error=None,
                    started_at=started,
                    plan=dumped if step.name == workflow.plan_step else None,
                    conn=conn,
                )
                self._traces.set_status(state.run_id, "running", conn=conn)
            state.outputs[step.name] = output
        status, result = workflow.finish(state)
        self._traces.set_status(state.run_id, status, result=result)
        return self._traces.get_run(state.run_id)
