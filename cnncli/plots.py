"""Matplotlib figures: learning curves of runs (`cnn plot`) and confusion matrices (`cnn eval --plot`).

Figures are built with the object-oriented API on an Agg canvas (no pyplot, no display, no
global state) and returned, so that callers and tests can inspect the plotted data.

Layouts of `plot_runs`:

- default: one panel per metric, every run in each panel (one colour per run);
- panels: one panel per group of runs, every metric in each panel, one colour per run and
  one line style per split (train dashed, val solid, test dotted with markers);
- the `he2016` preset: He et al. (2016), Fig. 1 / Fig. 6: training error (dashed) and test
  error (solid; the validation error unless every run evaluated the test split along the way,
  `train.eval_test`) in percent, plain networks in the left panel and ResNets in the right
  one, grouped and labelled by each run's model name (plain20 -> "plain-20").
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cnncli.errors import CnnError, ConfigError, RunDirError, one_line
from cnncli.rundir import refuse_run_file
from cnncli.runs import is_run_dir, metric_series, read_records, read_records_counted

FIGURES = ("he2016",)
X_AXES = ("epoch", "step")
_SPLIT_STYLE = {"train": {"linestyle": "--", "linewidth": 1.2},
                "val": {"linestyle": "-", "linewidth": 2.0},
                "test": {"linestyle": ":", "linewidth": 2.0, "marker": "o"}}


def new_figure(nrows: int = 1, ncols: int = 1, *, panel_size: tuple[float, float] = (5.0, 3.8), **subplot_kw):
    """A Figure on an Agg canvas with a [nrows, ncols] array of axes."""
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    return fig, axes


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write the figure (format from the suffix: png, pdf, svg, ...); parent folders are created."""
    path = Path(path)
    refuse_run_file(path, "--output")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    except ValueError as exc:  # unsupported format
        raise ConfigError(f"cannot write the figure to {path}: {exc}") from None
    except OSError as exc:
        raise CnnError(f"cannot write the figure to {path}: {one_line(exc)}") from None
    return path


def _split_of(metric: str) -> str:
    return metric.split("_", 1)[0]


def _load_runs(runs: Sequence[str | Path]) -> list[dict[str, dict[str, np.ndarray]]]:
    out, damaged = [], []
    for run in runs:
        path = Path(run)
        if not is_run_dir(path):
            raise RunDirError(f"{path} is not a run directory (expected config.yaml and metrics.jsonl)")
        records, bad = read_records_counted(path)
        if bad:
            damaged.append(f"{bad} in {path / 'metrics.jsonl'}")
        out.append(metric_series(records))
    if damaged:  # one warning for all runs
        print(f"warning: skipped unreadable line(s) (a torn write or damage): {'; '.join(damaged)}", file=sys.stderr)
    return out


def _check_metrics(series: list[dict], metrics: Sequence[str], runs: Sequence[str | Path]) -> None:
    if not metrics:
        raise ConfigError("--metric needs at least one metric name, e.g. train_loss,val_error")
    available = sorted(set().union(*(s.keys() for s in series)))
    for m in metrics:
        if not any(m in s for s in series):
            from cnncli.errors import did_you_mean

            raise ConfigError(f"no run among {', '.join(str(r) for r in runs)} has the metric {m!r}"
                              f"{did_you_mean(m, available)}; available: {', '.join(available)}")


def _unique_labels(labels: list[str], runs: Sequence[str | Path]) -> list[str]:
    return labels if len(set(labels)) == len(labels) else [str(r) for r in runs]


def plot_curves(runs: Sequence[str | Path], metrics: Sequence[str], *, x: str = "epoch",
                panels: Sequence[Sequence[int]] | None = None, titles: Sequence[str] | None = None,
                labels: Sequence[str] | None = None, percent: bool = False) -> Figure:
    """Learning curves of several runs (see the module docstring for the layouts).

    `panels` lists, per panel, indices into `runs`; `percent` multiplies values by 100.
    A run without one of the metrics simply has no line for it.
    """
    if x not in X_AXES:
        raise ConfigError(f"--x must be epoch or step, got {x!r}")
    if not runs:
        raise ConfigError("give at least one run directory to plot")
    series = _load_runs(runs)
    _check_metrics(series, metrics, runs)
    labels = _unique_labels(list(labels) if labels else [Path(r).name for r in runs], runs)
    scale = 100.0 if percent else 1.0
    colors = [f"C{i % 10}" for i in range(len(runs))]

    def draw(ax, run_idx: int, metric: str, label: str) -> None:
        s = series[run_idx].get(metric)
        if s is None:
            return
        order = np.argsort(s[x], kind="stable")
        ax.plot(s[x][order], s["value"][order] * scale, color=colors[run_idx], label=label,
                **_SPLIT_STYLE.get(_split_of(metric), {}))

    if panels is None:
        fig, axes = new_figure(1, len(metrics))
        for ax, metric in zip(axes[0], metrics):
            for i in range(len(runs)):
                draw(ax, i, metric, labels[i])
            _decorate(ax, x, metric + (" (%)" if percent else ""), metric)
        return fig

    groups = [list(g) for g in panels]
    if not groups or any(not g for g in groups):
        raise ConfigError("every panel needs at least one run")
    ncols = min(len(groups), 3)
    nrows = -(-len(groups) // ncols)
    fig, axes = new_figure(nrows, ncols, sharey=True)
    suffixes = {m.split("_", 1)[-1] for m in metrics}
    ylabel = (suffixes.pop() if len(suffixes) == 1 else ", ".join(metrics)) + (" (%)" if percent else "")
    for k, ax in enumerate(axes.flat):
        if k >= len(groups):
            ax.set_visible(False)
            continue
        for i in groups[k]:
            for metric in metrics:
                draw(ax, i, metric, f"{labels[i]} {metric}")
        title = titles[k] if titles and k < len(titles) else ", ".join(labels[i] for i in groups[k])
        _decorate(ax, x, ylabel, title)
    return fig


def _decorate(ax, x: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize="small")


def resolve_panels(runs: Sequence[str | Path], specs: Sequence[str]) -> tuple[list[Path], list[list[int]]]:
    """Turn `--panel A,B` specs into (runs, index groups).

    An item names one of `runs` (its path as given, or its directory name when unique) or is
    itself a run directory, which is then added to the runs.
    """
    paths = [Path(r) for r in runs]
    groups = []
    for spec in specs:
        group = []
        for item in (s.strip() for s in spec.split(",")):
            if not item:
                continue
            matches = [i for i, p in enumerate(paths) if p == Path(item)]
            if not matches:
                matches = [i for i, p in enumerate(paths) if p.name == item]
            if len(matches) > 1:
                raise ConfigError(f"--panel item {item!r} names several runs; give its path instead")
            if not matches:
                if not Path(item).is_dir():
                    raise ConfigError(f"--panel item {item!r} is neither one of the RUN arguments nor a run directory")
                paths.append(Path(item))
                matches = [len(paths) - 1]
            group.append(matches[0])
        if not group:
            raise ConfigError(f"--panel {spec!r} names no run")
        groups.append(group)
    return paths, groups


def _model_name(run: Path) -> str:
    from cnncli.runs import summarize_run

    return summarize_run(run).get("model") or run.name


def pretty_model_name(name: str) -> str:
    """plain20 -> plain-20, resnet56 -> ResNet-56; other names unchanged."""
    m = re.fullmatch(r"(plain|resnet)(\d+)", name)
    if not m:
        return name
    return ("plain-" if m.group(1) == "plain" else "ResNet-") + m.group(2)


def _depth(name: str) -> int:
    m = re.search(r"(\d+)$", name)
    return int(m.group(1)) if m else 0


def he2016_figure(runs: Sequence[str | Path], *, x: str = "epoch") -> Figure:
    """He et al. (2016), Fig. 1/6: train (dashed) and test or validation (solid) error in percent;
    plain nets left, ResNets right, shallower first. Runs are grouped by their config's model name."""
    paths = [Path(r) for r in runs]
    if not paths:
        raise ConfigError("--figure he2016 needs the runs to plot (e.g. plain-20, plain-56, ResNet-20, ResNet-56)")
    names = [_model_name(p) for p in paths]
    plain = sorted((i for i, n in enumerate(names) if n.startswith("plain")), key=lambda i: _depth(names[i]))
    other = sorted((i for i, n in enumerate(names) if not n.startswith("plain")), key=lambda i: _depth(names[i]))
    groups, titles = [], []
    for group, title in ((plain, "plain networks"), (other, "ResNets")):
        if group:
            groups.append(group)
            titles.append(title)
    labels = [pretty_model_name(n) for n in names]
    # The paper plots test error: use it where training evaluated the test split along the way
    # (train.eval_test), else the validation error.
    periodic_test = all(len(metric_series(read_records(p)).get("test_error", {"step": []})["step"]) > 1
                        for p in paths)
    held_out = "test_error" if periodic_test else "val_error"
    return plot_curves(paths, ["train_error", held_out], x=x, panels=groups, titles=titles, labels=labels,
                       percent=True)


def plot_runs(runs: Sequence[str | Path], *, metrics: Sequence[str] = ("train_loss", "val_error"), x: str = "epoch",
              panels: Sequence[str] | None = None, figure: str | None = None, percent: bool = False) -> Figure:
    """`cnn plot`: the he2016 preset, or curves in the default or `--panel` layout."""
    if figure is not None:
        if figure not in FIGURES:
            raise ConfigError(f"--figure must be one of {', '.join(FIGURES)}, got {figure!r}")
        if panels:
            raise ConfigError("--figure and --panel cannot be combined: the preset decides the panels")
        return he2016_figure(runs, x=x)
    groups = None
    if panels:
        runs, groups = resolve_panels(runs, panels)
    return plot_curves(runs, list(metrics), x=x, panels=groups, percent=percent)


def plot_confusion(cm: Any, class_names: Sequence[str], *, title: str | None = None) -> Figure:
    """Confusion matrix (rows: true class, columns: predicted), coloured by the row-normalised
    rate; counts are written in the cells for up to 20 classes."""
    cm = np.asarray(cm, np.int64)
    k = cm.shape[0]
    rows = cm.sum(axis=1, keepdims=True)
    rate = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
    side = min(12.0, 2.5 + 0.45 * k)
    fig, axes = new_figure(1, 1, panel_size=(side + 1.0, side))
    ax = axes[0, 0]
    image = ax.imshow(rate, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    if k <= 40:
        ax.set_xticks(range(k), [str(n) for n in class_names], rotation=90 if k > 10 else 0)
        ax.set_yticks(range(k), [str(n) for n in class_names])
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize="small",
                            color="white" if rate[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "confusion matrix")
    return fig
