"""`cnn runs`: list run directories with their status and results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnncli.cli.app import Format, app, cli_errors, print_json


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

    Status is what the run's status.json says, except that a "running" run whose process was
    killed outright (its lock is free) shows as "dead".
    """
    from cnncli.runs import list_runs

    rows = list_runs(directory, sort=sort, reverse=reverse)
    if format == Format.json:
        print_json(rows)
        return
    from cnncli.console import Console
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
