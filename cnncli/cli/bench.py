"""`cnn bench`: time the real training step of a model or config."""

from __future__ import annotations

from typing import Annotated

import typer

from cnncli.cli.app import Format, app, cli_errors, print_json


@app.command()
@cli_errors
def bench(
    target: Annotated[str, typer.Argument(help="A model name (`cnn models`) or a YAML config file.",
                                          show_default=False)],
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b",
                                                      help="Global batch (default: the config's, 128).")] = None,
    input_size: Annotated[int | None, typer.Option("--input-size",
                                                      help="Square input size (default: the model's).")] = None,
    dtype: Annotated[str | None, typer.Option(help="Compute dtype: float32 or bfloat16 (default: the config's).")
                     ] = None,
    steps: Annotated[int, typer.Option(help="Timed steps, split into windows after the warm-up.")] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed steps after compilation.")] = 2,
    data: Annotated[str, typer.Option(help="synthetic (random uint8 batch) or config (the config's dataset).")
                    ] = "synthetic",
    format: Annotated[Format, typer.Option("--format")] = Format.table,
) -> None:
    """Compile time, step time, images/s (train and eval), XLA FLOPs and MFU of the training step."""
    from cnncli.bench import BenchRequest, run_bench
    from cnncli.errors import ConfigError

    if warmup < 0:
        raise ConfigError(f"--warmup must be zero or more, got {warmup}")
    req = BenchRequest(target, batch_size=batch_size, input_size=input_size, dtype=dtype, steps=steps, data=data,
                       warmup_steps=warmup)

    def progress(msg: str) -> None:
        typer.echo(msg, err=True)

    from cnncli.accelerators import warn_if_idle

    warn_if_idle(progress)
    report = run_bench(req, progress)
    if format == Format.json:
        print_json(report)
    else:
        _print_report(report)


def _si(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.2f} {unit}"


def _print_report(r: dict) -> None:
    from cnncli.console import Console
    from rich.table import Table

    d = r["device"]
    t = Table(title=f"{r['model']}  batch {r['batch_size']}  {r['input_size']}x{r['input_size']}  {r['dtype']}",
              show_header=False, box=None)
    rows = [
        ("device", f"{d['count']} x {d['kind']} ({d['platform']})"),
        ("compile", f"{r['compile_time_s']:.1f} s train, {r['eval_compile_time_s']:.1f} s eval"),
        ("train step", (f"{r['step_time_ms']:.2f} ms (spread {r['step_time_ms_spread']:.2f} ms over "
                        f"{r['windows']} windows)")),
        ("train throughput", f"{r['images_per_second']:,.0f} images/s"),
        ("eval throughput", f"{r['eval_images_per_second']:,.0f} images/s"),
        ("XLA FLOPs / step", _si(r["flops_per_step"], "FLOP")),
        ("achieved", _si(r["achieved_flops_per_second"], "FLOP/s")),
        ("MFU", f"{r['mfu']:.1%} of {_si(r['peak_flops_per_second'], 'FLOP/s')} bf16 peak" if r["mfu"] else "-"),
        ("conv / batch norm", r["kernels"]),
        ("XLA_FLAGS", r["xla_flags"] or "-"),
        ("GLIBC_TUNABLES", r["glibc_tunables"] or "-"),
        ("LD_PRELOAD", r["ld_preload"] or "-"),
    ]
    for k, v in rows:
        t.add_row(f"[bold]{k}[/]", v)
    Console().print(t)
