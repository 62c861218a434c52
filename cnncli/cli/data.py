"""`cnn data`: what a config's dataset holds, and what training will see of it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cnncli.cli.app import Format, SetOption, app, cli_errors, print_json


@app.command()
@cli_errors
def data(
    config: Annotated[Path, typer.Argument(help="YAML experiment file.", show_default=False)],
    overrides: SetOption = None,
    grid: Annotated[Optional[Path], typer.Option(help="Write a PNG of sample images before/after augmentation.")]
    = None,
    samples: Annotated[int, typer.Option(min=1, max=64, help="Images in the --grid.")] = 16,
    format: Annotated[Format, typer.Option("--format")] = Format.table,
) -> None:
    """Summarise the dataset: source, splits, classes and counts, image shape, pixel mean/std."""
    from cnncli.config import load_config, resolve_data_shape
    from cnncli.data.describe import describe_dataset
    from cnncli.data.pipeline import prepare_dataset

    # a fixed model input size/channels decides the conversion, as in training
    data_cfg = resolve_data_shape(load_config(config, overrides)).data
    dataset = prepare_dataset(data_cfg)
    summary = describe_dataset(dataset)
    if grid is not None:
        from cnncli.data.preview import save_augmentation_grid

        summary["grid"] = str(save_augmentation_grid(dataset, data_cfg, grid, samples=samples))
    if format == Format.json:
        print_json(summary)
    else:
        _print_summary(summary)


def _print_summary(s: dict) -> None:
    from rich.console import Console
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
