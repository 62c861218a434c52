"""The `cnn` command line. Thin: parse, call one library function, print.

Each command lives in its own module and registers itself on the shared Typer `app`.
Heavy libraries (jax, flax, orbax) are imported inside the commands so that
`cnn --help` answers at once.
"""

from __future__ import annotations

import sys

import typer

from cnncli.cli import analysis, data, evaluate, models, summarize, train  # noqa: F401  (registers the commands)
from cnncli.cli.app import _state, app
from cnncli.errors import CnnError

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except CnnError as exc:  # raised outside a command (should not happen) or with --debug
        if _state["debug"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)

