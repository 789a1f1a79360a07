"""The imaging agent: quality-checks a study's images and reports what the chest X-ray model is confident about.

Steps:

1. No images -> abstain ("no images in the study"). An image that cannot be decoded is a bad request:
   :class:`~sage_health.core.errors.StudyInputError` naming the file and the reason (nothing is predicted).
2. Quality checks (:func:`~sage_health.models.imaging.quality.check_image`); no usable image -> abstain, with each
   image's blocking problems.
3. The model: the production version of ``Settings.image_model``, else its newest candidate (said in
   ``model_note``), else abstain ("no image model registered; ...").
4. Only observations the model may speak for are reported: those whose held-out AUROC (the model's newest
   ``image-heldout:*`` evaluation in the registry) is at least the gate — ``ImagingAgent(min_heldout_auroc=x)``,
   else ``Settings.image_min_auroc`` (default :data:`MIN_HELDOUT_AUROC`, 0.7). With the gate unset
   (``SAGE_IMAGE_MIN_AUROC=``), the weaker guard: observations the model saw both classes of in training
   (otherwise its output is an untrained prior, not a reading). None qualifies -> abstain
   ("no validated observation: ...").
5. Probabilities for the usable frontal images (all usable images when none is frontal), averaged over them.
   A validated observation is reported when ``p >= image_confidence`` (present) or ``p <= 1 - image_confidence``
   (absent). Nothing qualifies -> abstain ("low confidence: ...").

Loaded encoders are cached in ``ctx.extras`` (one load per process and model version).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from sage_health.agents.base import AgentContext
from sage_health.agents.types import ImageFinding, ImagingResult
from sage_health.core.errors import ModelLoadError, StudyInputError
from sage_health.models.catalog import serving_image_model
from sage_health.models.imaging.encoder import BACKEND, ImageEncoder, MonaiDenseNetImageEncoder
from sage_health.models.imaging.quality import ImageCheck, check_image, is_frontal
from sage_health.models.registry import ModelVersion

__all__ = ["MIN_HELDOUT_AUROC", "NO_MODEL_REASON", "ImagingAgent", "ImagingInput"]

NO_MODEL_REASON = "no image model registered; train one with `sage-health train image-model`"
MIN_HELDOUT_AUROC = 0.7
"""Suggested validation gate: report an observation only if the model's held-out AUROC for it is at least this."""
_HELDOUT_PREFIX = "image-heldout:"
_NON_BLOCKING_PREFIX = "view unknown"


class ImagingInput(BaseModel):
    """The study's image files; ``views`` (when given) align with ``image_paths`` (None = unknown)."""

    model_config = ConfigDict(frozen=True)

    image_paths: tuple[str, ...]
    views: tuple[str | None, ...] = ()
    study_id: str | None = None


def _select_model(ctx: AgentContext) -> tuple[ModelVersion | None, str]:
    """The image model that may serve (production, else the newest candidate; never a tainted version) and why."""
    return serving_image_model(ctx.registry, ctx.settings.image_model)


def _encoder(ctx: AgentContext, model: ModelVersion) -> ImageEncoder:
    if model.backend != BACKEND:
        raise ModelLoadError(
            f"{model.ref} has backend {model.backend!r}; the imaging agent runs {BACKEND!r} models: set "
            "SAGE_IMAGE_MODEL to a model trained with `sage-health train image-model`"
        )
    if not model.adapter_path:
        raise ModelLoadError(f"{model.ref} has no weights folder; retrain it with `sage-health train image-model`")
    key = f"imaging.encoder:{model.ref}:{model.adapter_sha256}"
    cached = ctx.extras.get(key)
    if cached is None:
        cached = ctx.extras.setdefault(
            key,
            MonaiDenseNetImageEncoder(Path(model.adapter_path), expected_sha256=model.adapter_sha256, label=model.ref),
        )
    encoder: ImageEncoder = cached
    return encoder


def _trained_observations(model: ModelVersion, observations: Sequence[str]) -> set[str]:
    """Observations the model saw both classes of in training (all, for a model without that record)."""
    counts: Any = model.config.get("train_targets")
    if not isinstance(counts, dict):
        return set(observations)
    return {
        name
        for name in observations
        if isinstance(counts.get(name), dict)
        and counts[name].get("positive", 0) > 0
        and counts[name].get("negative", 0) > 0
    }


def _heldout_auroc(model: ModelVersion) -> dict[str, float]:
    """Per-observation AUROC of the model's newest held-out evaluation (empty when it has none)."""
    for evaluation in reversed(model.evaluations):
        values: Any = evaluation.metrics.get("auroc")
        if evaluation.eval_set.startswith(_HELDOUT_PREFIX) and isinstance(values, dict):
            return {k: float(v) for k, v in values.items() if isinstance(v, int | float)}
    return {}


def _blocking(check: ImageCheck) -> str:
    return ", ".join(p for p in check.problems if not p.startswith(_NON_BLOCKING_PREFIX))


class ImagingAgent:
    """``min_heldout_auroc``: the held-out AUROC gate (see the module docstring); None (the default) takes
    ``Settings.image_min_auroc`` (0.7; unset there keeps only the training guard)."""

    name: ClassVar[str] = "imaging"
    input_model: ClassVar[type[ImagingInput]] = ImagingInput
    output_model: ClassVar[type[ImagingResult]] = ImagingResult

    def __init__(self, *, min_heldout_auroc: float | None = None) -> None:
        self.min_heldout_auroc = min_heldout_auroc

    def _validated(self, model: ModelVersion, observations: Sequence[str], gate: float | None) -> tuple[set[str], str]:
        """(observations the model may report, why the others may not)."""
        if gate is None:
            trained = _trained_observations(model, observations)
            return (
                trained,
                f"{model.ref} saw both classes of no observation in training; train it on more labelled images",
            )
        aurocs = _heldout_auroc(model)
        validated = {n for n in observations if aurocs.get(n, -1.0) >= gate}
        best = max(aurocs.items(), key=lambda kv: kv[1], default=None)
        best_text = f"best: {best[0]} {best[1]:.2f}" if best else "no observation had both classes held out"
        return validated, (
            f"no observation of {model.ref} has a held-out AUROC >= {gate:.2f} ({best_text}); "
            "train it on more labelled chest X-rays"
        )

    def run(self, payload: ImagingInput, ctx: AgentContext) -> ImagingResult:
        paths = payload.image_paths
        if not paths:
            return ImagingResult(abstained=True, reason="no images in the study")
        if payload.views and len(payload.views) != len(paths):
            raise StudyInputError(
                f"{len(payload.views)} views for {len(paths)} images: give one view (or none) per image, in order"
            )
        views = payload.views or (None,) * len(paths)
        checks = [
            check_image(Path(p), min_size=ctx.settings.image_min_size, view=v)
            for p, v in zip(paths, views, strict=True)
        ]
        for check in checks:
            if not check.readable:
                raise StudyInputError(check.problems[0] if check.problems else f"{check.path}: unreadable image")
        images = tuple(checks)
        usable = [c for c in checks if c.usable]
        if not usable:
            detail = "; ".join(f"{c.image_id}: {_blocking(c)}" for c in checks)
            return ImagingResult(images=images, abstained=True, reason=f"no usable image ({detail})")
        model, note = _select_model(ctx)
        if model is None:
            tainted = "tainted" in note
            return ImagingResult(images=images, abstained=True, reason=note if tainted else NO_MODEL_REASON)
        encoder = _encoder(ctx, model)
        observations = encoder.observations
        gate = self.min_heldout_auroc if self.min_heldout_auroc is not None else ctx.settings.image_min_auroc
        allowed, why_none = self._validated(model, observations, gate)
        if not allowed:
            return ImagingResult(
                images=images,
                abstained=True,
                reason=f"no validated observation: {why_none}",
                model_ref=model.ref,
                model_note=note,
            )
        selected = [c for c in usable if is_frontal(c.view)] or usable
        per_image = encoder.predict([Path(c.path) for c in selected])
        mean = {name: sum(p[name] for p in per_image) / len(per_image) for name in observations}
        threshold = ctx.settings.image_confidence
        image_id = "+".join(c.image_id for c in selected)
        findings: list[ImageFinding] = []
        for name in observations:
            p = mean[name]
            if name not in allowed or 1.0 - threshold < p < threshold:
                continue
            findings.append(
                ImageFinding(
                    observation=name,
                    present=p >= threshold,
                    probability=round(p, 4),
                    image_id=image_id,
                    evidence_id=f"image:{image_id}#{name}",
                )
            )
        if not findings:
            closest = max(sorted(allowed), key=lambda n: abs(mean[n] - 0.5))
            best = f"; most decided: {closest} p={mean[closest]:.2f}"
            return ImagingResult(
                images=images,
                abstained=True,
                reason=(
                    f"low confidence: no observation reached p >= {threshold:.3g} or p <= {1 - threshold:.3g} on "
                    f"{len(selected)} image(s){best}"
                ),
                model_ref=model.ref,
                model_note=note,
            )
        return ImagingResult(
            images=images, findings=tuple(findings), abstained=False, model_ref=model.ref, model_note=note
        )
