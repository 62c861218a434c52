"""Orbax checkpoints of a run: save / restore / latest / best, and damage detection.

Each checkpoint step holds three items:
  model  -- params, BatchNorm statistics, EMA params (what evaluation needs)
  train  -- optimizer state, step, lr scale, non-finite counters (what resuming needs too)
  meta   -- JSON: epoch, data position, counters, plateau state, model identity, class names

"Best" is owned here: `metric_mode` says whether a metric is maximised or minimised, Orbax's
`best_fn`/`best_mode` rank the steps (`best_step` is Orbax's own answer) and `improves` is the one
comparator the loop asks about early stopping. Orbax sorts stably by the metric, so among equal
values the later step wins, both in `best_step` and in which steps the BestN policy keeps.

Keeps the latest `keep_last` plus the best `keep_best` (a preservation policy, so that keeping
the best never deletes the latest). Saves are asynchronous and atomic: Orbax writes into a
`*.orbax-checkpoint-tmp*` directory and renames it when complete; leftovers of an interrupted
save are removed when the directory is next opened for writing and ignored when reading.

Integrity (cnncli.checkpoint_manifest): once a save is known complete (at the next save, `wait()`
or `close()`) its files' SHA-256 are written beside it, and every restore checks them first, since
tensorstore decodes flipped bytes into wrong numbers silently. A damaged step is refused in one
line naming it and the intact steps; `restore_latest_intact` falls back past damaged steps. A step
without its checksums (a process killed between Orbax's save and the seal, an older cnn, or a
deleted cnn_sha256.json) is unverified: a resume passes over it to the newest sealed step where
there is one, and says so; where none is sealed it restores it with a warning.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from cnncli.checkpoint_manifest import MANIFEST, damage, seal  # noqa: F401 (MANIFEST re-exported)
from cnncli.errors import CheckpointError, RunDirError
from cnncli.rundir import locate

ITEMS = ("model", "train", "meta")


def _quiet_orbax(record) -> bool:
    """Orbax logs its own failures (with tracebacks) from background threads; we report them as one line."""
    return "orbax" not in record.pathname


def _after_failed_io(unraisable) -> bool:
    """The debris of a failed Orbax read or write: its pending futures and coroutines, collected later."""
    exc, obj = unraisable.exc_value, unraisable.object
    if isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc):
        return True
    code = getattr(obj, "cr_code", None)
    return code is not None and "orbax" in code.co_filename


def _ocp():
    import logging
    import sys

    import orbax.checkpoint as ocp

    absl = logging.getLogger("absl")
    absl.setLevel(logging.ERROR)  # orbax logs routine notices as warnings
    # A failed asynchronous write (a full disk) is reported once, as a CheckpointError; orbax's futures
    # would otherwise each log "exception was never retrieved" with a traceback when collected.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    if _quiet_orbax not in absl.filters:
        absl.addFilter(_quiet_orbax)
    if not getattr(sys.unraisablehook, "_cnn_checkpoint", False):
        previous = sys.unraisablehook

        def hook(unraisable):
            if not _after_failed_io(unraisable):
                previous(unraisable)

        hook._cnn_checkpoint = True
        sys.unraisablehook = hook
    return ocp


@functools.cache
def _orbax_manager_class():
    ocp = _ocp()

    class Manager(ocp.CheckpointManager):
        """Orbax's manager, except that a step with unreadable metrics ranks as a step without metrics
        (Orbax reads every step's metrics when it opens, and would fail to open at all)."""

        def metrics(self, step: int) -> Any:
            try:
                return super().metrics(step)
            except ValueError:  # JSONDecodeError, UnicodeDecodeError
                return None

    return Manager


def metric_mode(name: str) -> str:
    """'max' for accuracy-like metrics (higher is better), 'min' for losses and errors."""
    n = name.lower()
    if "loss" in n or "error" in n:
        return "min"
    if "acc" in n or "top" in n or "f1" in n or "precision" in n or "recall" in n:
        return "max"
    raise ValueError(f"no known direction for metric {name!r}")


def improves(new: float, old: float | None, mode: str, *, strict: bool = True) -> bool:
    """Is `new` better than `old` ('max' or 'min' mode)? Non-strict counts a tie as better (later wins)."""
    if old is None:
        return True
    if strict:
        return new > old if mode == "max" else new < old
    return new >= old if mode == "max" else new <= old


class Restored(NamedTuple):
    step: int
    model: Any
    train: Any
    meta: dict
    skipped: list[str]  # one warning per damaged or unverified newer step passed over (or restored unverified)


def _io_reason(exc: BaseException) -> str | None:
    """'No space left on device' etc. if `exc` (or its cause) is a failed write; None for other errors."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, OSError) and exc.errno:
            return os.strerror(exc.errno)
        m = re.search(r"os_error_code='?(\d+)", str(exc))
        if m:
            return os.strerror(int(m.group(1)))
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


class CheckpointManager:
    """A wrapper over `orbax.checkpoint.CheckpointManager` for a run's `checkpoints/` directory."""

    def __init__(self, directory: str | Path, *, keep_last: int = 2, keep_best: int = 1,
                 best_metric: str = "val_accuracy", best_mode: str | None = None, read_only: bool = False,
                 asynchronous: bool = True):
        ocp = _ocp()
        from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

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
        if not read_only:
            self._clean_temporaries()
        metric = lambda m: m[best_metric]
        policy = pp.AnyPreservationPolicy([
            pp.LatestN(n=keep_last),
            pp.BestN(get_metric_fn=metric, reverse=(self.best_mode == "min"), n=keep_best,
                     keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, best_fn=metric, best_mode=self.best_mode,
            keep_checkpoints_without_metrics=True, enable_async_checkpointing=asynchronous,
            create=not read_only, read_only=read_only)
        try:
            self._mgr = _orbax_manager_class()(self.directory, options=options, item_names=ITEMS)
        except OSError as exc:
            raise CheckpointError(f"cannot open checkpoints {self.directory}: {exc.strerror or exc}") from None

    def improves(self, new: float, old: float | None, *, strict: bool = True) -> bool:
        """Is `new` a better `best_metric` value than `old`? (strict: a tie is not an improvement)."""
        return improves(new, old, self.best_mode, strict=strict)

    def _clean_temporaries(self) -> bool:
        """Remove the leftovers of unfinished saves; whether there were any."""
        found = False
        if self.directory.exists():
            for tmp in self.directory.glob("*.orbax-checkpoint-tmp*"):
                shutil.rmtree(tmp, ignore_errors=True)
                found = True
        return found

    # -- writing ------------------------------------------------------------------------

    def save(self, step: int, model_tree: Any, train_tree: Any, meta: dict, metrics: dict | None = None) -> None:
        """Start an asynchronous save of one step (returns once the arrays are copied off the device)."""
        ocp = _ocp()
        self._finish_pending()
        args = ocp.args.Composite(
            model=ocp.args.StandardSave(model_tree),
            train=ocp.args.StandardSave(train_tree),
            meta=ocp.args.JsonSave(meta),
        )
        try:
            self._mgr.save(step, args=args, metrics=metrics, force=True)
        except Exception as exc:  # noqa: BLE001 (write failures come as any type; others are re-raised)
            self._write_failed(step, exc)
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
        try:
            self._finish_pending()
        except Exception:
            self._release()
            raise
        self._release()

    def _release(self) -> None:
        with contextlib.suppress(Exception):
            self._mgr.close()
        if self._write_failed_once and not self.read_only:
            import jax

            if jax.process_index() == 0:  # the others may outlive its lock, and a resume's first save
                self._clean_temporaries_until_settled()

    def _clean_temporaries_until_settled(self, quiet_s: float = 0.3, limit_s: float = 3.0) -> None:
        """After a failed save: Orbax stops tracking a save once one of its writes fails, while that save's
        other array writes (tensorstore's own threads) may still run and recreate its temporary
        directory. Clean until none has reappeared for `quiet_s` (at most `limit_s`)."""
        start = calm = time.monotonic()
        while time.monotonic() - start < limit_s:
            if self._clean_temporaries():
                calm = time.monotonic()
            elif time.monotonic() - calm >= quiet_s:
                return
            time.sleep(0.05)

    def _finish_pending(self) -> None:
        try:
            self._mgr.wait_until_finished()
        except Exception as exc:  # noqa: BLE001 (write failures come as any type; others are re-raised)
            self._write_failed(self._pending[-1] if self._pending else None, exc)
        import jax

        pending, self._pending = self._pending, []
        if jax.process_index() != 0:
            return
        for step in pending:
            step_dir = self.directory / str(step)
            if step_dir.is_dir():  # the preservation policy may already have removed it
                self._seal(step_dir)

    def _seal(self, step_dir: Path) -> None:
        try:
            seal(step_dir)
        except OSError as exc:
            self._write_failed(int(step_dir.name), exc, what=f"the checksums of checkpoint {step_dir}")
        self._intact.add(int(step_dir.name))
        self._sealed.add(int(step_dir.name))

    def _write_failed(self, step: int | None, exc: Exception, what: str | None = None) -> None:
        """Re-raise a failed write as one line naming what failed and the last complete checkpoint.

        Which one that is is read from the disk after the failure: Orbax may have completed the step
        whose checksums could not be written, and no step whose save failed is named."""
        reason = _io_reason(exc)
        if reason is None:
            raise exc
        self._pending = []
        self._write_failed_once = True
        with contextlib.suppress(Exception):
            self._mgr.wait_until_finished()  # Orbax's own writers of this save end before its files go
        if not self.read_only:
            self._clean_temporaries()  # also gives the space back, for status.json
        with contextlib.suppress(Exception):
            self._mgr.reload()  # forget the step that was never written
        last = self._newest_intact()
        if what is None:
            what = (f"checkpoint {self.directory / str(step)}" if step is not None
                    else f"a checkpoint in {self.directory}")
        kept = (f"the last complete checkpoint is {self.directory / str(last)} (intact)" if last is not None
                else "no checkpoint is complete")
        raise CheckpointError(f"could not write {what}: {reason}; {kept}") from None

    def _newest_intact(self) -> int | None:
        return next((s for s in reversed(self._step_dirs()) if self.damage(s) is None), None)

    def last_complete_step(self) -> int | None:
        """The newest checkpoint whole on disk, once the saves in flight have ended (one that fails is
        not counted): the checkpoint a run that failed on a write can be resumed from."""
        with contextlib.suppress(Exception):
            self._finish_pending()
        return self._newest_intact()

    # -- reading ------------------------------------------------------------------------

    def _step_dirs(self) -> list[int]:
        """Step directories on disk (complete or damaged; temporaries excluded)."""
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and p.is_dir())

    def incomplete_steps(self) -> list[int]:
        """Step directories on disk that are not complete checkpoints (emptied, or an interrupted first save)."""
        return sorted(set(self._step_dirs()) - set(self.steps()))

    def steps(self) -> list[int]:
        return sorted(self._mgr.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """Orbax's best step by `best_metric` (ties: the later step); the latest if no step has metrics."""
        try:
            best = self._mgr.best_step()
        except (KeyError, TypeError, ValueError):  # a step's metrics lack best_metric or are unreadable
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

    def damage(self, step: int) -> str | None:
        """Why checkpoint `step` cannot be trusted, or None if it is intact (checked once per manager)."""
        if step in self._intact or step in self._pending:
            return None
        reason = damage(self.directory / str(step))
        if reason is None:
            self._intact.add(step)
        return reason

    def unverified(self, step: int) -> str | None:
        """Why step `step` cannot be verified (it has no checksums), or None when it is sealed or is being
        saved by this manager."""
        if step in self._sealed or step in self._pending or (self.directory / str(step) / MANIFEST).is_file():
            return None
        return f"no {MANIFEST}: damage to its arrays would go unnoticed"

    def intact_steps(self) -> list[int]:
        return [s for s in self._step_dirs() if self.damage(s) is None]

    def _damaged(self, step: int, reason: str) -> CheckpointError:
        others = [s for s in self.intact_steps() if s != step]
        where = (f"intact checkpoints: {', '.join(map(str, others))} (choose one with --checkpoint STEP)" if others
                 else "no other checkpoint here is intact")
        return CheckpointError(f"checkpoint {self.directory / str(step)} is damaged ({reason}); {where}")

    def _check(self, step: int) -> None:
        if step in self._pending:
            self._finish_pending()
        if step not in self._step_dirs() and step not in self._pending:
            raise CheckpointError(f"{self.directory} has no checkpoint for step {step}; it has {self.steps()}")
        reason = self.damage(step)
        if reason is not None:
            raise self._damaged(step, reason)

    def restore_meta(self, step: int) -> dict:
        ocp = _ocp()
        self._check(step)
        try:
            return dict(self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
        except Exception as exc:  # noqa: BLE001 (an unreadable meta item, whatever the reader raises)
            raise self._damaged(step, _first_line(exc)) from None

    def restore(self, step: int, model_target: Any, train_target: Any | None = None) -> tuple[Any, Any, dict]:
        """Restore (model_tree, train_tree or None, meta) for `step` into the given abstract targets."""
        ocp = _ocp()
        self._check(step)
        import jax

        # Arrays saved by another device layout (e.g. two processes) load onto this process's first device
        # where the target does not say where they go; the caller places them on its mesh.
        here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        items = {"model": ocp.args.StandardRestore(model_target, fallback_sharding=here),
                 "meta": ocp.args.JsonRestore()}
        if train_target is not None:
            items["train"] = ocp.args.StandardRestore(train_target, fallback_sharding=here)
        try:
            out = self._mgr.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, KeyError, TypeError) as exc:
            if _looks_damaged(exc):
                raise self._damaged(step, _first_line(exc)) from None
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} does not match the model being restored: "
                f"{_first_line(exc)}") from None
        except Exception as exc:  # noqa: BLE001 (tensorstore read errors come as plain Exception)
            raise self._damaged(step, _first_line(exc)) from None
        return out["model"], out.get("train") if train_target is not None else None, dict(out["meta"])

    def restore_latest_intact(self, model_target: Any, train_target: Any | None = None,
                              check_meta: Callable[[dict], None] | None = None) -> Restored | None:
        """Restore the newest intact sealed step, passing over damaged and unverified newer ones; where no
        sealed step restores, the newest intact unverified one (warned). None if there is no checkpoint.

        `check_meta(meta)` may raise to refuse a readable checkpoint (e.g. a different model):
        that error propagates, with no fallback. A writable manager moves the newer steps passed
        over aside (to `damaged-<step>` / `unverified-<step>`), so that training can write them again.
        """
        steps = self._step_dirs()
        skipped: list[str] = []
        unsealed = [s for s in steps if self.unverified(s) is not None]
        sealed = [s for s in steps if s not in unsealed]
        for step in [*reversed(sealed), *reversed(unsealed)]:  # the sealed steps first, each newest first
            try:
                if check_meta is not None:
                    check_meta(self.restore_meta(step))
                model, train, meta = self.restore(step, model_target, train_target)
            except CheckpointError as exc:
                reason = self.damage(step)
                if reason is None and "is damaged" not in str(exc):
                    raise
                skipped.append(f"checkpoint {self.directory / str(step)} is damaged "
                               f"({reason or _damage_reason(exc)}); skipped")
                continue
            newer = [s for s in steps if s > step]  # all tried and damaged, except unsealed ones above a sealed step
            passed = [] if step in unsealed else [s for s in newer if s in unsealed]
            skipped[:0] = [f"checkpoint {self.directory / str(s)} is unverified ({self.unverified(s)}); passed "
                           f"over for sealed checkpoint {step}" for s in passed]
            if step in unsealed:
                skipped.append(f"checkpoint {self.directory / str(step)} is unverified ({self.unverified(step)}); "
                               "restored as it is")
            self._set_aside({s: "unverified" if s in passed else "damaged" for s in newer})
            return Restored(step, model, train, meta, skipped)
        if steps:
            raise CheckpointError(f"no intact checkpoint in {self.directory}: all of steps "
                                  f"{', '.join(map(str, steps))} are damaged")
        return None

    def _set_aside(self, steps: dict[int, str]) -> None:
        """Move step directories out of the way, each to `<prefix>-<step>`."""
        if self.read_only or not steps:
            return
        for step, prefix in steps.items():
            src, dst = self.directory / str(step), self.directory / f"{prefix}-{step}"
            shutil.rmtree(dst, ignore_errors=True)
            try:
                os.replace(src, dst)
            except OSError as exc:
                raise CheckpointError(f"cannot move {prefix} checkpoint {src} aside: {exc.strerror or exc}") from None
        self._mgr.reload()


def _first_line(exc: BaseException) -> str:
    """The first sentence of an error: Orbax and tensorstore append advice about their own internals."""
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    return text.split(". ")[0].rstrip(".")[:200]


def _damage_reason(exc: CheckpointError) -> str:
    m = re.search(r"is damaged \((.*)\); ", str(exc))
    return m.group(1) if m else str(exc)


def _looks_damaged(exc: BaseException) -> bool:
    text = str(exc)
    return (isinstance(exc, json.JSONDecodeError) or "DATA_LOSS" in text or "was not found in the checkpoint" in text
            or "Error reading" in text or "error while reading" in text or isinstance(exc, UnicodeDecodeError))


def find_checkpoint_dir(path: str | Path) -> tuple[Path, int | None]:
    """Resolve a run dir, a checkpoints dir or one step dir to (checkpoints_dir, step or None)."""
    try:
        loc = locate(path)
    except RunDirError as exc:
        raise CheckpointError(str(exc)) from None
    if loc.checkpoints is None or (loc.step is None and not any(
            c.name.isdigit() and c.is_dir() for c in loc.checkpoints.iterdir())):
        raise CheckpointError(f"{path} holds no complete checkpoint (expected a run directory or "
                              "checkpoints/<step>)")
    return loc.checkpoints, loc.step
