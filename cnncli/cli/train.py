"""`cnn train`: run an experiment into a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cnncli.cli.app import Format, SetOption, _state, cli_errors, print_json, stderr_console, app


@app.command()
@cli_errors
def train(
    config: Annotated[Optional[Path], typer.Argument(help="YAML experiment file.", show_default=False)] = None,
    overrides: SetOption = None,
    name: Annotated[Optional[str], typer.Option(help="Run name under output.root (default: config stem + time).")] = None,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="Exact run directory path.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue this run from its newest checkpoint.")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing run directory.")] = False,
    restart: Annotated[bool, typer.Option(
        help="With --resume: train the run again from step 0 when no checkpoint of it is left.")] = False,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the resolved config and exit.")] = False,
    format: Annotated[Format, typer.Option("--format", help="Final summary format.")] = Format.table,
    cache: Annotated[bool, typer.Option(
        "--cache/--no-cache", help="Reuse compiled steps across runs (JAX's persistent compilation cache in "
                                   "<cache>/jax, <cache> being $CNN_CACHE_DIR, $XDG_CACHE_HOME/cnn or ~/.cache/cnn).")] = True,
    init_from: Annotated[Optional[Path], typer.Option(
        "--init-from", help="Start from stored weights: a `cnn weights import` directory or a run (sets "
                            "model.init_from).")] = None,
    coordinator: Annotated[Optional[str], typer.Option(
        help="Join a multi-process run: HOST:PORT of process 0 (or JAX_COORDINATOR_ADDRESS).",
        rich_help_panel="Several processes")] = None,
    num_processes: Annotated[Optional[int], typer.Option(
        help="How many processes the run has (or JAX_NUM_PROCESSES).", rich_help_panel="Several processes")] = None,
    process_id: Annotated[Optional[int], typer.Option(
        help="This process's id, 0..N-1; 0 is the coordinator (or JAX_PROCESS_ID).",
        rich_help_panel="Several processes")] = None,
    cluster_auto: Annotated[bool, typer.Option(
        "--cluster-auto", help="Take the cluster from SLURM, Open MPI or a TPU pod (jax.distributed's detection).",
        rich_help_panel="Several processes")] = False,
) -> None:
    """Train a model; writes a run directory (config, metrics, checkpoints, results)."""
    from cnncli.errors import ConfigError

    if resume is not None:
        if config is not None:
            raise ConfigError(f"give either CONFIG or --resume, not both: a resumed run keeps its own config "
                              f"({resume / 'config.yaml'}); change what may change with --set")
        if run_dir is not None or name is not None or force or init_from is not None:
            raise ConfigError("--resume continues the run in place from its checkpoint: --run-dir, --name, --force "
                              "and --init-from do not apply")
        cfg, path, note = _resumed(resume, overrides)
        if note is not None and not print_config:
            stderr_console().print(f"{path}: {note}")
            return
    else:
        if restart:
            raise ConfigError("--restart applies to --resume RUN_DIR only (a run with no checkpoint left)")
        if config is None:
            raise ConfigError("give a CONFIG file (e.g. configs/digits_resnet20.yaml) or --resume RUN_DIR")
        if init_from is not None:
            overrides = [*(overrides or []), f"model.init_from={init_from}"]
        cfg, path = _new(config, overrides, name, run_dir)
    if print_config:
        typer.echo(cfg.to_yaml(), nl=False)
        return

    from cnncli import distributed

    distributed.initialize(distributed.cluster_spec(cfg.distributed, coordinator=coordinator,
                                                    num_processes=num_processes, process_id=process_id,
                                                    auto=cluster_auto))
    if distributed.is_primary():
        from cnncli.accelerators import warn_if_idle

        warn_if_idle(lambda line: typer.echo(line, err=True))
    if cache:
        _enable_compilation_cache()
    from cnncli.train.loop import train_and_evaluate

    from cnncli.console import Console

    # process 0 alone prints progress and summaries; the others print only their own errors
    console = stderr_console() if distributed.is_primary() else Console(stderr=True, quiet=True)
    try:
        summary = train_and_evaluate(cfg, path, resume=resume is not None, force=force, console=console,
                                     init=_initializer(cfg.model.init_from), started=_state.get("started"),
                                     restart=restart)
    except distributed.ClusterError as exc:
        distributed.exit_now(exc)  # jax's exit-time shutdown would wait for the failed process, then abort
    if not distributed.is_primary():
        return
    if format == Format.json:
        print_json(summary)
    else:
        _print_train_summary(summary, console)
        console.print(f"as a page: cnn report {summary['run_dir']} -o {summary['run_dir']}.html", highlight=False)


def _resumed(resume: Path, overrides):
    """(config, run path, finished note or None) of `--resume RUN`, refusing what a resume may not change."""
    from cnncli.config import load_config
    from cnncli.errors import RunDirError
    from cnncli.rundir import RunDir
    from cnncli.train.resume import check_resume_changes, finished_note

    run = RunDir.open(resume)
    if not run.is_cnn_run():
        raise RunDirError(f"--resume refuses {run.path}: it is not a run directory cnn created (no .cnn-run "
                          "marker or run status.json), so it may be someone's project folder")
    run.check_files()
    cfg = load_config(run.config, overrides)
    check_resume_changes(load_config(run.config), cfg, run.path)
    return cfg, run.path, finished_note(run.read_json("status.json"), cfg)


def _new(config: Path, overrides, name: str | None, run_dir: Path | None):
    """(config, run path) of a new run: --run-dir, or output.root / (--name or config stem + time)."""
    from cnncli.config import load_config
    from cnncli.errors import ConfigError
    from cnncli.rundir import default_run_name

    cfg = load_config(config, overrides)
    if name is not None and (not name.strip() or name in (".", "..") or "/" in name or "\\" in name):
        raise ConfigError(f"--name {name!r} must be a plain folder name under output.root ({cfg.output.root}); "
                          "use --run-dir for a path")
    if run_dir is not None and not str(run_dir).strip():
        raise ConfigError("--run-dir is empty; give the run directory's path")
    return cfg, run_dir or Path(cfg.output.root) / (name or default_run_name(config))


def _enable_compilation_cache() -> None:
    """JAX's persistent compilation cache: a second run of the same config skips most of its compile time."""
    import jax

    from cnncli.native.cache import cache_dir

    path = cache_dir("jax")
    if path is None:
        return  # no folder to keep it in: compile every time, as with --no-cache
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # an unwritable cache: compile every time, as with --no-cache
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _initializer(init_from: str | None):
    """`init(template, num_classes)` loading `model.init_from`'s weights, or None."""
    if init_from is None:
        return None
    from cnncli.weights.finetune import load_init_weights

    return lambda template, num_classes: load_init_weights(template, init_from, num_classes)


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
        ("wall time", f"{s['wall_time_s']:.1f} s (compiling {s['compile_time_s']:.1f} s"
                      + (f"; first step after {s['first_step_s']:.1f} s)" if s.get("first_step_s") else ")")),
        ("throughput", f"{s['images_per_sec']:.0f} images/s" if s["images_per_sec"] else "-"),
        ("checkpoints", s["checkpoints"]),
    ]
    if s.get("exported"):
        rows.append(("exported weights", s["exported"]))
    for k, v in rows:
        t.add_row(f"[bold]{k}[/]", v)
    console.print(t)
