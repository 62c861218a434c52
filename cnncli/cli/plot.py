"""`cnn plot`: learning curves of several runs."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from cnncli.cli.app import app, cli_errors


class XAxis(str, Enum):
    epoch = "epoch"
    step = "step"


@app.command()
@cli_errors
def plot(
    runs: Annotated[Optional[list[Path]], typer.Argument(help="Run directories.")] = None,
    metric: Annotated[str, typer.Option(help="Comma-separated <split>_<name> metrics from metrics.jsonl, e.g. "
                                             "train_loss,val_error (error = 1 - accuracy).")] = "train_loss,val_error",
    x: Annotated[XAxis, typer.Option("--x", help="Horizontal axis.")] = XAxis.epoch,
    panel: Annotated[Optional[list[str]], typer.Option(help="One panel per use: comma-separated runs (RUN paths or "
                                                            "names, or run directories), e.g. plain20,plain56.")]
    = None,
    figure: Annotated[Optional[str], typer.Option(help="Preset that sets metrics and panels: he2016 (training "
                                                       "and test/val error of plain nets beside ResNets, "
                                                       "He et al. 2016).")] = None,
    percent: Annotated[bool, typer.Option(help="Show values in percent.")] = False,
    output: Annotated[Path, typer.Option("--output", "-o", help="Image file (png, pdf, svg).")] = Path("curves.png"),
) -> None:
    """Draw learning curves of several runs on shared axes (one panel per metric, or per --panel group)."""
    from cnncli.plots import plot_runs, save_figure
    from cnncli.rundir import refuse_run_file

    refuse_run_file(output, "--output")
    metrics = [m.strip() for m in metric.split(",") if m.strip()]
    fig = plot_runs(runs or [], metrics=metrics, x=x.value, panels=panel, figure=figure, percent=percent)
    typer.echo(str(save_figure(fig, output)))
