"""The run directory: where a training run writes everything, and how it is found again.

    runs/<name>/
      config.yaml     fully resolved config (defaults + file + overrides + data-derived sizes)
      split.json      how train/val/test were split (seed, held-out indices)
      data.json       class names, image shape, normalisation mean/std
      metrics.jsonl   one object per logged step and per evaluation
      metrics.csv     one row per epoch
      status.json     running / finished / interrupted / failed, timings
      checkpoints/    Orbax steps (latest + best)
      results.json    final test-split evaluation of the best checkpoint
      model.safetensors  exported best weights
      tensorboard/    event files
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from cnncli.errors import RunDirError


def default_run_name(config_path: str | Path | None) -> str:
    stem = Path(config_path).stem if config_path else "run"
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON via a temporary file and rename, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


class RunDir:
    """Paths and small files of one run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_jsonl(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def metrics_csv(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def results(self) -> Path:
        return self.path / "results.json"

    @property
    def status_file(self) -> Path:
        return self.path / "status.json"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    def exists(self) -> bool:
        return self.path.exists()

    def is_run(self) -> bool:
        return self.config.is_file()

    @classmethod
    def create(cls, path: str | Path, *, force: bool = False) -> RunDir:
        """A fresh run directory. Refuses an existing non-empty one unless `force` (which clears it)."""
        run = cls(path)
        if run.path.exists() and any(run.path.iterdir()):
            if not force:
                raise RunDirError(
                    f"run directory {run.path} already exists; use --resume {run.path} to continue it, "
                    "--force to replace it, or --name/--run-dir for a new one"
                )
            if not run.is_run():
                raise RunDirError(f"--force refuses to clear {run.path}: it is not a run directory (no config.yaml)")
            shutil.rmtree(run.path)
        run.path.mkdir(parents=True, exist_ok=True)
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        run = cls(path)
        if not run.path.is_dir():
            raise RunDirError(f"no such run directory: {run.path}")
        if not run.is_run():
            raise RunDirError(f"{run.path} is not a run directory (no config.yaml)")
        return run

    def read_json(self, name: str) -> Any:
        p = self.path / name
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RunDirError(f"{p}: unreadable JSON ({exc})") from None

    def write_json(self, name: str, obj: Any) -> None:
        write_json_atomic(self.path / name, obj)

    def set_status(self, status: str, **fields: Any) -> None:
        current = self.read_json("status.json") or {}
        current.update(fields, status=status, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.write_json("status.json", current)
