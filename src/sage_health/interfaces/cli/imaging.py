"""``sage-health train ...``: training commands (``train image-model``: the chest X-ray image model)."""

from __future__ import annotations

import getpass
import os
from typing import Annotated, Any

import typer
from rich.table import Table

from sage_health.core.errors import PolicyViolation
from sage_health.data.governance.access import open_governed
from sage_health.data.governance.policy import Action
from sage_health.data.store.factory import open_store
from sage_health.interfaces.cli.common import (
    AsOpt,
    JsonOpt,
    PurposeOpt,
    StoreOpt,
    echo_json,
    err,
    out,
    run_command,
    settings_for,
)
from sage_health.models.evaluation.labeler import OBSERVATIONS, CheXpertLabeler
from sage_health.models.imaging.training import TrainResult, train_image_model

train_app = typer.Typer(help="Train models on the data in the store.", no_args_is_help=True)


def _actor(by: str | None) -> str:
    if by:
        return by
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "unknown")


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _print_result(result: TrainResult) -> None:
    summary = Table(title=f"image model {result.ref}", show_header=False)
    summary.add_column("field", no_wrap=True)
    summary.add_column("value", overflow="fold")
    summary.add_row("version", result.version)
    summary.add_row("folder", result.folder)
    summary.add_row("weights sha256", result.weights_sha256)
    summary.add_row("images: train / held out", f"{result.n_train} / {result.n_heldout}")
    summary.add_row("skipped", ", ".join(f"{k}: {v}" for k, v in result.skipped.items()) or "-")
    summary.add_row("train loss per epoch", ", ".join(_fmt(v, 4) for v in result.train_loss))
    summary.add_row("held-out masked BCE", _fmt(result.heldout.loss, 4))
    summary.add_row("held-out mean AUROC", _fmt(result.heldout.mean_auroc))
    summary.add_row("evaluation set", result.eval_set)
    summary.add_row("seconds", f"{result.seconds:.1f}")
    summary.add_row("stage", "candidate (promote with `sage-health models promote`)")
    out.print(summary)
    labels = Table(title="labels per observation (images used) and held-out AUROC")
    labels.add_column("observation", no_wrap=True)
    for col in ("pos", "unc", "neg", "blank", "held-out n", "AUROC"):
        labels.add_column(col, justify="right", no_wrap=True)
    for name in OBSERVATIONS:
        c = result.label_counts[name]
        labels.add_row(
            name,
            str(c["positive"]),
            str(c["uncertain"]),
            str(c["negative"]),
            str(c["blank"]),
            str(result.heldout.labelled.get(name, 0)),
            _fmt(result.heldout.auroc.get(name)),
        )
    out.print(labels)


@train_app.command("image-model")
def image_model(
    store: StoreOpt = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Passes over the training images.")] = 5,
    image_size: Annotated[int, typer.Option("--image-size", min=32, help="Input side in pixels.")] = 224,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per optimiser step.")] = 16,
    limit: Annotated[
        int | None, typer.Option("--limit", min=2, help="Use at most this many labelled images (a fixed sample).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same data + seed = same weights).")] = 0,
    name: Annotated[
        str | None, typer.Option("--name", help="Registry name (default: SAGE_IMAGE_MODEL, cxr-densenet121).")
    ] = None,
    by: Annotated[
        str | None, typer.Option("--by", help="Who trains it: must be the acting principal when given.")
    ] = None,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train the chest X-ray model (MONAI DenseNet121) on the store's chest images and register it as a candidate.

    Labels: each image's report (CheXpert-style labeler on findings + impression) or its dataset labels. About
    20% of patients are held out; their masked loss and per-observation AUROC are recorded with the model.
    """

    def body() -> None:
        settings = settings_for(store, as_, purpose)
        labeler = CheXpertLabeler.from_data_dir(settings.data_dir)
        with open_store(settings) as raw:
            st = open_governed(settings, raw).acting(Action.TRAIN)
            if by and by != st.access.principal.name:
                raise PolicyViolation(f"--by {by!r} differs from the acting principal {st.access.principal.name!r}")
            err.print(f"training image model on the chest images in {settings.store} ...", highlight=False)
            result = train_image_model(
                settings,
                st,
                labeler,
                epochs=epochs,
                image_size=image_size,
                batch_size=batch_size,
                seed=seed,
                limit=limit,
                name=name,
                actor=st.access.principal.name,
            )
            st.log(Action.TRAIN.value, detail={"model": result.ref, "train_images": result.n_train})
        if as_json:
            payload: dict[str, Any] = result.model_dump(mode="json")
            echo_json(payload)
            return
        _print_result(result)

    run_command(body)
