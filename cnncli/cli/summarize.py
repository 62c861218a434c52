"""`cnn summarize`: explain a model layer by layer, with totals, training memory and XLA's figures."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cnncli.cli.app import app, cli_errors, print_json

FORMATS = ("table", "json", "markdown", "csv")
DTYPES = ("float32", "bfloat16", "float16")
OPTIMIZERS = ("sgd", "sgd_momentum", "adam")


# Options are parsed here rather than by Typer so that a bad value is one line and exit 2.
def _positive(value: Optional[str], option: str) -> Optional[int]:
    from cnncli.summary import SummaryError

    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise SummaryError(f"{option} must be a positive integer, got {value!r}")
    return n


def _choice(value: Optional[str], option: str, choices: tuple[str, ...]) -> Optional[str]:
    from cnncli.errors import did_you_mean
    from cnncli.summary import SummaryError

    if value is not None and value not in choices:
        raise SummaryError(f"{option} must be one of {', '.join(choices)}, got {value!r}"
                           f"{did_you_mean(value, choices)}")
    return value


@app.command()
@cli_errors
def summarize(
    targets: Annotated[list[str], typer.Argument(
        metavar="TARGET", help="Model names (see `cnn models`), a CONFIG.yaml, a run directory or a "
                                  "checkpoint directory; several are compared side by side.")],
    input_size: Annotated[Optional[str], typer.Option(metavar="N", help="Square input size.")] = None,
    channels: Annotated[Optional[str], typer.Option(metavar="N", help="Input channels.")] = None,
    num_classes: Annotated[Optional[str], typer.Option(metavar="N", help="Output classes.")] = None,
    batch_size: Annotated[Optional[str], typer.Option(
        metavar="N", help="Batch for the training memory and XLA (default: the config's, else the largest "
                          "that fits --memory, else 1).")] = None,
    dtype: Annotated[Optional[str], typer.Option(
        metavar="DTYPE", help="Compute dtype: float32, bfloat16 or float16 (parameters stay float32).")] = None,
    optimizer: Annotated[Optional[str], typer.Option(
        metavar="NAME", help="sgd, sgd_momentum or adam: parameters + gradients + optimizer state hold x2, x3 "
                             "or x4 the parameters (default: the config's, else sgd_momentum).")] = None,
    memory: Annotated[Optional[str], typer.Option(
        metavar="SIZE", help="Device memory, e.g. 80GB (10^9 bytes), 80GiB (2^30), 81920MB: the largest "
                             "batch that fits.")] = None,
    compile: Annotated[bool, typer.Option(
        "--compile/--no-compile", help="Compile the real training step and compare with XLA's figures.")] = True,
    expand: Annotated[bool, typer.Option(
        "--expand/--collapse", help="Show every layer inside residual blocks (table, markdown).")] = False,
    wide: Annotated[bool, typer.Option("--wide", help="Exact numbers and more columns, past 80 columns.")] = False,
    format: Annotated[str, typer.Option("--format", metavar="FORMAT",
                                        help="table, json, markdown or csv.")] = "table",
) -> None:
    """Per-layer output shapes, activations, parameters and MACs; totals, training memory, XLA's figures."""
    from cnncli.summary import parse_memory
    from cnncli.summary.target import summarize_targets

    _choice(format, "--format", FORMATS)
    summaries = summarize_targets(
        targets, input_size=_positive(input_size, "--input-size"), in_channels=_positive(channels, "--channels"),
        num_classes=_positive(num_classes, "--num-classes"), batch_size=_positive(batch_size, "--batch-size"),
        dtype=_choice(dtype, "--dtype", DTYPES), optimizer=_choice(optimizer, "--optimizer", OPTIMIZERS),
        memory_budget=parse_memory(memory) if memory is not None else None, compile=compile)
    if format == "json":
        print_json(summaries[0] if len(summaries) == 1 else summaries)
        return
    from cnncli.summary import render

    if format == "markdown":
        typer.echo(render.to_markdown(summaries, expand=expand))
    elif format == "csv":
        typer.echo(render.to_csv(summaries), nl=False)
    else:
        render.print_table(summaries, wide=wide, expand=expand)
