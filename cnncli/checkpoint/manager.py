"""`CheckpointManager`: a run's checkpoints/ directory -- save, seal, restore, and fall back past damage."""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnncli.checkpoint import orbax_io
from cnncli.checkpoint.best import improves, metric_mode
from cnncli.checkpoint.fallback import Restored, restore_latest_intact
from cnncli.checkpoint.orbax_io import first_line, quiet
from cnncli.checkpoint.seal import damage, has_manifest, seal
from cnncli.checkpoint.state import Damage, DamagedCheckpoint, DamageKind, StepState
from cnncli.errors import CheckpointError, one_line


class CheckpointManager:
    """Orbax's checkpoint manager for a run's `checkpoints/` directory, with seals and typed damage."""

    def __init__(self, directory: str | Path, *, keep_last: int = 2, keep_best: int = 1,
                 best_metric: str = "val_accuracy", best_mode: str | None = None, read_only: bool = False,
                 asynchronous: bool = True):
        self.directory = Path(directory).absolute()
        self.best_metric = best_metric
        self.best_mode = best_mode or metric_mode(best_metric)  # best_mode: kept for older callers
        self.read_only = read_only
        self._pending: list[int] = []  # saved steps whose manifest is not written yet
        self._intact: set[int] = set()  # steps verified by this manager
        self._sealed: set[int] = set()  # steps this manager wrote and sealed
        self._metrics: dict[int, dict] = {}  # metrics of the steps saved by this manager
        self._closed = False
        self._write_failed_once = False  # a failed save may leave temporaries behind until close()
        self._saving = contextlib.ExitStack()  # Orbax's reports stay quiet from the first save to close()
        self._quieted = False
        if not read_only:
            orbax_io.clean_temporaries(self.directory)
        try:
            with quiet():
                self._mgr = orbax_io.open_manager(
                    self.directory, keep_last=keep_last, keep_best=keep_best, best_metric=best_metric,
                    best_mode=self.best_mode, read_only=read_only, asynchronous=asynchronous)
        except OSError as exc:
            raise CheckpointError(f"cannot open checkpoints {self.directory}: {one_line(exc)}") from None

    def improves(self, new: float, old: float | None, *, strict: bool = True) -> bool:
        """Is `new` a better `best_metric` value than `old`? (strict: a tie is not an improvement)."""
        return improves(new, old, self.best_mode, strict=strict)

    # -- writing ------------------------------------------------------------------------

    def save(self, step: int, model_tree: Any, train_tree: Any, meta: dict, metrics: dict | None = None) -> None:
        """Start an asynchronous save of one step (returns once the arrays are copied off the device)."""
        import orbax.checkpoint as ocp

        if not self._quieted:  # a failed save reports from Orbax's threads, later: quiet until close()
            self._saving.enter_context(quiet())
            self._quieted = True
        self._finish_pending()
        args = ocp.args.Composite(model=ocp.args.StandardSave(model_tree), train=ocp.args.StandardSave(train_tree),
                                  meta=ocp.args.JsonSave(meta))
        failed = None
        try:
            self._mgr.save(step, args=args, metrics=metrics, force=True)
        except Exception as exc:  # noqa: BLE001 (write failures come as any type; others are re-raised)
            failed = self._write_failed(step, exc)
        if failed is not None:
            raise failed
        self._pending.append(step)
        if metrics is not None:
            self._metrics[step] = dict(metrics)

    def seal_finished(self) -> None:
        """Seal the saves that have finished without waiting for one in flight (one process only: Orbax's
        wait may synchronise processes). Called between steps, so that a run killed later leaves its
        newest complete checkpoint sealed rather than unverified."""
        import jax

        if self._pending and jax.process_count() == 1 and not self._mgr.is_saving_in_progress():
            self._finish_pending()

    def wait(self) -> None:
        """Block until the saves in flight are complete and sealed with their manifests."""
        self._finish_pending()

    def close(self) -> None:
        """Finish and seal the saves in flight, then release Orbax's threads. A KeyboardInterrupt while
        waiting propagates at once (the unfinished temporary is removed by the next writer)."""
        if self._closed:
            return
        self._closed = True
        with quiet(), self._saving:
            try:
                self._finish_pending()
            finally:
                self._release()

    def _release(self) -> None:
        with contextlib.suppress(Exception):
            self._mgr.close()
        if self._write_failed_once and not self.read_only:
            import jax

            if jax.process_index() == 0:  # the others may outlive its lock, and a resume's first save
                orbax_io.clean_temporaries_until_settled(self.directory)
        if self._write_failed_once:
            self._mgr = None  # what the failed save left behind goes now, while Orbax's reports are quiet
            gc.collect()
            orbax_io.stay_quiet()  # and what outlives this collection goes quietly later

    def _finish_pending(self) -> None:
        failed = None
        try:
            self._mgr.wait_until_finished()
        except Exception as exc:  # noqa: BLE001 (write failures come as any type; others are re-raised)
            failed = self._write_failed(self._pending[-1] if self._pending else None, exc)
        if failed is not None:
            raise failed
        import jax

        pending, self._pending = self._pending, []
        if jax.process_index() != 0:
            return
        for step in pending:
            step_dir = self.directory / str(step)
            if step_dir.is_dir():  # the preservation policy may already have removed it
                self._seal(step_dir)

    def _seal(self, step_dir: Path) -> None:
        failed = None
        try:
            seal(step_dir)
        except OSError as exc:
            failed = self._write_failed(int(step_dir.name), exc, what=f"the checksums of checkpoint {step_dir}")
        if failed is not None:
            raise failed
        self._intact.add(int(step_dir.name))
        self._sealed.add(int(step_dir.name))

    def _write_failed(self, step: int | None, exc: Exception, what: str | None = None) -> CheckpointError:
        """A failed write as one line naming what failed and the last complete checkpoint (other errors are
        re-raised). The caller raises it outside its `except`, so that it holds no reference to Orbax's
        error and what that error holds (the failed save's futures) goes when the manager closes.

        Which checkpoint is named is read from the disk after the failure: Orbax may have completed the
        step whose checksums could not be written, and no step whose save failed is named."""
        reason = orbax_io.write_failure(exc)
        if reason is None:
            raise exc
        self._pending = []
        self._write_failed_once = True
        with contextlib.suppress(Exception):
            self._mgr.wait_until_finished()  # Orbax's own writers of this save end before its files go
        if not self.read_only:
            orbax_io.clean_temporaries(self.directory)  # also gives the space back, for status.json
        with contextlib.suppress(Exception):
            self._mgr.reload()  # forget the step that was never written
        last = self._newest_intact()
        if what is None:
            what = (f"checkpoint {self.directory / str(step)}" if step is not None
                    else f"a checkpoint in {self.directory}")
        kept = (f"the last complete checkpoint is {self.directory / str(last)} (intact)" if last is not None
                else "no checkpoint is complete")
        return CheckpointError(f"could not write {what}: {reason}; {kept}")

    def last_complete_step(self) -> int | None:
        """The newest checkpoint whole on disk, once the saves in flight have ended (one that fails is
        not counted): the checkpoint a run that failed on a write can be resumed from."""
        with contextlib.suppress(Exception):
            self._finish_pending()
        return self._newest_intact()

    # -- what is there ------------------------------------------------------------------

    def step_dirs(self) -> list[int]:
        """Step directories on disk (complete or damaged; temporaries excluded)."""
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and p.is_dir())

    def incomplete_steps(self) -> list[int]:
        """Step directories on disk that Orbax does not list (emptied, an interrupted first save, or
        unreadable metrics)."""
        return sorted(set(self.step_dirs()) - set(self.steps()))

    def steps(self) -> list[int]:
        return sorted(self._mgr.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """Orbax's best step by `best_metric` (ties: the later step); the latest if no step has metrics."""
        try:
            best = self._mgr.best_step()
        except (KeyError, TypeError, ValueError):  # a step's metrics lack best_metric
            best = None
        return best if best is not None else self.latest_step()

    def best_value(self) -> float | None:
        """`best_metric` of the best step, if recorded (also while that step's save is in flight)."""
        step = self.best_step()
        if step is None:
            return None
        with contextlib.suppress(Exception):
            metrics = self._metrics.get(step) or self._mgr.metrics(step)
            return float(metrics[self.best_metric])
        return None

    def state(self, step: int) -> StepState:
        """Intact, unverified or damaged: the seal's checksums, or the structure where there are none
        (checked once per manager). A step this manager is saving counts as intact and sealed."""
        if step in self._pending:
            return StepState(step, None, sealed=True)
        found = None if step in self._intact else damage(self.directory / str(step))
        if found is None:
            self._intact.add(step)
        return StepState(step, found, sealed=self.is_sealed(step))

    def is_sealed(self, step: int) -> bool:
        """Were its checksums written (or will they be: a step this manager is saving)?"""
        return step in self._sealed or step in self._pending or has_manifest(self.directory / str(step))

    def intact_steps(self) -> list[int]:
        return [s for s in self.step_dirs() if self.state(s).intact]

    def _newest_intact(self) -> int | None:
        return next((s for s in reversed(self.step_dirs()) if self.state(s).intact), None)

    # -- reading ------------------------------------------------------------------------

    def _damaged(self, step: int, found: Damage) -> DamagedCheckpoint:
        return DamagedCheckpoint(self.directory / str(step), found, [s for s in self.intact_steps() if s != step])

    def _check(self, step: int) -> None:
        if step in self._pending:
            self._finish_pending()
        if step not in self.step_dirs():
            raise CheckpointError(f"{self.directory} has no checkpoint for step {step}; it has {self.steps()}")
        found = self.state(step).damage
        if found is not None:
            raise self._damaged(step, found)

    def restore_meta(self, step: int) -> dict:
        import orbax.checkpoint as ocp

        self._check(step)
        with quiet():
            try:
                return dict(self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
            except Exception as exc:  # noqa: BLE001 (the meta item of an intact-looking step did not read)
                failure = self._damaged(step, Damage(DamageKind.READ_FAILED, first_line(exc)))
            gc.collect()  # Orbax's abandoned reads go now, while its reports are quiet
            raise failure

    def restore(self, step: int, model_target: Any, train_target: Any | None = None) -> tuple[Any, Any, dict]:
        """Restore (model_tree, train_tree or None, meta) for `step` into the given abstract targets."""
        import jax
        import orbax.checkpoint as ocp

        self._check(step)
        # Arrays saved by another device layout (e.g. two processes) load onto this process's first device
        # where the target does not say where they go; the caller places them on its mesh.
        here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        targets = {"model": model_target} if train_target is None else {"model": model_target, "train": train_target}
        items = {name: ocp.args.StandardRestore(t, fallback_sharding=here) for name, t in targets.items()}
        with quiet():
            try:
                out = self._mgr.restore(step, args=ocp.args.Composite(**items, meta=ocp.args.JsonRestore()))
                return out["model"], out.get("train"), dict(out["meta"])
            except Exception as exc:  # noqa: BLE001 (which failure it was is decided by a check, below)
                failure = self._read_failed(step, exc, targets)
            gc.collect()  # Orbax's abandoned reads go now, while its reports are quiet
            raise failure

    def _read_failed(self, step: int, exc: Exception, targets: dict[str, Any]) -> CheckpointError:
        """A restore failed: the targets do not fit the step (a user's mismatch) when the tree stored in the
        step (key names, array shapes) differs from theirs; otherwise the step is damaged."""
        if orbax_io.stored_tree_differs(self._mgr, step, targets):
            return CheckpointError(f"checkpoint {self.directory / str(step)} does not match the model being "
                                   f"restored: {first_line(exc)}")
        return self._damaged(step, Damage(DamageKind.READ_FAILED, first_line(exc)))

    def restore_latest_intact(self, model_target: Any, train_target: Any | None = None,
                              check_meta: Callable[[dict], None] | None = None) -> Restored | None:
        """What a resume restores: the newest intact sealed step, past damaged and unverified newer ones,
        which a writable manager moves aside (cnncli.checkpoint.fallback)."""
        return restore_latest_intact(self, model_target, train_target, check_meta)

    def set_aside(self, steps: dict[int, str]) -> None:
        """Move step directories out of the way, each to `<prefix>-<step>`."""
        if self.read_only or not steps:
            return
        for step, prefix in steps.items():
            src, dst = self.directory / str(step), self.directory / f"{prefix}-{step}"
            shutil.rmtree(dst, ignore_errors=True)
            try:
                os.replace(src, dst)
            except OSError as exc:
                raise CheckpointError(f"cannot move {prefix} checkpoint {src} aside: {one_line(exc)}") from None
        with quiet():
            self._mgr.reload()
