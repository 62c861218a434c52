"""`cnn summarize`: explain a model layer by layer."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cnncli.cli.app import Format, cli_errors, print_json, app


@app.command()
@cli_errors
def summarize(
    model: Annotated[str, typer.Argument(help="Model name (see `cnn models`).")],
    input_size: Annotated[Optional[int], typer.Option(help="Square input size (default: the model's).")] = None,
    channels: Annotated[Optional[int], typer.Option(help="Input channels.")] = None,
    num_classes: Annotated[Optional[int], typer.Option(help="Output classes.")] = None,
    format: Annotated[Format, typer.Option("--format")] = Format.table,
) -> None:
    """Per-layer output shapes, parameters and MACs of a model, with totals."""
    from cnncli.summary import summarize_model

    s = summarize_model(model, input_size=input_size, in_channels=channels, num_classes=num_classes)
    if format == Format.json:
        print_json(s)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{s['model']}  input {'x'.join(map(str, s['input_shape']))}  classes {s['num_classes']}")
    for col, just in (("layer", "left"), ("type", "left"), ("output", "right"), ("params", "right"),
                      ("MACs", "right")):
        t.add_column(col, justify=just)
    for r in s["layers"]:
        t.add_row(r["name"], r["type"], "x".join(map(str, r["output_shape"])), f"{r['params']:,}", f"{r['macs']:,}")
    console = Console()
    console.print(t)
    console.print(f"trainable params {s['trainable_params']:,}   non-trainable (BatchNorm statistics) "
                  f"{s['non_trainable_params']:,}   total {s['total_params']:,}")
    console.print(f"MACs {s['total_macs']:,}   FLOPs (2 x MACs) {s['total_flops']:,}")
