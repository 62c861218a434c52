"""Run directories after the fact: find them, summarise them (`cnn runs`), read their metric
history (`cnn plot`).

A run's status is what its status.json says (running / finished / interrupted / failed),
"unknown" when that file is missing, or "unreadable" when it is not a JSON object naming one
of those (damage, someone else's file). A process killed without a chance to
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

from cnncli import regular_file
from cnncli.errors import RunDirError
from cnncli.rundir import STATUSES, RunDir

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
    earlier one (the loop may log the last step twice); lines that are not records (a torn line of
    a killed run, damage) are skipped: `read_records_counted` says how many."""
    return read_records_counted(run)[0]


def _step_of(rec: Any) -> int | None:
    """A record's step: a non-negative whole number, else None (not a record)."""
    step = rec.get("step") if isinstance(rec, dict) else None
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) or step < 0 \
            or step != int(step):
        return None
    return int(step)


def read_records_counted(run: str | Path) -> tuple[list[dict[str, Any]], int]:
    """(`read_records`, how many non-empty lines were not records and were skipped)."""
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        return [], 0
    try:
        text = regular_file.read_bytes(path, RunDirError).decode("utf-8", errors="replace")
    except (OSError, RunDirError):  # unreadable, or not a file at all: no history
        return [], 0
    records: dict[tuple[str, int], dict] = {}
    bad = 0
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            bad += bool(line.strip())
            continue
        step = _step_of(rec)
        if step is None or not isinstance(rec.get("split"), str):
            bad += 1
            continue
        records[(rec["split"], step)] = {**rec, "step": step}
    return sorted(records.values(), key=lambda r: (r["step"], r["split"])), bad


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
    """The JSON object in `path`; None when it is missing, not a regular file, not UTF-8, not JSON
    or not an object."""
    try:
        obj = json.loads(regular_file.read_text(path, RunDirError))
    except (OSError, ValueError, RunDirError):
        return None
    return obj if isinstance(obj, dict) else None


def _read_config(path: Path) -> dict:
    import yaml

    try:
        raw = yaml.safe_load(regular_file.read_text(path, RunDirError))
    except (OSError, ValueError, RunDirError, yaml.YAMLError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _word(v: Any) -> str | None:
    """A short text field of someone else's file (model, dataset), or None."""
    return v if isinstance(v, str) and v and len(v) <= 200 else None


def _status_word(path: Path, status: dict | None) -> str:
    """status.json's word: "unknown" when there is none, "unreadable" when it is damaged."""
    if not (path / "status.json").exists():
        return "unknown"
    word = status.get("status") if status is not None else None
    return _live_status(path, word) if word in STATUSES else "unreadable"


def summarize_run(path: str | Path, root: str | Path | None = None) -> dict[str, Any]:
    """One row of `cnn runs` (keys: RUN_COLUMNS, path, updated).

    epochs_done, wall_time_s and images_per_sec come from status.json once the run has
    ended, and from its metrics so far while it runs. best_val_accuracy is the highest
    validation accuracy in metrics.jsonl; test_accuracy is results.json's.
    """
    path = Path(path)
    read = _read_json(path / "status.json")
    status = read if read is not None and read.get("status") in STATUSES else {}  # nothing of a damaged one
    cfg = _read_config(path / "config.yaml")
    records = read_records(path)
    results = _read_json(path / "results.json") or {}
    model = _word((cfg.get("model") or {}).get("name")) if isinstance(cfg.get("model"), dict) else None
    dataset = _word((cfg.get("data") or {}).get("source")) if isinstance(cfg.get("data"), dict) else None

    val_acc = [v for r in records if r["split"] == "val" and (v := _number(r.get("accuracy"))) is not None]
    train = [r for r in records if r["split"] == "train"]
    epochs = [e for r in records if (e := _number(r.get("epoch"))) is not None]
    last_speed = next((s for r in reversed(train) if (s := _number(r.get("images_per_sec"))) is not None), None)
    mtimes = [p.stat().st_mtime for p in (path / "status.json", path / "metrics.jsonl") if p.exists()]
    name = path.name if root is None or path == Path(root) else str(path.relative_to(root))
    return {
        "name": name,
        "path": str(path),
        "model": model or _word(status.get("model")),
        "dataset": dataset or _word(status.get("dataset")),
        "status": _status_word(path, read),
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
        rows = list(csv.DictReader(regular_file.read_bytes(path / "metrics.csv", RunDirError)
                                   .decode("utf-8", errors="replace").splitlines()))
    except (OSError, RunDirError, csv.Error):
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
