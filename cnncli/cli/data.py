"""`cnn data`: what a config's dataset holds, and what training will see of it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cnncli.cli.app import Format, SetOption, app, cli_errors, print_json


_PACK_FORMATS = ("raw", "jpeg")


@app.command()
@cli_errors
def data(
    config: Annotated[Path, typer.Argument(help="YAML experiment file (or the word `pack`, then the YAML file).",
                                           show_default=False)],
    pack_config: Annotated[Optional[Path], typer.Argument(help="With `pack`: the YAML experiment file.",
                                                          show_default=False)] = None,
    overrides: SetOption = None,
    grid: Annotated[Optional[Path], typer.Option(help="Write a PNG of sample images before/after augmentation.")]
    = None,
    samples: Annotated[int, typer.Option(min=1, max=64, help="Images in the --grid.")] = 16,
    bench: Annotated[bool, typer.Option("--bench", help="Time the host side of the training input pipeline.")]
    = False,
    workers: Annotated[Optional[int], typer.Option(min=0, max=1024, help="Loader worker processes for --bench "
                                                   "and pack (default: data.num_workers).")] = None,
    seconds: Annotated[float, typer.Option(min=0.1, max=3600, help="How long --bench measures.")] = 10.0,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="pack: the directory to create.")]
    = None,
    max_side: Annotated[int, typer.Option(min=8, max=4096, help="pack: images stored as squares of this side "
                                          "(the centre square; image files only).")] = 256,
    quality: Annotated[Optional[int], typer.Option(min=1, max=100, help="pack: JPEG quality with --format jpeg "
                                                   "(default 90).", show_default=False)] = None,
    format: Annotated[Optional[str], typer.Option("--format", help="table|json (default table); pack: raw|jpeg "
                                                  "(default raw).", show_default=False)] = None,
) -> None:
    """Summarise the dataset: source, splits, classes and counts, image shape, pixel mean/std.

    `cnn data CONFIG --bench` times the host side of the training pipeline (images/s per worker);
    `cnn data pack CONFIG -o DIR` writes the dataset once into a pack that `data.source: packed` reads.
    """
    from cnncli.config import load_config, resolve_data_shape
    from cnncli.errors import ConfigError

    if str(config) == "pack" and pack_config is not None and not config.is_file():
        if format not in (None, *_PACK_FORMATS):
            raise ConfigError(f"--format {format}: a pack stores raw or jpeg images")
        if output is None:
            raise ConfigError("cnn data pack needs -o DIR, the directory to create")
        if quality is not None and format != "jpeg":
            raise ConfigError("--quality applies to --format jpeg (raw images are stored as they are)")
        _pack(resolve_data_shape(load_config(pack_config, overrides)).data, output, max_side, format or "raw",
              90 if quality is None else quality, workers)
        return
    if pack_config is not None:
        raise ConfigError(f"unexpected argument {pack_config}: did you mean `cnn data pack {pack_config}`?")
    if format not in (None, Format.table.value, Format.json.value):
        raise ConfigError(f"--format {format}: expected table or json")
    as_json = format == Format.json.value
    cfg = resolve_data_shape(load_config(config, overrides))
    if bench:
        from cnncli.data.throughput import measure_host_pipeline

        report = measure_host_pipeline(cfg.data, batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                                       workers=workers, seconds=seconds)
        print_json(report) if as_json else _print_bench(report)
        return
    from cnncli.data.describe import describe_dataset
    from cnncli.data.pipeline import prepare_dataset

    if grid is not None:
        from cnncli.data.preview import check_grid_path
        from cnncli.rundir import refuse_run_file

        check_grid_path(grid)
        refuse_run_file(grid, "--grid")
    # a fixed model input size/channels decides the conversion, as in training
    data_cfg = cfg.data
    dataset = prepare_dataset(data_cfg)
    summary = describe_dataset(dataset)
    if grid is not None:
        from cnncli.data.preview import save_augmentation_grid

        summary["grid"] = str(save_augmentation_grid(dataset, data_cfg, grid, samples=samples))
    if as_json:
        print_json(summary)
    else:
        _print_summary(summary)


def _pack(data_cfg, out: Path, side: int, image_format: str, quality: int, workers: int | None) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from cnncli.data.pack import pack_dataset

    with Progress(TextColumn("packing {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), transient=False) as bar:
        tasks: dict[str, int] = {}

        def progress(split: str, done: int, total: int) -> None:
            if split not in tasks:
                tasks[split] = bar.add_task(split, total=total)
            bar.update(tasks[split], completed=done)

        manifest = pack_dataset(data_cfg, out, side=side, image_format=image_format, quality=quality,
                                workers=workers, progress=progress)
    counts = ", ".join(f"{s} {v['count']:,}" for s, v in manifest["splits"].items())
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out}: {counts} images, {manifest['side']}x{manifest['side']}x{manifest['channels']} "
          f"{manifest['image_format']}, {size / 2**20:,.1f} MiB; train from it with data.source: packed, "
          f"data.path: {out}")


def _print_bench(r: dict) -> None:
    if r["images_per_second"] is None:
        print(f"{r['source']}: {r['bound']}")
        return
    print(f"{r['source']} training split, batch {r['batch_size']}, {'x'.join(map(str, r['batch_shape']))} uint8 "
          f"batches, {r['workers']} worker(s) on {r['cpus']} CPUs:")
    print(f"  {r['images_per_second']:,.0f} images/s ({r['per_worker']:,.0f} per worker) over {r['seconds']:.1f} s, "
          f"{r['batches']} batches; start-up {r['startup_seconds']:.1f} s")
    if r.get("images_per_worker_cpu_second"):
        print(f"  {r['images_per_worker_cpu_second']:,.0f} images per CPU second of the reading (a core to itself)")
    print(f"  bound by {r['bound']}")


def _print_summary(s: dict) -> None:
    from cnncli.console import Console
    from rich.table import Table

    def numbers(values: list[float]) -> str:
        return ", ".join(f"{v:.4f}" for v in values)

    sizes = s["sizes"]
    held = f" ({', '.join(s['held_out'])} held out of train, split_seed {s['split_seed']})" if s["held_out"] else ""
    info = Table(show_header=False, box=None, title=f"dataset {s['source']}")
    rows = [
        ("source", f"{s['source']}: {s['description']}"),
        ("path", s["path"] or "-"),
        ("splits", f"train {sizes['train']:,} / val {sizes['val']:,} / test {sizes['test']:,}{held}"),
        ("image shape", "x".join(map(str, s["image_shape"])) + (" (decoded from files)" if s["file_backed"] else "")),
        ("pixel mean", numbers(s["mean"])),
        ("pixel std", f"{numbers(s['std'])}   (from {s['stats_from']})"),
    ]
    rows += [("note", note) for note in s["notes"]]
    if "grid" in s:
        rows.append(("grid", s["grid"]))
    for k, v in rows:
        info.add_row(f"[bold]{k}[/]", v)
    classes = Table(title=f"{s['num_classes']} classes")
    for col, just in (("#", "right"), ("class", "left"), ("train", "right"), ("val", "right"), ("test", "right")):
        classes.add_column(col, justify=just)
    for c in s["classes"]:
        classes.add_row(str(c["index"]), c["name"], f"{c['train']:,}", f"{c['val']:,}", f"{c['test']:,}")
    console = Console()
    console.print(info)
    console.print(classes)
