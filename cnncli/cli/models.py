"""`cnn models`: the model registry."""

from __future__ import annotations

from typing import Annotated

import typer

from cnncli.cli.app import Format, cli_errors, print_json, app


@app.command()
@cli_errors
def models(
    pattern: Annotated[str, typer.Argument(help="Shell-style filter, e.g. 'resnet*'.")] = "*",
    format: Annotated[Format, typer.Option("--format")] = Format.table,
) -> None:
    """List the registered models with their default input and parameter count."""
    from cnncli.models import create_model, get_spec, list_models
    from cnncli.train.state import count_params

    rows = []
    for name in list_models(pattern):
        spec = get_spec(name)
        model = create_model(name, abstract=True, check_input=False)
        from flax import nnx

        rows.append({"name": name, "family": spec.family, "default_input": list(spec.default_input),
                     "num_classes": spec.default_classes, "params": count_params(nnx.state(model, nnx.Param)),
                     "description": spec.description})
    if format == Format.json:
        print_json(rows)
        return
    from cnncli.console import Console
    from rich.table import Table

    t = Table()
    for col, just in (("name", "left"), ("family", "left"), ("input", "right"), ("params", "right"),
                      ("description", "left")):
        t.add_column(col, justify=just)
    for r in rows:
        t.add_row(r["name"], r["family"], "x".join(map(str, r["default_input"])), f"{r['params']:,}",
                  r["description"])
    Console().print(t)
