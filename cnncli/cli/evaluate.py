"""`cnn eval`: measure trained models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cnncli.cli.app import Format, SetOption, cli_errors, print_json, app


@app.command("eval")
@cli_errors
def eval_cmd(
    path: Annotated[Path, typer.Argument(help="Run directory or checkpoint step directory.")],
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    checkpoint: Annotated[str, typer.Option(help="best, latest or a step number.")] = "best",
    batch_size: Annotated[Optional[int], typer.Option(help="Evaluation batch size.")] = None,
    overrides: SetOption = None,
    format: Annotated[Format, typer.Option("--format")] = Format.table,
) -> None:
    """Evaluate a trained model (top-1/top-5 accuracy, loss) on a split of its dataset."""
    from cnncli.evaluate import evaluate_run

    result = evaluate_run(path, split=split, which=checkpoint, batch_size=batch_size, overrides=overrides)
    if format == Format.json:
        print_json(result)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{result['run']} (step {result['checkpoint_step']}, {split} split)")
    for col in ("accuracy", "top-5 accuracy", "error", "loss", "examples"):
        t.add_column(col, justify="right")
    t.add_row(f"{result['accuracy']:.4f}", f"{result['top5_accuracy']:.4f}", f"{result['error']:.4f}",
              f"{result['loss']:.4f}", str(result["num_examples"]))
    Console().print(t)
