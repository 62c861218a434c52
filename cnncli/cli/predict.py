"""`cnn predict`: classify image files with a trained run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnncli.cli.app import Format, SetOption, Tta, app, cli_errors, load_model, print_json


@app.command()
@cli_errors
def predict(
    path: Annotated[Path, typer.Argument(help="Run directory, checkpoint step directory or weights directory (cnn weights import).")],
    images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, ...; any size).")],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="How many classes to show per image.")] = 5,
    checkpoint: Annotated[str, typer.Option(help="best, latest or a step number.")] = "best",
    tta: Annotated[Tta, typer.Option(help="flip: average the image and its mirror.")] = Tta.none,
    overrides: SetOption = None,
    format: Annotated[Format, typer.Option("--format")] = Format.table,
) -> None:
    """Classify image files: the top-k classes with their probabilities."""
    from cnncli.predict import predict_images

    results = predict_images(path, images, top_k=top_k, which=checkpoint, overrides=overrides,
                             tta=None if tta == Tta.none else tta.value, load=load_model)
    if format == Format.json:
        print_json(results)
        return
    from cnncli.console import Console
    from rich.table import Table

    t = Table()
    for col in ("image", "rank", "class", "probability"):
        t.add_column(col, justify="right" if col in ("rank", "probability") else "left", overflow="fold")
    names = [Path(r["file"]).name for r in results]
    shown = names if len(set(names)) == len(names) else [r["file"] for r in results]  # JSON has the full paths
    for r, name in zip(results, shown):
        for rank, p in enumerate(r["predictions"], 1):
            t.add_row(name if rank == 1 else "", str(rank), p["class"], f"{p['probability']:.4f}")
        t.add_section()
    Console().print(t)
