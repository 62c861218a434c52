"""The comparison page of several runs: their curves overlaid (as `cnn plot` draws them), a table of
their key figures, and their ensemble's test accuracy (as `cnn eval RUN RUN ...` measures it) where
their test sets agree.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from cnncli.errors import CnnError
from cnncli.report import html as h
from cnncli.report.facts import RunFacts, read_run
from cnncli.report.sections import duration, value

_CURVES = ((["train_loss", "val_loss"], "epoch", False), (["train_error", "val_error"], "epoch", True),
           (["train_lr", "train_images_per_sec"], "step", False))


def _labels(facts: list[RunFacts]) -> list[str]:
    names = [f.name for f in facts]
    return names if len(set(names)) == len(names) else [str(f.path) for f in facts]


def key_figures(facts: list[RunFacts]) -> str:
    header = ["run", "model", "data", "status", "epochs", "best val acc", "test acc", "top-5", "test loss",
              "wall time", "img/s"]
    rows = []
    for label, f in zip(_labels(facts), facts):
        r, res = f.row, f.results or {}
        cells = [h.esc(label), h.esc(r["model"] or "-"), h.esc(r["dataset"] or "-"),
                 f'<span class="status-{h.esc(r["status"])}">{h.esc(r["status"])}</span>',
                 h.esc(h.number(r["epochs_done"], ".2f")),
                 value(f"{label}.runs.best_val_accuracy", r["best_val_accuracy"]),
                 *(value(f"{label}.results.{k}", res.get(k)) for k in ("accuracy", "top5_accuracy", "loss")),
                 h.esc(duration(r["wall_time_s"])), value(f"{label}.runs.images_per_sec", r["images_per_sec"], ",.0f")]
        rows.append("<tr>" + "".join(f"<td{' class=num' if i >= 4 else ''}>{c}</td>" for i, c in enumerate(cells))
                    + "</tr>")
    head = "".join(f"<th{' class=num' if i >= 4 else ''}>{h.esc(c)}</th>" for i, c in enumerate(header))
    missing = "".join(h.missing(f"{label}: {m}") for label, f in zip(_labels(facts), facts) for m in f.missing)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{missing}"


def curves(facts: list[RunFacts]) -> str:
    from cnncli.plots import plot_curves

    paths, labels = [f.path for f in facts], _labels(facts)
    figs = []
    for metrics, x, percent in _CURVES:
        present = [m for m in metrics if any(m in f.series for f in facts)]
        if present:
            figs.append(h.figure(plot_curves(paths, present, x=x, labels=labels, percent=percent),
                                 alt=", ".join(present)))
    if not figs:
        return h.missing("none of the runs has recorded metrics yet")
    return h.note("one colour per run") + f'<div class="figs">{"".join(figs)}</div>'


def ensemble(facts: list[RunFacts]) -> str:
    """The runs' best checkpoints on the test split, alone and as an ensemble (mean of probabilities)."""
    from cnncli.evaluate import evaluate_models

    try:
        report = evaluate_models([f.path for f in facts], split="test")
    except CnnError as exc:
        return h.missing(f"no ensemble: {exc}")
    rows = [(m["path"], m["checkpoint_step"], f"{m['accuracy']:.4f}", f"{m['top5_accuracy']:.4f}",
             f"{m['loss']:.4f}") for m in report["members"]]
    e, g = report["ensemble"], report["gain"]
    rows.append(("ensemble (mean of softmax probabilities)", "", f"{e['accuracy']:.4f}", f"{e['top5_accuracy']:.4f}",
                 f"{e['loss']:.4f}"))
    table = h.table(["model", "step", "accuracy", "top-5 accuracy", "loss"], rows, numeric_from=1)
    return (h.note(f"the runs' best checkpoints on their common test split ({e['num_examples']} examples), as "
                   "`cnn eval` measures them")
            + table + '<p>ensemble accuracy ' + value("ensemble.accuracy", e["accuracy"])
            + f", {g['accuracy']:+.4f} against the best member ({h.esc(g['best_member'])})</p>")


def comparison_page(paths: Sequence[str | Path]) -> str:
    facts = [read_run(p) for p in paths]
    parts = [("runs", "key figures", key_figures(facts)), ("curves", "learning curves", curves(facts)),
             ("ensemble", "ensemble", ensemble(facts))]
    subtitle = f"{len(facts)} runs; page made {time.strftime('%Y-%m-%d %H:%M')} by cnn report"
    return h.page("cnn report: " + ", ".join(_labels(facts)), subtitle, parts)
