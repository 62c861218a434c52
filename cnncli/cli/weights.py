"""`cnn weights import|export`: PyTorch (torchvision, timm) weight files <-> cnn weights directories."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from cnncli.cli.app import app, cli_errors

weights_app = typer.Typer(help="Import PyTorch weight files (.pth, .safetensors) into cnn, export them back.",
                          no_args_is_help=True)
app.add_typer(weights_app, name="weights")


class Source(str, Enum):
    torchvision = "torchvision"
    timm = "timm"


class Layout(str, Enum):
    torchvision = "torchvision"
    cnn = "cnn"


@weights_app.command("import")
@cli_errors
def import_(
    file: Annotated[Path, typer.Argument(help="A state dict: .pth (read without PyTorch) or .safetensors.",
                                         show_default=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="cnn model name: vgg11..vgg19[_bn], resnet18..152, "
                                       "alexnet_tv.", show_default=False)],
    source: Annotated[Source, typer.Option("--from", help="Whose key names the file uses.")] = Source.torchvision,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Weights directory to write "
                                                "(default: <file stem>-cnn).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing weights directory.")] = False,
) -> None:
    """Convert a torchvision / timm state dict into a cnn weights directory."""
    from cnncli.weights.convert import import_weights

    path, info = import_weights(file, model, source=source.value, out=out, force=force)
    counters = "recorded" if info.get("num_batches_tracked") else "none in the file"
    typer.echo(f"wrote {path}: {info['model']}, {info['num_classes']} classes, input "
               f"{'x'.join(map(str, info['input_shape']))}, ImageNet mean/std "
               f"(num_batches_tracked: {counters})")


@weights_app.command("export")
@cli_errors
def export(
    src: Annotated[Path, typer.Argument(help="A weights directory, a run directory or a checkpoint.",
                                        show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .safetensors file to write.", show_default=False)],
    layout: Annotated[Layout, typer.Option("--layout", help="torchvision key names and tensor layouts, or cnn's "
                                           "own (params/... HWIO).")] = Layout.torchvision,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing .safetensors file.")] = False,
) -> None:
    """Write weights as one .safetensors file that PyTorch (torchvision layout) can load."""
    from cnncli.weights.convert import export_weights

    path, count = export_weights(src, out, layout.value, force=force)
    typer.echo(f"wrote {path}: {count} tensors, {layout.value} layout")
