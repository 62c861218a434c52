"""`cnn report`: a run as one HTML page that opens anywhere, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnncli.cli.app import app, cli_errors


@app.command()
@cli_errors
def report(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN", help="A run directory; several give one comparison "
                                                                   "page.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write (not inside a run "
                                                                 "directory).")] = Path("report.html"),
    examples: Annotated[int, typer.Option(min=0, metavar="N", help="Misclassified test examples shown, with "
                                                                    "Grad-CAM.")] = 12,
) -> None:
    """One self-contained HTML page: numbers, curves, evaluation, mistakes with Grad-CAM, filters, feature maps,
    layer table, config and environment (figures inline, nothing fetched)."""
    import time

    from cnncli.report.build import write_report

    start = time.perf_counter()
    path = write_report(runs, output, examples=examples)
    size = path.stat().st_size
    typer.echo(f"{path} ({size / 2**20:.1f} MiB, {time.perf_counter() - start:.1f} s)")
