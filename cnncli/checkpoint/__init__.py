"""Orbax checkpoints of a run: save / restore / latest / best, seals, and typed damage.

Each checkpoint step holds three items:
  model  -- params, BatchNorm statistics, EMA params (what evaluation needs)
  train  -- optimizer state, step, lr scale, non-finite counters (what resuming needs too)
  meta   -- JSON: epoch, data position, counters, plateau state, model identity, class names

The package, in reading order:
  manager.py   CheckpointManager: save (asynchronous, atomic), seal, restore
  fallback.py  what a resume restores: the newest intact sealed step, past damaged and unverified ones
  state.py     the verdict on a step as values: StepState, Damage(kind, reason), DamagedCheckpoint
  seal.py      the SHA-256 manifest written beside a finished step, and the check that reads it
  best.py      metric_mode and improves: which step is best (Orbax ranks, by our direction)
  orbax_io.py  Orbax's manager as cnn opens it, its noise kept quiet in a scope, its leftovers
  find.py      find_checkpoint_dir: a run, its checkpoints/ or one step

Keeps the latest `keep_last` plus the best `keep_best`. Saves are asynchronous and atomic: Orbax
writes into a `*.orbax-checkpoint-tmp*` directory and renames it when complete; leftovers of an
interrupted save are removed when the directory is next opened for writing and ignored when reading.

Integrity: once a save is known complete (at the next save, `wait()` or `close()`) its files'
SHA-256 are written beside it, and every restore checks them first, since tensorstore decodes
flipped bytes into wrong numbers silently. A damaged step is refused in one line naming it and the
intact steps (`DamagedCheckpoint`); `restore_latest_intact` falls back past damaged steps. A step
without its checksums (a process killed between Orbax's save and the seal, an older cnn, or a
deleted cnn_sha256.json) is unverified: a resume passes over it to the newest sealed step where
there is one, and says so; where none is sealed it restores it with a warning.

Nothing here changes the process: Orbax's own log records and the debris of its failed reads and
writes are dropped only inside the manager's operations (orbax_io.quiet), and everything is as
before once they end.
"""

from cnncli.checkpoint.best import improves, metric_mode
from cnncli.checkpoint.find import find_checkpoint_dir
from cnncli.checkpoint.manager import CheckpointManager, Restored
from cnncli.checkpoint.state import MANIFEST, UNVERIFIED, Damage, DamagedCheckpoint, DamageKind, StepState

__all__ = ["MANIFEST", "UNVERIFIED", "CheckpointManager", "Damage", "DamageKind", "DamagedCheckpoint", "Restored",
           "StepState", "find_checkpoint_dir", "improves", "metric_mode"]
