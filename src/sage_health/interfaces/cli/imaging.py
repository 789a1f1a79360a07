"""``sage-health train ...``: training commands (``train image-model``: the chest X-ray image model).

The use case (policy, consent, lineage, registration, audit) is :func:`sage_health.services.training.train_image`.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from sage_health.interfaces.cli.common import Cli, err, out, run_command, session_command
from sage_health.models.evaluation.labeler import OBSERVATIONS
from sage_health.models.imaging.training import TrainResult
from sage_health.services.training import ImageModelRequest, TrainingProgress, train_image

train_app = typer.Typer(help="Train models on the data in the store.", no_args_is_help=True)


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
@session_command
def image_model(
    cli: Cli,
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
) -> None:
    """Train the chest X-ray model (MONAI DenseNet121) on the store's chest images and register it as a candidate.

    Labels: each image's report (CheXpert-style labeler on findings + impression) or its dataset labels. About
    20% of patients are held out; their masked loss and per-observation AUROC are recorded with the model. The
    model's lineage names every record it was trained on (an erasure of one of those patients taints it).
    """

    def body() -> None:
        request = ImageModelRequest(epochs=epochs, image_size=image_size, batch_size=batch_size, limit=limit,
                                    seed=seed, name=name, by=by)  # fmt: skip

        def note(event: TrainingProgress) -> None:
            if event.message is not None:
                err.print(event.message, highlight=False)

        with cli.session(must_exist=True) as session:
            result = train_image(session, request, on_progress=note)
        cli.emit(result.model_dump(mode="json"), lambda: _print_result(result))

    run_command(body)
