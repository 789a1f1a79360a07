"""The planner: turns a task into an explicit plan of steps and picks the model for each model-using step.

Model choice (stated in the plan, so a reader of the trace knows why a model was used):

1. a model the request names (``--model NAME[@VERSION]``) — refused when that version is tainted;
2. otherwise the **production** version of the configured generator (``SAGE_GENERATOR``) in the registry, unless
   it is tainted (trained on data erased since; the note says so);
3. otherwise the built-in base version of that generator (registered on first use, stage ``candidate``), or the
   fallback when the generator is no built-in and production is tainted.

The writer's fallback is ``extractive@1`` (no LLM): if the chosen generator cannot load or fails, the writer
drafts from the quoted evidence instead and says so in the draft notes. The image model is the production
version of ``SAGE_IMAGE_MODEL``, else its newest candidate (tainted versions skipped), else none (the imaging agent
then abstains).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from sage_health.agents.base import AgentContext
from sage_health.core.errors import AgentError, RegistryError
from sage_health.models.catalog import BUILTIN_MODELS, resolve_model, serving_image_model
from sage_health.models.registry import ModelVersion

Task = Literal["radiology_report", "clinical_question"]
FALLBACK_MODEL = "extractive@1"


class PlannerInput(BaseModel):
    model_config = ConfigDict(frozen=True)

    task: Task
    model: str | None = None
    """A model reference the user asked for (``NAME[@VERSION]``); None lets the planner choose."""
    has_images: bool = False
    patient_id: str | None = None


class PlanStep(BaseModel):
    model_config = ConfigDict(frozen=True)

    step: str
    agent: str
    purpose: str
    model_ref: str | None = None
    fallback_ref: str | None = None


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True)

    task: Task
    steps: tuple[PlanStep, ...]
    model_ref: str
    """The generator the writer uses."""
    fallback_ref: str | None
    image_model_ref: str | None
    notes: tuple[str, ...] = ()
    """Why each model was chosen."""


class Planner:
    name: ClassVar[str] = "planner"
    input_model: ClassVar[type[BaseModel]] = PlannerInput
    output_model: ClassVar[type[BaseModel]] = Plan

    def _writer_model(self, payload: PlannerInput, ctx: AgentContext) -> tuple[ModelVersion, str]:
        registry = ctx.registry
        if payload.model:
            try:
                model = resolve_model(registry, payload.model)
            except RegistryError as exc:
                raise AgentError(f"planner: {exc}") from exc
            taint = registry.taint(model)
            if taint is not None:
                raise AgentError(
                    f"planner: the requested model {model.ref} is tainted ({taint}) and no longer serves; ask for "
                    "another version or leave --model out"
                )
            return model, f"writer model {model.ref}: requested ({model.stage})"
        name = ctx.settings.generator
        production = registry.production(name)
        tainted_note = ""
        if production is not None:
            taint = registry.taint(production)
            if taint is None:
                return production, f"writer model {production.ref}: production version of '{name}'"
            tainted_note = f"production version {production.ref} of '{name}' is tainted ({taint}), not used"
        builtin = BUILTIN_MODELS.get(name)
        try:
            if tainted_note:
                ref = f"{name}@{builtin.version}" if builtin is not None else FALLBACK_MODEL
                model = resolve_model(registry, ref)
            else:
                model = resolve_model(registry, name)
        except RegistryError as exc:
            raise AgentError(
                f"planner: no production version of '{name}' and no such built-in model ({exc}); set SAGE_GENERATOR "
                "or pass --model"
            ) from exc
        if tainted_note:
            return model, f"writer model {model.ref}: {tainted_note}; using {model.stage} {model.ref}"
        return model, f"writer model {model.ref}: no production version of '{name}', using {model.stage} {model.ref}"

    def _image_model(self, ctx: AgentContext) -> tuple[str | None, str]:
        model, note = serving_image_model(ctx.registry, ctx.settings.image_model)
        return (model.ref if model is not None else None), note

    def run(self, payload: PlannerInput, ctx: AgentContext) -> Plan:
        writer, writer_note = self._writer_model(payload, ctx)
        fallback: str | None = None
        if writer.backend != "extractive":
            fallback = resolve_model(ctx.registry, FALLBACK_MODEL).ref
        notes = [writer_note]
        if fallback:
            notes.append(f"fallback {fallback}: used if {writer.ref} cannot load or fails (no LLM, quotes evidence)")
        if payload.task == "radiology_report":
            image_ref, image_note = self._image_model(ctx)
            notes.append(image_note if payload.has_images else "no images in the request: the imaging agent abstains")
            steps: tuple[PlanStep, ...] = (
                PlanStep(step="plan", agent="planner", purpose="choose steps and models"),
                PlanStep(
                    step="retrieve",
                    agent="retriever",
                    purpose="similar prior reports (hybrid search), the patient's history, knowledge passages",
                ),
                PlanStep(step="screen", agent="safety", purpose="withhold retrieved text that carries instructions"),
                PlanStep(
                    step="imaging",
                    agent="imaging",
                    purpose="image quality checks and confident image findings (or abstain)",
                    model_ref=image_ref if payload.has_images else None,
                ),
                PlanStep(
                    step="write",
                    agent="writer",
                    purpose="draft FINDINGS and IMPRESSION, each sentence citing its evidence",
                    model_ref=writer.ref,
                    fallback_ref=fallback,
                ),
                PlanStep(step="verify", agent="verifier", purpose="remove unsupported sentences, flag contradictions"),
                PlanStep(
                    step="safety", agent="safety", purpose="block PHI leaks, injected instructions, policy breaks"
                ),
                PlanStep(step="review", agent="human", purpose="a radiologist edits and signs, or rejects"),
            )
            return Plan(
                task=payload.task,
                steps=steps,
                model_ref=writer.ref,
                fallback_ref=fallback,
                image_model_ref=image_ref if payload.has_images else None,
                notes=tuple(notes),
            )
        steps = (
            PlanStep(step="plan", agent="planner", purpose="choose steps and models"),
            PlanStep(step="retrieve", agent="retriever", purpose="knowledge passages and the patient's history"),
            PlanStep(step="screen", agent="safety", purpose="withhold retrieved text that carries instructions"),
            PlanStep(
                step="write",
                agent="writer",
                purpose="answer citing evidence ids",
                model_ref=writer.ref,
                fallback_ref=fallback,
            ),
            PlanStep(step="verify", agent="verifier", purpose="remove unsupported sentences"),
            PlanStep(step="safety", agent="safety", purpose="block PHI leaks, injected instructions, policy breaks"),
        )
        return Plan(
            task=payload.task,
            steps=steps,
            model_ref=writer.ref,
            fallback_ref=fallback,
            image_model_ref=None,
            notes=tuple(notes),
        )
