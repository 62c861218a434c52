"""The `cnn` command line. Thin: parse, call one library function, print.

Each command lives in its own module and registers itself on the shared Typer `app`.
Heavy libraries (jax, flax, orbax) are imported inside the commands so that
`cnn --help` answers at once.
"""

from __future__ import annotations

import signal
import sys
import time

_IMPORTED = time.perf_counter()  # the command's start, for the time to the first step

from cnncli.cli import lazy_imports  # noqa: E402

lazy_imports.install()  # before Typer's help imports rich: a third of `cnn --help`'s time

import typer  # noqa: E402

# Registration order is the order `cnn --help` lists them: the order a user meets them.
from cnncli.cli import train, evaluate, predict, summarize, show, models, data, runs, plot  # noqa: F401, I001
from cnncli.cli import bench  # noqa: F401, E402
from cnncli.cli import weights  # noqa: F401, E402
from cnncli.cli import report  # noqa: F401, E402
from cnncli.cli.app import _state, app
from cnncli.errors import CnnError

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point: every mistake is one line on stderr and a non-zero exit."""
    from typer._click import exceptions as click  # typer bundles its own click

    from cnncli import interrupts
    from cnncli.metrics import hide_torch_from_tensorboardx

    _state["started"] = _IMPORTED
    hide_torch_from_tensorboardx()  # the command writes floats: tensorboardX's torch import is 1.1 s
    _state["command"] = True  # not a CliRunner in a test: an interrupt ends the process (cli_errors)
    interrupts.install()
    try:
        code = app(standalone_mode=False)
    except click.NoArgsIsHelpError:
        app(["--help"])  # prints the rich help and exits 0
    except click.UsageError as exc:  # missing argument, unknown option, bad choice
        hint = f" (see: {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        typer.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        typer.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except CnnError as exc:  # raised outside a command (should not happen) or with --debug
        if _state["debug"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except BaseException as exc:  # an interrupt outside a command's error handling, or with --debug
        interrupt = interrupts.within(exc)
        if interrupt is None and interrupts.last_signal() is None:
            raise
        # an interrupt, or what became of one (an import interrupted is an ImportError that may not say why)
        signum = interrupts.signum_of(interrupt) if interrupt is not None else interrupts.last_signal()
        if _state["debug"]:
            import traceback

            traceback.print_exc()
        typer.echo(f"interrupted ({signal.Signals(signum).name})", err=True)
        interrupts.leave(128 + signum)
    code = code if isinstance(code, int) else 0
    if _state.get("interrupted"):
        interrupts.leave(code)
    sys.exit(code)
