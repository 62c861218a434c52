"""The Typer app and what every command shares: error handling, output formats."""

from __future__ import annotations

import functools
import json
from enum import Enum
from typing import Annotated, Any, Optional

import typer

from cnncli.errors import CnnError, TrainingInterrupted, one_line

app = typer.Typer(
    name="cnn",
    help="Train, evaluate and explain classic CNNs (AlexNet, VGG, ResNet) on JAX + Flax NNX + Optax.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}


class Format(str, Enum):
    table = "table"
    json = "json"


class Tta(str, Enum):
    """Test-time augmentation of `cnn eval` and `cnn predict`."""

    none = "none"
    flip = "flip"


def stderr_console():
    from cnncli.console import stderr_console

    return stderr_console()


def cli_errors(fn):
    """Turn CnnError into one line on stderr and its exit code; --debug re-raises with the traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CnnError as exc:
            if _state["debug"]:
                raise
            if isinstance(exc, TrainingInterrupted):
                from cnncli import interrupts

                _state["interrupted"] = interrupts.alone()  # several processes: jax's shutdown waits for the others
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except RuntimeError as exc:  # jax could not start an installed plugin's backend: one line
            from cnncli.backend_env import start_failure

            reason = start_failure(exc)
            if reason is None or _state["debug"]:
                raise
            typer.echo(f"error: {reason}", err=True)
            raise typer.Exit(2) from None
        except OSError as exc:  # the file system refused a path the user gave (too long, no permission, ...)
            if _state["debug"]:
                raise
            from cnncli import console

            gone = console.readers_gone() if isinstance(exc, BrokenPipeError) else []
            if gone:  # `cnn runs --format json | head`: the reader has what it wanted; end as SIGPIPE would
                for stream in gone:
                    console.silence(stream)
                raise typer.Exit(console.EXIT_READER_GONE) from None
            name = str(exc.filename or "")
            name = name if len(name) <= 80 else name[:77] + "..."
            typer.echo(f"error: {one_line(exc)}" + (f": {name}" if name else ""), err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:  # SIGINT, SIGTERM, SIGHUP (cnncli.interrupts)
            if _state["debug"]:
                raise
            from cnncli import interrupts

            interrupts.taken()
            typer.echo(interrupts.message(exc), err=True)
            if _state.get("command"):  # the `cnn` command: leave now, while the exception still holds what it
                interrupts.leave(128 + interrupts.signum_of(exc))  # interrupted (see cnncli.interrupts)
            raise typer.Exit(128 + interrupts.signum_of(exc)) from None

    return wrapper


def load_model(path, which: str, overrides):
    """What `cnn eval` and `cnn predict` restore: a run, a checkpoint step, or an imported weights directory."""
    from cnncli.evaluate import load_checkpoint_model
    from cnncli.weights.store import is_weights_dir, loaded_model

    if is_weights_dir(path):
        return loaded_model(path, overrides)
    return load_checkpoint_model(path, which, overrides)


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2))


# Commands that read files only and never start jax's backend.
NO_BACKEND = frozenset({"runs", "plot"})


@app.callback()
def _main(ctx: typer.Context,
          debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False) -> None:
    _state["debug"] = debug
    if ctx.invoked_subcommand not in NO_BACKEND:
        check_backend_environment()


def check_backend_environment() -> None:
    """JAX_PLATFORMS and XLA_FLAGS that jax would fail on (a traceback; XLA's abort) end in one line, exit 2."""
    import os

    from cnncli.backend_env import problem
    from cnncli.xla_flags import CPU_DEFAULTS

    reason = problem(os.environ, frozenset(f"--{name}={value}" for name, value, *_ in CPU_DEFAULTS))
    if reason is not None:
        typer.echo(f"error: {reason}", err=True)
        raise typer.Exit(2)


SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config key, e.g. --set optimizer.lr=0.05 (repeatable)."),
]
