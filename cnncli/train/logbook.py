"""What a training run reports while it trains: logged steps and epoch rows.

The step returns its metrics as device arrays; `TrainLog` collects them without waiting on
the device and fetches them together when a record is due (one host synchronisation per
logging window). Numbers mean what a reader takes them to mean:
- loss / accuracy / grad_norm of a record: the mean over the steps of its window;
- lr: the rate applied at the logged step (a schedule is never averaged);
- images_per_sec: measured over the window, omitted where nothing was timed;
- an epoch row's train_loss / train_accuracy: the mean over every step of that epoch, also
  across a resume (the running sums are part of what a checkpoint restores).
"""

from __future__ import annotations

from typing import Any

import numpy as np

_MEANED = ("loss", "accuracy", "grad_norm")


def _peak_memory_bytes() -> int | None:
    """Peak memory of the first local device, where the backend reports it (GPU/TPU; not CPU)."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


class TrainLog:
    """Pending step metrics -> `train` records in metrics.jsonl, and per-epoch rows in metrics.csv."""

    def __init__(self, writer, clock, steps_per_epoch: int, saved: dict[str, Any] | None = None):
        self.writer, self.clock, self.spe = writer, clock, steps_per_epoch
        saved = saved or {}
        self._pending: list[dict] = []  # device arrays of steps not fetched yet
        self._fetched: list[dict] = list(saved.get("unrecorded") or [])  # host floats not in a record yet
        self.epoch_sums = dict(saved.get("epoch_sums") or {"loss": 0.0, "accuracy": 0.0, "n": 0})
        self.counters = (0, -1)
        self.last: dict[str, Any] = {}

    def add(self, metrics: dict) -> None:
        """One step's metrics (device arrays; not fetched yet)."""
        self._pending.append(metrics)

    def sync(self, counters) -> None:
        """Fetch the pending steps (one host synchronisation) into the epoch sums.

        `counters` is the state's (nonfinite_steps, first_nonfinite_step), fetched alongside.
        """
        import jax

        fetched, counters = jax.device_get((self._pending, counters))
        self._pending = []
        self.counters = (int(counters[0]), int(counters[1]))
        for f in fetched:
            f = {k: float(v) for k, v in f.items()}
            self._fetched.append(f)
            self.epoch_sums["loss"] += f["loss"]
            self.epoch_sums["accuracy"] += f["accuracy"]
            self.epoch_sums["n"] += 1

    def record(self, step: int, counters) -> dict[str, Any] | None:
        """Write the `train` record of the steps since the last one, at `step`; None if there were none."""
        self.sync(counters)
        if not self._fetched:
            return None
        fetched, self._fetched = self._fetched, []
        vals: dict[str, Any] = {k: float(np.mean([f[k] for f in fetched])) for k in _MEANED if k in fetched[0]}
        vals["lr"] = fetched[-1]["lr"]
        rate = self.clock.window_rate()
        if rate is not None:
            vals["images_per_sec"] = rate
        vals["nonfinite_steps"] = self.counters[0]
        peak = _peak_memory_bytes()
        if peak is not None:
            vals["peak_memory_bytes"] = peak
        self.writer.write(step, step / self.spe, "train", vals)
        self.last = vals
        return vals

    def epoch_row(self, step: int, val: dict[str, float], *, epoch_time_s: float, wall_time_s: float) -> dict:
        """Close the epoch ending at `step` (after `record`): write its CSV row, return it, start the next."""
        n = max(1, self.epoch_sums["n"])
        row = {"epoch": round(step / self.spe, 4), "step": step, "train_loss": self.epoch_sums["loss"] / n,
               "train_accuracy": self.epoch_sums["accuracy"] / n, "val_loss": val["loss"],
               "val_accuracy": val["accuracy"], "val_top5_accuracy": val["top5_accuracy"],
               "lr": self.last.get("lr"), "images_per_sec": self.last.get("images_per_sec"),
               "epoch_time_s": epoch_time_s, "wall_time_s": wall_time_s}
        self.writer.write_epoch_row(row)
        self.epoch_sums = {"loss": 0.0, "accuracy": 0.0, "n": 0}
        return row

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps (call after `sync`, so that no step is pending)."""
        return {"epoch_sums": dict(self.epoch_sums), "unrecorded": list(self._fetched)}


def epoch_line(row: dict[str, Any]) -> str:
    """The console line of an epoch row."""
    rate = row.get("images_per_sec")
    return (f"epoch {row['epoch']:6.2f}  step {row['step']:>6}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_accuracy']:.4f}  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}  "
            f"lr {row['lr'] if row['lr'] is not None else 0:.3g}"
            + (f"  {rate:.0f} img/s" if rate is not None else ""))
