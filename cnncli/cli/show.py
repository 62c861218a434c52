"""`cnn show filters|features|cam`: pictures of what a CNN learned and where it looks."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from cnncli.cli.app import SetOption, app, cli_errors, print_json

show_app = typer.Typer(help="Look inside a CNN: learned filters, feature maps, class activation maps (PNG).",
                       no_args_is_help=True)
app.add_typer(show_app, name="show")


class ShowFormat(str, Enum):
    png = "png"
    json = "json"


Target = Annotated[str, typer.Argument(metavar="RUN_OR_MODEL",
                                       help="A run directory (or checkpoint step directory) or a model name "
                                            "(untrained, see `cnn models`).")]
Image = Annotated[Path, typer.Argument(metavar="IMAGE", help="An image file, prepared as `cnn predict` does.")]
Output = Annotated[Path | None, typer.Option("--output", "-o", metavar="FILE",
                                                help="Image file to write (png, pdf, svg); with --format json "
                                                     "only if given.")]
FormatOpt = Annotated[ShowFormat, typer.Option("--format", help="png: write the picture; json: print its numbers.")]
Checkpoint = Annotated[str, typer.Option(help="best, latest or a step number (runs).")]
InputSize = Annotated[int | None, typer.Option(metavar="N", help="Input size of an untrained model.")]
Channels = Annotated[int | None, typer.Option(metavar="N", help="Input channels of an untrained model.")]


def _subject(target: str, checkpoint: str, overrides, input_size, channels, output: Path | None):
    from cnncli.rundir import refuse_run_file
    from cnncli.show.subject import load_subject

    if output is not None:  # before the model is loaded
        refuse_run_file(output, "--output")

    return load_subject(target, which=checkpoint, overrides=overrides, input_size=input_size, channels=channels)


def _emit(fig, data: dict, output: Path | None, format: ShowFormat, default: str) -> None:
    from cnncli.plots import save_figure

    if format == ShowFormat.json:
        if output is not None:
            data["output"] = str(save_figure(fig, output))
        print_json(data)
    else:
        typer.echo(str(save_figure(fig, output or Path(default))))


@show_app.command()
@cli_errors
def filters(
    target: Target,
    layer: Annotated[str | None, typer.Option(help="Conv layer (default: the first).")] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many filters.")] = 64,
    output: Output = None, format: FormatOpt = ShowFormat.png, checkpoint: Checkpoint = "best",
    overrides: SetOption = None, input_size: InputSize = None, channels: Channels = None,
) -> None:
    """A conv layer's kernels as a grid (RGB for the first layer of a colour model), each normalised."""
    from cnncli.show.filters import show_filters

    fig, data = show_filters(_subject(target, checkpoint, overrides, input_size, channels, output), layer=layer, limit=limit)
    _emit(fig, data, output, format, "filters.png")


@show_app.command()
@cli_errors
def features(
    target: Target, image: Image,
    layers: Annotated[str | None, typer.Option(
        help="Comma-separated layers, e.g. conv1,layer2,layer3 (default: the first conv, then the last pool or "
             "block at each resolution).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Strongest channels shown per layer.")] = 8,
    output: Output = None, format: FormatOpt = ShowFormat.png, checkpoint: Checkpoint = "best",
    overrides: SetOption = None, input_size: InputSize = None, channels: Channels = None,
) -> None:
    """The image's feature maps at chosen layers, with each layer's resolution and receptive field."""
    from cnncli.show.features import show_features

    names = [n.strip() for n in layers.split(",") if n.strip()] if layers else None
    fig, data = show_features(_subject(target, checkpoint, overrides, input_size, channels, output), image, layers=names,
                              top_k=top_k)
    _emit(fig, data, output, format, "features.png")


@show_app.command()
@cli_errors
def cam(
    target: Target, image: Image,
    class_index: Annotated[int | None, typer.Option("--class", metavar="K",
                                                       help="Class index (default: the predicted one).")] = None,
    layer: Annotated[str | None, typer.Option(help="Feature-map layer (default: the last conv stage).")] = None,
    output: Output = None, format: FormatOpt = ShowFormat.png, checkpoint: Checkpoint = "best",
    overrides: SetOption = None, input_size: InputSize = None, channels: Channels = None,
) -> None:
    """Grad-CAM: where the model looked for the predicted (or chosen) class, over the image."""
    from cnncli.show.cam import show_cam

    fig, data = show_cam(_subject(target, checkpoint, overrides, input_size, channels, output), image,
                         class_index=class_index, layer=layer)
    _emit(fig, data, output, format, "cam.png")
