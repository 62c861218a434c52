"""What a run directory holds, read once for the page: its `cnn runs` row, status.json,
results.json, data.json, config (with the keys that differ from the defaults) and metric
history, plus a list of what is missing. Reading never fails on a run that is incomplete:
a file that is absent or unreadable is simply not there, and says so in `missing`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from cnncli.errors import CnnError, RunDirError
from cnncli.runs import is_run_dir, metric_series, read_records, summarize_run


@dataclasses.dataclass
class RunFacts:
    path: Path
    row: dict[str, Any]  # `cnn runs`' row: name, model, dataset, status, epochs_done, ...
    status: dict[str, Any]
    results: dict[str, Any] | None  # the test evaluation training wrote
    data: dict[str, Any] | None
    config: Any  # Config, or None where config.yaml does not load
    config_flat: list[tuple[str, Any, Any]]  # (dotted key, value, default)
    series: dict[str, dict[str, Any]]  # metric_series of metrics.jsonl
    missing: list[str]

    @property
    def name(self) -> str:
        return self.row["name"]

    @property
    def finished(self) -> bool:
        return self.row["status"] == "finished"


def _read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(cfg: Any) -> list[tuple[str, Any, Any]]:
    """Every (dotted key, value, default value) of the config, in the schema's order."""
    from cnncli.config import Config

    values, defaults = _flatten(cfg.to_dict()), _flatten(Config().to_dict())
    return [(k, v, defaults.get(k)) for k, v in values.items()]


def read_run(path: str | Path) -> RunFacts:
    """Everything the page shows that needs no model: a RunDirError only if `path` is no run at all."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"no such run directory: {path}")
    if not is_run_dir(path):
        raise RunDirError(f"{path} is not a run directory (expected config.yaml and metrics.jsonl)")
    missing = []
    row = summarize_run(path)
    status = _read_json(path / "status.json") or {}
    if not status:
        missing.append("status.json is missing or unreadable: the run's status, timings and environment are unknown")
    results = _read_json(path / "results.json")
    if results is None:
        why = {"running": "the run is still training", "dead": "the run's process died before the end",
               "interrupted": "the run was interrupted", "failed": "the run failed"}.get(row["status"], "")
        missing.append("no test evaluation (results.json)" + (f": {why}" if why else ""))
    data = _read_json(path / "data.json")
    cfg, flat = None, []
    try:
        from cnncli.config import load_config

        cfg = load_config(path / "config.yaml")
        flat = config_differences(cfg)
    except CnnError as exc:
        missing.append(f"config.yaml does not load: {exc}")
    series = metric_series(read_records(path))
    if not series:
        missing.append("no metrics recorded yet (metrics.jsonl is empty)")
    return RunFacts(path, row, status, results, data, cfg, flat, series, missing)
