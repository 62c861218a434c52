"""The parts of a run's page that need no model: header, learning curves, model summary, config and
environment. Each returns body HTML; figures come from cnncli.plots, the layer table and totals
from cnncli.summary, the run's row from cnncli.runs.

A number the page shows from a file carries it exactly in `data-value` (and its source in
`data-key`), so that a reader or a test can check the page against results.json.
"""

from __future__ import annotations

import json
from typing import Any

from cnncli.report import html as h
from cnncli.report.facts import RunFacts

HEADER_KEYS = (("accuracy", "test accuracy"), ("top5_accuracy", "test top-5 accuracy"), ("loss", "test loss"))


def value(key: str, v: Any, spec: str = ".4f") -> str:
    """A number shown rounded, with its exact value and source in data attributes."""
    exact = json.dumps(v)
    return f'<span class="value" data-key="{h.esc(key)}" data-value="{h.esc(exact)}">{h.esc(h.number(v, spec))}</span>'


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(round(seconds)), 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min {s:02d} s"


def _device(f: RunFacts) -> str:
    env = f.status.get("environment") or {}
    cluster = f.status.get("cluster") or {}
    if not env and not cluster:
        return "-"
    kind = env.get("device_kind") or cluster.get("platform") or "?"
    n = cluster.get("devices") or env.get("device_count")
    procs = cluster.get("processes")
    return f"{kind} x {n}" + (f" over {procs} processes" if procs and procs > 1 else "") if n else kind


def header(f: RunFacts) -> str:
    """Name, model, data, status, the test numbers of results.json, time, speed, device and kernels."""
    r, env = f.row, f.status.get("environment") or {}
    status = r["status"]
    reason = f.status.get("reason")
    items = [("run", h.esc(f.path)), ("model", h.esc(r["model"] or "-")),
             ("data", h.esc(_data_words(f))),
             ("status", f'<span class="status-{h.esc(status)}">{h.esc(status)}</span>'
                        + (f" ({h.esc(reason)})" if reason else "")),
             ("epochs", h.esc(h.number(r["epochs_done"], ".2f"))),
             ("best val accuracy", value("runs.best_val_accuracy", r["best_val_accuracy"]))]
    if f.results is not None:
        for key, label in HEADER_KEYS:
            items.append((label, value(f"results.{key}", f.results.get(key))))
        items.append(("test examples", value("results.num_examples", f.results.get("num_examples"), "d")
                      + f" (best checkpoint, step {h.esc(f.results.get('checkpoint_step'))})"))
    items += [("wall time", h.esc(duration(r["wall_time_s"]))),
              ("images/s (training)", value("runs.images_per_sec", r["images_per_sec"], ",.0f")),
              ("device", h.esc(_device(f))), ("kernels", h.esc(env.get("kernels") or "-"))]
    missing = "".join(h.missing(m) for m in f.missing)
    return h.facts(items) + missing


def _data_words(f: RunFacts) -> str:
    d = f.data or {}
    words = d.get("description") or f.row.get("dataset") or "-"
    sizes = d.get("sizes")
    if isinstance(sizes, dict):
        words += ": " + " / ".join(f"{sizes[k]} {k}" for k in ("train", "val", "test") if k in sizes)
    shape = d.get("image_shape")
    if shape:
        words += f", images {'x'.join(map(str, shape))}"
    return words


def _present(f: RunFacts, metrics: list[str]) -> list[str]:
    return [m for m in metrics if m in f.series]


def curves(f: RunFacts) -> str:
    """Loss and error per epoch and per step, learning rate and throughput (cnncli.plots.plot_curves)."""
    from cnncli.plots import plot_curves

    if not f.series:
        return h.missing("no metrics recorded yet: no curves to draw")
    figs = []
    for x in ("epoch", "step"):
        for what, percent in (("loss", False), ("error", True)):
            metrics = _present(f, [f"{s}_{what}" for s in ("train", "val", "test")])
            if metrics:
                fig = plot_curves([f.path], metrics, x=x, panels=[[0]], titles=[f"{what} per {x}"],
                                  percent=percent)
                figs.append(h.figure(fig, alt=f"{what} per {x}"))
    extra = _present(f, ["train_lr", "train_images_per_sec"])
    if extra:
        figs.append(h.figure(plot_curves([f.path], extra, x="step"), alt="learning rate and throughput per step"))
    test_note = "" if "test_loss" in f.series else " (no test point: the run has no test evaluation yet)"
    return (h.note("train dashed, validation solid, test dotted with markers; error = 1 - accuracy" + test_note)
            + f'<div class="figs">{"".join(figs)}</div>')


def model(f: RunFacts) -> str:
    """`cnn summarize RUN`'s layer table and totals (no compilation)."""
    from cnncli.errors import CnnError
    from cnncli.summary import render
    from cnncli.summary.target import summarize_targets

    try:
        s = summarize_targets([str(f.path)], compile=False)[0]
    except CnnError as exc:
        return h.missing(f"no model summary: {exc}")
    rows = render.layer_cells(s, expand=False)
    table = h.table(render.LAYER_HEADER, [cells for cells, _ in rows], numeric_from=3)
    totals = [(label.strip(), h.esc(text)) for label, text in render.totals_items(s)
              if not label.startswith("XLA")]
    title = f"{s['model']}, input {'x'.join(map(str, s['input_shape']))}, {s['num_classes']} classes"
    return (h.note(title + "; RF = receptive field, jump = its stride in input pixels; as `cnn summarize "
                   f"{f.path}` prints it") + table + h.facts(totals))


def config(f: RunFacts) -> str:
    """The resolved config.yaml, the keys that differ from cnn's defaults highlighted."""
    if f.config is None:
        return h.missing("config.yaml does not load")
    changed = [k for k, v, d in f.config_flat if v != d]
    rows = [(k, _yaml(v), _yaml(d)) for k, v, d in f.config_flat]
    classes = ["diff" if v != d else "" for _, v, d in f.config_flat]
    diff = [(k, _yaml(v), _yaml(d)) for k, v, d in f.config_flat if v != d]
    return (h.note(f"{len(changed)} of {len(rows)} keys differ from the defaults: set by the config file, --set, "
                   "or resolved from the data")
            + h.table(["key", "value", "default"], diff)
            + f"<details><summary>all {len(rows)} keys (those that differ highlighted)</summary>"
            + h.table(["key", "value", "default"], rows, row_classes=classes) + "</details>")


def _yaml(v: Any) -> str:
    return "null" if v is None else json.dumps(v) if isinstance(v, (list, dict, bool)) else str(v)


def environment(f: RunFacts) -> str:
    """Versions, device, kernels and XLA flags the run recorded when it started; the data's statistics."""
    env = f.status.get("environment")
    parts = []
    if env:
        parts.append(h.facts((k.replace("_", " "), h.esc(v if v not in ("", None) else "-")) for k, v in env.items()))
    else:
        parts.append(h.missing("the run recorded no environment (status.json has none: a run from before cnn "
                               "recorded it)"))
    cluster = f.status.get("cluster")
    if cluster:
        parts.append("<h3>devices</h3>" + h.facts((k.replace("_", " "), h.esc(v)) for k, v in cluster.items()))
    if f.data:
        shown = {k: v for k, v in f.data.items() if k not in ("class_names",)}
        parts.append("<h3>data</h3>" + h.facts((k.replace("_", " "), h.esc(_yaml(v))) for k, v in shown.items()))
    return "".join(parts)
