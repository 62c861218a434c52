"""`cnn summarize`: explain a model layer by layer, with totals, training memory and XLA's figures."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from cnncli.cli.app import app, cli_errors, print_json

class SummaryFormat(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"
    csv = "csv"


class Dtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class OptimizerKind(str, Enum):
    sgd = "sgd"
    sgd_momentum = "sgd_momentum"
    adam = "adam"


@app.command()
@cli_errors
def summarize(
    targets: Annotated[list[str], typer.Argument(
        metavar="TARGET", help="Model names (see `cnn models`), a CONFIG.yaml, a run directory or a "
                                  "checkpoint directory; several are compared side by side.")],
    input_size: Annotated[Optional[int], typer.Option(min=1, metavar="N", help="Square input size.")] = None,
    channels: Annotated[Optional[int], typer.Option(min=1, metavar="N", help="Input channels.")] = None,
    num_classes: Annotated[Optional[int], typer.Option(min=1, metavar="N", help="Output classes.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1,
        metavar="N", help="Batch for the training memory and XLA (default: the config's, else the largest "
                          "that fits --memory, else 1).")] = None,
    dtype: Annotated[Optional[Dtype], typer.Option(
        help="Compute dtype: float32, bfloat16 or float16 (parameters stay float32).")] = None,
    optimizer: Annotated[Optional[OptimizerKind], typer.Option(
        help="sgd, sgd_momentum or adam: parameters + gradients + optimizer state hold x2, x3 "
                             "or x4 the parameters (default: the config's, else sgd_momentum).")] = None,
    memory: Annotated[Optional[str], typer.Option(
        metavar="SIZE", help="Device memory, e.g. 80GB (10^9 bytes), 80GiB (2^30), 81920MB: the largest "
                             "batch that fits.")] = None,
    devices: Annotated[int, typer.Option(
        min=1, metavar="N", help="Devices the (global) batch is split over: memory figures per device.")] = 1,
    shard_params: Annotated[Optional[bool], typer.Option(
        "--shard-params/--replicate-params", show_default=False,
        help="With --devices: parameters and optimizer state split over the devices (train.shard_params) or a "
             "full copy on each (default: the config's, else a copy).")] = None,
    compile: Annotated[bool, typer.Option(
        "--compile/--no-compile", help="Compile the real training step and compare with XLA's figures.")] = True,
    expand: Annotated[bool, typer.Option(
        "--expand/--collapse", help="Show every layer inside residual blocks (table, markdown).")] = False,
    wide: Annotated[bool, typer.Option("--wide", help="Exact numbers and more columns, past 80 columns.")] = False,
    format: Annotated[SummaryFormat, typer.Option("--format", help="Output format.")] = SummaryFormat.table,
) -> None:
    """Per-layer output shapes, activations, parameters and MACs; totals, training memory, XLA's figures."""
    from cnncli.summary import parse_memory
    from cnncli.summary.target import summarize_targets

    summaries = summarize_targets(
        targets, input_size=input_size, in_channels=channels, num_classes=num_classes, batch_size=batch_size,
        dtype=dtype.value if dtype else None, optimizer=optimizer.value if optimizer else None,
        memory_budget=parse_memory(memory) if memory is not None else None, compile=compile, devices=devices,
        shard_params=shard_params)
    if format == SummaryFormat.json:
        print_json(summaries[0] if len(summaries) == 1 else summaries)
        return
    from cnncli.summary import render

    if format == SummaryFormat.markdown:
        typer.echo(render.to_markdown(summaries, expand=expand))
    elif format == SummaryFormat.csv:
        typer.echo(render.to_csv(summaries), nl=False)
    else:
        render.print_table(summaries, wide=wide, expand=expand)
