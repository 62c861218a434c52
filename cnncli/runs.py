"""Run directories after the fact: find them, summarise them (`cnn runs`), read their metric
history (`cnn plot`).

A run's status is what its status.json says (running / finished / interrupted / failed),
or "unknown" when that file is missing or unreadable. A process killed without a chance to
write (SIGKILL, power loss, an out-of-memory kill) leaves "running" in status.json; its
run directory's lock died with it, so such a run is listed as "dead" (resume it).
`updated` is the newest modification time of status.json and metrics.jsonl.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.errors import RunDirError
from cnncli.rundir import RunDir

RUN_COLUMNS = ("name", "model", "dataset", "status", "epochs_done", "best_val_accuracy", "test_accuracy",
               "wall_time_s", "images_per_sec")
SORT_KEYS = RUN_COLUMNS + ("updated",)
_MAX_DEPTH = 4  # how deep `find_runs` looks for runs below the root


def _number(v: Any) -> float | None:
    """A finite-or-not float from a JSON value (the writers store NaN/Inf as strings), else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def read_records(run: str | Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl, one per (split, step): a later record replaces an
    earlier one (the loop may log the last step twice); torn lines of a killed run are skipped."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        return []
    records: dict[tuple[str, int], dict] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "split" in rec and "step" in rec:
            records[(str(rec["split"]), int(rec["step"]))] = rec
    return sorted(records.values(), key=lambda r: (int(r["step"]), str(r["split"])))


def metric_series(records: list[dict[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    """Per metric `<split>_<name>` (e.g. train_loss, val_accuracy): arrays 'step', 'epoch', 'value'.

    `<split>_error` is 1 - accuracy and `<split>_top5_error` is 1 - top-5 accuracy where a
    record does not carry them itself (training records do not).
    """
    points: dict[str, list[tuple[float, float, float]]] = {}
    for rec in records:
        values = {k: _number(v) for k, v in rec.items() if k not in ("step", "epoch", "split")}
        values = {k: v for k, v in values.items() if v is not None}
        for acc, err in (("accuracy", "error"), ("top5_accuracy", "top5_error")):
            if acc in values and err not in values:
                values[err] = 1.0 - values[acc]
        step = float(rec["step"])
        epoch = _number(rec.get("epoch"))
        for k, v in values.items():
            points.setdefault(f"{rec['split']}_{k}", []).append((step, math.nan if epoch is None else epoch, v))
    return {name: {"step": np.array([p[0] for p in pts]), "epoch": np.array([p[1] for p in pts]),
                   "value": np.array([p[2] for p in pts])} for name, pts in points.items()}


def _live_status(path: Path, status: str) -> str:
    """status.json's word, except that a "running" run whose process is gone (its lock is free) is "dead"."""
    if status == "running" and (path / ".lock").exists() and RunDir(path).owner() is None:
        return "dead"
    return status


def is_run_dir(path: Path) -> bool:
    """A run directory has its config.yaml and cnn's marker (or, for older runs, something training writes)."""
    run = RunDir(path)
    return run.is_run() and (run.is_cnn_run() or run.metrics_jsonl.exists() or run.checkpoints.exists())


def find_runs(root: str | Path) -> list[Path]:
    """`root` itself if it is a run, else every run directory below it (up to 4 levels), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise RunDirError(f"no such directory: {root}")
    if is_run_dir(root):
        return [root]
    found = []
    for dirpath, dirnames, _ in os.walk(root, followlinks=True):  # depth-limited, so link loops end
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        if depth and is_run_dir(here):
            found.append(here)
            dirnames[:] = []  # nothing inside a run is another run
            continue
        dirnames[:] = [] if depth >= _MAX_DEPTH else sorted(d for d in dirnames if not d.startswith("."))
    return sorted(found)


def _read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _read_config(path: Path) -> dict:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return raw if isinstance(raw, dict) else {}


def summarize_run(path: str | Path, root: str | Path | None = None) -> dict[str, Any]:
    """One row of `cnn runs` (keys: RUN_COLUMNS, path, updated).

    epochs_done, wall_time_s and images_per_sec come from status.json once the run has
    ended, and from its metrics so far while it runs. best_val_accuracy is the highest
    validation accuracy in metrics.jsonl; test_accuracy is results.json's.
    """
    path = Path(path)
    status = _read_json(path / "status.json") or {}
    cfg = _read_config(path / "config.yaml")
    records = read_records(path)
    results = _read_json(path / "results.json") or {}
    model = (cfg.get("model") or {}).get("name") if isinstance(cfg.get("model"), dict) else None
    dataset = (cfg.get("data") or {}).get("source") if isinstance(cfg.get("data"), dict) else None

    val_acc = [v for r in records if r["split"] == "val" and (v := _number(r.get("accuracy"))) is not None]
    train = [r for r in records if r["split"] == "train"]
    epochs = [e for r in records if (e := _number(r.get("epoch"))) is not None]
    last_speed = next((s for r in reversed(train) if (s := _number(r.get("images_per_sec"))) is not None), None)
    mtimes = [p.stat().st_mtime for p in (path / "status.json", path / "metrics.jsonl") if p.exists()]
    name = path.name if root is None or path == Path(root) else str(path.relative_to(root))
    return {
        "name": name,
        "path": str(path),
        "model": model or status.get("model"),
        "dataset": dataset or status.get("dataset"),
        "status": _live_status(path, status.get("status", "unknown")),
        "epochs_done": _number(status.get("epochs_done")) if "epochs_done" in status else (
            max(epochs) if epochs else None),
        "best_val_accuracy": max(val_acc) if val_acc else None,
        "test_accuracy": _number(results.get("accuracy", status.get("test_accuracy"))),
        "wall_time_s": _number(status.get("wall_time_s")) if "wall_time_s" in status else _last_csv_wall_time(path),
        "images_per_sec": _number(status.get("images_per_sec")) if "images_per_sec" in status else last_speed,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(max(mtimes))) if mtimes else None,
    }


def _last_csv_wall_time(path: Path) -> float | None:
    import csv

    try:
        with (path / "metrics.csv").open() as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return None
    return _number(rows[-1].get("wall_time_s")) if rows else None


def list_runs(root: str | Path = "runs", *, sort: str = "name", reverse: bool = False) -> list[dict[str, Any]]:
    """Summaries of every run under `root`, sorted by `sort` (ascending unless `reverse`);
    runs missing the sort value come last either way."""
    if sort not in SORT_KEYS:
        raise RunDirError(f"--sort must be one of {', '.join(SORT_KEYS)}, got {sort!r}")
    rows = [summarize_run(p, root) for p in find_runs(root)]
    present = sorted((r for r in rows if r[sort] is not None), key=lambda r: (r[sort], r["name"]), reverse=reverse)
    return present + [r for r in rows if r[sort] is None]
