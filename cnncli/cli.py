"""The `cnn` command line. Thin: parse, call one library function, print.

Heavy libraries (jax, flax, orbax) are imported inside the commands so that
`cnn --help` answers at once.
"""

from __future__ import annotations

import functools
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from cnncli.errors import CnnError

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


def _stderr():
    from rich.console import Console

    return Console(stderr=True)


def _cli_errors(fn):
    """Turn CnnError into one line on stderr and its exit code; --debug re-raises with the traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CnnError as exc:
            if _state["debug"]:
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            if _state["debug"]:
                raise
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2))


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False) -> None:
    _state["debug"] = debug


SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config key, e.g. --set optimizer.lr=0.05 (repeatable)."),
]


@app.command()
@_cli_errors
def train(
    config: Annotated[Optional[Path], typer.Argument(help="YAML experiment file.", show_default=False)] = None,
    overrides: SetOption = None,
    name: Annotated[Optional[str], typer.Option(help="Run name under output.root (default: config stem + time).")] = None,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="Exact run directory path.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue this run from its newest checkpoint.")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing run directory.")] = False,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the resolved config and exit.")] = False,
    format: Annotated[Format, typer.Option("--format", help="Final summary format.")] = Format.table,
) -> None:
    """Train a model; writes a run directory (config, metrics, checkpoints, results)."""
    from cnncli.config import load_config
    from cnncli.errors import ConfigError
    from cnncli.rundir import RunDir, default_run_name

    if resume is not None:
        run = RunDir.open(resume)
        cfg = load_config(run.config, overrides)
    else:
        if config is None:
            raise ConfigError("give a CONFIG file (e.g. configs/digits_resnet20.yaml) or --resume RUN_DIR")
        cfg = load_config(config, overrides)
        run = None
    if print_config:
        typer.echo(cfg.to_yaml(), nl=False)
        return
    if run is None:
        path = run_dir or Path(cfg.output.root) / (name or default_run_name(config))
        run = RunDir.create(path, force=force)

    from cnncli.train.loop import train_and_evaluate

    console = _stderr()
    summary = train_and_evaluate(cfg, run, resume=resume is not None, console=console)
    if format == Format.json:
        _print_json(summary)
    else:
        _print_train_summary(summary, console)


def _print_train_summary(s: dict, console) -> None:
    from rich.table import Table

    test = s["test"]
    t = Table(title=f"run {s['run_dir']}", show_header=False, box=None)
    best_key = next(k for k in s if k.startswith("best_val"))
    rows = [
        ("steps / epochs", f"{s['steps']} / {s['epochs']:.2f}"),
        ("best checkpoint", f"step {s['best_step']} (epoch {s['best_epoch']:.2f}), {best_key[5:]} {s[best_key]:.4f}"),
        ("test accuracy", f"{test['accuracy']:.4f} (top-5 {test['top5_accuracy']:.4f}), loss {test['loss']:.4f}, "
                          f"{test['num_examples']} images"),
        ("wall time", f"{s['wall_time_s']:.1f} s (compile {s['compile_time_s']:.1f} s)"),
        ("throughput", f"{s['images_per_sec']:.0f} images/s" if s["images_per_sec"] else "-"),
        ("checkpoints", s["checkpoints"]),
    ]
    if s.get("exported"):
        rows.append(("exported weights", s["exported"]))
    for k, v in rows:
        t.add_row(f"[bold]{k}[/]", v)
    console.print(t)


@app.command("eval")
@_cli_errors
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
        _print_json(result)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{result['run']} (step {result['checkpoint_step']}, {split} split)")
    for col in ("accuracy", "top-5 accuracy", "error", "loss", "examples"):
        t.add_column(col, justify="right")
    t.add_row(f"{result['accuracy']:.4f}", f"{result['top5_accuracy']:.4f}", f"{result['error']:.4f}",
              f"{result['loss']:.4f}", str(result["num_examples"]))
    Console().print(t)


@app.command()
@_cli_errors
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
        _print_json(s)
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


@app.command()
@_cli_errors
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
        _print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table()
    for col, just in (("name", "left"), ("family", "left"), ("input", "right"), ("params", "right"),
                      ("description", "left")):
        t.add_column(col, justify=just)
    for r in rows:
        t.add_row(r["name"], r["family"], "x".join(map(str, r["default_input"])), f"{r['params']:,}",
                  r["description"])
    Console().print(t)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except CnnError as exc:  # raised outside a command (should not happen) or with --debug
        if _state["debug"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
