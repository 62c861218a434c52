"""`cnn eval`: measure trained models, alone or as an ensemble."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from cnncli.cli.app import SetOption, Tta, app, cli_errors, load_model, print_json

SUMMARY_COLUMNS = ["model", "checkpoint_step", "split", "tta", "accuracy", "top5_accuracy", "error", "top5_error",
                   "loss", "num_examples"]


class EvalFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


@app.command("eval")
@cli_errors
def eval_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Run directories, checkpoint step directories or weights directories (cnn weights import); several "
                                                     "form an ensemble (mean of softmax probabilities).")],
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    checkpoint: Annotated[str, typer.Option(help="best, latest or a step number.")] = "best",
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Evaluation batch size.")] = None,
    data_path: Annotated[Optional[Path], typer.Option("--data-path", help="Replace the runs' data.path.")] = None,
    tta: Annotated[Tta, typer.Option(help="Test-time augmentation: flip averages image and mirror.")] = Tta.none,
    overrides: SetOption = None,
    format: Annotated[EvalFormat, typer.Option("--format")] = EvalFormat.table,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also write the report to FILE "
                                                   "(CSV if FILE ends in .csv, else JSON).")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Save the confusion matrix figure (e.g. confusion.png).")]
    = None,
) -> None:
    """Evaluate trained models: loss, top-1/top-5 accuracy and error, per-class metrics, confusion matrix."""
    from cnncli.accelerators import warn_if_idle
    from cnncli.evaluate import evaluate_models
    from cnncli.rundir import refuse_run_file

    warn_if_idle(lambda line: typer.echo(line, err=True))
    for option, path in (("--output", output), ("--plot", plot)):  # before the evaluation
        if path is not None:
            refuse_run_file(path, option)
    report = evaluate_models(paths, split=split, which=checkpoint, batch_size=batch_size, overrides=overrides,
                             tta=None if tta == Tta.none else tta.value, data_path=data_path, load=load_model)
    if output is not None:
        _write_report(report, output)
    if plot is not None:
        from cnncli.plots import plot_confusion, save_figure

        names = [c["name"] for c in report["per_class"]]
        title = f"{'ensemble' if 'members' in report else report['path']} ({split} split)"
        save_figure(plot_confusion(report["confusion_matrix"], names, title=title), plot)
    if format == EvalFormat.json:
        print_json(report)
    elif format == EvalFormat.csv:
        typer.echo(_csv_text(report), nl=False)
    else:
        _print_tables(report, split)


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per member and one for the ensemble (or the single model's row)."""
    def row(r: dict, name: str) -> dict:
        return {"model": name, **{k: r.get(k) for k in SUMMARY_COLUMNS[1:]}}

    if "members" not in report:
        return [row(report, report["path"])]
    return [row(m, m["path"]) for m in report["members"]] + [row(report["ensemble"], "ensemble")]


def _csv_text(report: dict[str, Any]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(summary_rows(report))
    return buf.getvalue()


def _write_report(report: dict[str, Any], path: Path) -> None:
    import json

    from cnncli.atomic import write_text_atomic
    from cnncli.errors import CnnError, one_line
    from cnncli.rundir import refuse_run_file

    refuse_run_file(path, "--output")
    text = _csv_text(report) if path.suffix.lower() == ".csv" else json.dumps(report, indent=2) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
    except OSError as exc:
        raise CnnError(f"cannot write the report to {path}: {one_line(exc)}") from None


def _print_tables(report: dict[str, Any], split: str) -> None:
    from cnncli.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"{split} split" + (f", TTA {report['tta']}" if report.get("tta") else ""))
    for col in ("model", "step", "accuracy", "top-5 acc", "error", "top-5 err", "loss", "examples"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for r in summary_rows(report):
        t.add_row(r["model"], "" if r["checkpoint_step"] is None else str(r["checkpoint_step"]),
                  f"{r['accuracy']:.4f}", f"{r['top5_accuracy']:.4f}", f"{r['error']:.4f}", f"{r['top5_error']:.4f}",
                  f"{r['loss']:.4f}", str(r["num_examples"]))
    console.print(t)
    if "gain" in report:
        g = report["gain"]
        console.print(f"ensemble vs best member ({g['best_member']}): accuracy {g['accuracy']:+.4f}, "
                      f"top-5 accuracy {g['top5_accuracy']:+.4f}, loss {g['loss']:+.4f}")

    pc = Table(title="per class" + (" (ensemble)" if "members" in report else ""))
    for col in ("class", "support", "accuracy", "precision", "recall", "F1"):
        pc.add_column(col, justify="left" if col == "class" else "right")
    for c in report["per_class"]:
        pc.add_row(c["name"], str(c["support"]), f"{c['accuracy']:.4f}", f"{c['precision']:.4f}",
                   f"{c['recall']:.4f}", f"{c['f1']:.4f}")
    console.print(pc)
    if "macro_classes" in report:
        undefined = report["macro_undefined_classes"]
        console.print(f"macro precision {report['macro_precision']:.4f}, recall {report['macro_recall']:.4f}, "
                      f"F1 {report['macro_f1']:.4f} over {report['macro_classes']} classes"
                      + (f" (left out, no examples and never predicted: {', '.join(undefined)})" if undefined else ""))

    cm = report["confusion_matrix"]
    if len(cm) > 20:
        console.print(f"confusion matrix: {len(cm)} classes; see --format json or --plot FILE")
        return
    names = [c["name"] for c in report["per_class"]]
    ct = Table(title="confusion matrix (rows: true class, columns: predicted)")
    ct.add_column("true \\ pred")
    for n in names:
        ct.add_column(n, justify="right")
    for n, row in zip(names, cm):
        ct.add_row(n, *[str(v) if v else "." for v in row])
    console.print(ct)
