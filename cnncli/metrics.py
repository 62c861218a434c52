"""Metric writers (JSONL, per-epoch CSV, TensorBoard) and the Rich progress display."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

from cnncli.atomic import write_text_atomic

CSV_COLUMNS = ["epoch", "step", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_top5_accuracy",
               "lr", "images_per_sec", "epoch_time_s", "wall_time_s"]


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf
    return v


def truncate_after(path: Path, step: int) -> int:
    """Keep the JSONL records with step <= `step` (resuming from an earlier checkpoint); drop lines that
    are not records (a torn last line of a killed process, damage). Returns how many lines were dropped
    as unreadable. The file is replaced whole (cnncli.atomic): call it before a writer opens the file."""
    if not path.exists():
        return 0
    keep, bad = [], 0
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
            s = record["step"]
            if not isinstance(s, (int, float)) or isinstance(s, bool):
                raise TypeError(s)
        except (ValueError, TypeError, KeyError):
            bad += line.strip() != ""
            continue
        if s <= step:
            keep.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in keep))
    return bad


def truncate_csv_after(path: Path, step: int) -> int:
    """Keep the epoch rows with step <= `step`; drop unreadable rows. Returns how many were dropped. The file
    is replaced whole (cnncli.atomic): call it before a writer opens the file."""
    if not path.exists():
        return 0
    rows, bad = [], 0
    with path.open(newline="", errors="replace") as f:
        for r in csv.DictReader(f):
            try:
                s = int(float(r.get("step") or ""))
            except (TypeError, ValueError):
                bad += 1
                continue
            if s <= step:
                rows.append({k: r.get(k) for k in CSV_COLUMNS})
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=CSV_COLUMNS)
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(path, text.getvalue())
    return bad


_HIDE_TORCH = [False]  # set by the `cnn` command alone (hide_torch_from_tensorboardx)


def hide_torch_from_tensorboardx() -> None:
    """For the `cnn` command: import tensorboardX without PyTorch (below). Called once at start, before
    any thread; a program that imports cnncli as a library keeps tensorboardX's own import."""
    _HIDE_TORCH[0] = True


def _summary_writer_class():
    """tensorboardX's SummaryWriter. tensorboardX imports torch where it is installed only to accept
    torch tensors (cnn writes floats): 1.1 s of a run's start-up here. In the `cnn` command, where
    torch is not imported yet, it is hidden for the length of this import only (a None entry in
    sys.modules makes `import torch` fail, and tensorboardX goes on without it). Not in a library
    user's process: a module first imported in that window, or another thread, would see no torch."""
    hide = _HIDE_TORCH[0] and "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return SummaryWriter


class MetricsWriter:
    """Appends metric records to metrics.jsonl (+ TensorBoard) and epoch rows to metrics.csv."""

    def __init__(self, jsonl: Path, csv_path: Path, tensorboard_dir: Path | None = None):
        self.jsonl_path, self.csv_path = jsonl, csv_path
        self._jsonl = jsonl.open("a")
        new_csv = not csv_path.exists() or csv_path.stat().st_size == 0
        self._csv_file = csv_path.open("a", newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        if new_csv:
            self._csv.writeheader()
        self._tb = None
        if tensorboard_dir is not None:
            try:
                self._tb = _summary_writer_class()(str(tensorboard_dir), flush_secs=10)
            except ImportError:
                self._tb = None

    def write(self, step: int, epoch: float, split: str, values: dict[str, float]) -> None:
        record = {"step": int(step), "epoch": round(float(epoch), 4), "split": split}
        for k, v in values.items():
            if isinstance(v, float):
                v = _clean(v)
            elif hasattr(v, "item"):  # numpy / jax scalars
                v = _clean(v.item())
            record[k] = v
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(float(v)):
                    self._tb.add_scalar(f"{split}/{k}", float(v), int(step))

    def write_epoch_row(self, row: dict[str, Any]) -> None:
        self._csv.writerow(row)
        self._csv_file.flush()

    def close(self) -> None:
        self._jsonl.close()
        self._csv_file.close()
        if self._tb is not None:
            self._tb.close()


class NullMetricsWriter:
    """What a process other than process 0 writes: nothing (process 0 writes the run's metrics)."""

    def write(self, step: int, epoch: float, split: str, values: dict[str, float]) -> None:
        pass

    def write_epoch_row(self, row: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class TrainProgress:
    """Live progress: epoch, step, loss, accuracy, learning rate, images/s (compile excluded), ETA.

    On a terminal it is a Rich progress bar; otherwise the loop's per-epoch lines are all that show.
    """

    def __init__(self, console, total_steps: int, start_step: int, steps_per_epoch: int, total_epochs: float):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = console
        self.steps_per_epoch, self.total_epochs = steps_per_epoch, total_epochs
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            disable=not console.is_terminal,
        )
        self.task = self.progress.add_task("train", total=total_steps, completed=start_step,
                                           epoch=self._epoch(start_step), stats="compiling...")

    def _epoch(self, step: int) -> str:
        return f"{step // self.steps_per_epoch + 1}/{math.ceil(self.total_epochs)}"

    def __enter__(self) -> TrainProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, step: int, values: dict[str, float] | None = None) -> None:
        fields: dict[str, Any] = {"epoch": self._epoch(min(step, self.progress.tasks[0].total - 1))}
        if values:
            fields["stats"] = (
                f"loss {values['loss']:.4f}  acc {values['accuracy']:.3f}  lr {values['lr']:.3g}  "
                f"{values.get('images_per_sec', 0):.0f} img/s"
            )
        self.progress.update(self.task, completed=step, **fields)
