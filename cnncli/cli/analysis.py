"""`cnn predict`, `cnn runs` and `cnn plot`: use and compare trained runs."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from cnncli.cli.app import Format, SetOption, app, cli_errors, print_json


class PredictTta(str, Enum):
    none = "none"
    flip = "flip"


class XAxis(str, Enum):
    epoch = "epoch"
    step = "step"


@app.command()
@cli_errors
def predict(
    path: Annotated[Path, typer.Argument(help="Run directory or checkpoint step directory.")],
    images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, ...; any size).")],
    top_k: Annotated[int, typer.Option("--top-k", help="How many classes to show per image.")] = 5,
    checkpoint: Annotated[str, typer.Option(help="best, latest or a step number.")] = "best",
    tta: Annotated[PredictTta, typer.Option(help="flip: average the image and its mirror.")] = PredictTta.none,
    overrides: SetOption = None,
    format: Annotated[Format, typer.Option("--format")] = Format.table,
) -> None:
    """Classify image files: the top-k classes with their probabilities."""
    from cnncli.predict import predict_images

    results = predict_images(path, images, top_k=top_k, which=checkpoint, overrides=overrides,
                             tta=None if tta == PredictTta.none else tta.value)
    if format == Format.json:
        print_json(results)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table()
    for col in ("image", "rank", "class", "probability"):
        t.add_column(col, justify="right" if col in ("rank", "probability") else "left")
    for r in results:
        for rank, p in enumerate(r["predictions"], 1):
            t.add_row(r["file"] if rank == 1 else "", str(rank), p["class"], f"{p['probability']:.4f}")
        t.add_section()
    Console().print(t)


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m {s:02d}s"


@app.command()
@cli_errors
def runs(
    directory: Annotated[Path, typer.Argument(help="A folder of run directories (or one run).")] = Path("runs"),
    sort: Annotated[str, typer.Option(help="name, model, dataset, status, epochs_done, best_val_accuracy, "
                                           "test_accuracy, wall_time_s, images_per_sec or updated.")] = "name",
    reverse: Annotated[bool, typer.Option(help="Sort descending (runs missing the value stay last).")] = False,
    format: Annotated[Format, typer.Option("--format")] = Format.table,
) -> None:
    """List run directories: model, dataset, status, epochs, best val accuracy, test accuracy, time, speed.

    Status is what the run's status.json says; a run whose process was killed outright still
    says "running" (its `updated` time stops moving).
    """
    from cnncli.runs import list_runs

    rows = list_runs(directory, sort=sort, reverse=reverse)
    if format == Format.json:
        print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    if not rows:
        typer.echo(f"no runs under {directory}")
        return
    # `updated` only matters to tell a live "running" run from one whose process died.
    show_updated = any(r["status"] == "running" for r in rows)
    t = Table(title=str(directory))
    t.add_column("name", overflow="fold")
    for col in ("model", "data", "status"):
        t.add_column(col, no_wrap=True)
    for col in ("epochs", "val acc", "test acc", "time", "img/s"):
        t.add_column(col, justify="right", no_wrap=True)
    if show_updated:
        t.add_column("updated")
    for r in rows:
        cells = [r["name"], r["model"] or "-", r["dataset"] or "-", r["status"], _fmt(r["epochs_done"], ".2f"),
                 _fmt(r["best_val_accuracy"], ".4f"), _fmt(r["test_accuracy"], ".4f"), _duration(r["wall_time_s"]),
                 _fmt(r["images_per_sec"], ",.0f")]
        t.add_row(*cells, *([r["updated"] or "-"] if show_updated else []))
    console = Console()
    if not console.is_terminal:  # piped: full rows rather than an 80-column squeeze
        console = Console(width=400)
    console.print(t)


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

    metrics = [m.strip() for m in metric.split(",") if m.strip()]
    fig = plot_runs(runs or [], metrics=metrics, x=x.value, panels=panel, figure=figure, percent=percent)
    typer.echo(str(save_figure(fig, output)))
