"""The Orbax side of a run's checkpoints: opening Orbax's manager, quieting Orbax's own reports of
failures we report in one line, the one failure Orbax reports only as text, and its leftovers.

Checked against orbax-checkpoint 0.12.8 and tensorstore 0.1.86 (the versions installed with cnn).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

ITEMS = ("model", "train", "meta")


def open_manager(directory: Path, *, keep_last: int, keep_best: int, best_metric: str, best_mode: str,
                 read_only: bool, asynchronous: bool) -> Any:
    """Orbax's manager for `directory`: keeps the latest `keep_last` and the best `keep_best` steps
    (a preservation policy, so that keeping the best never deletes the latest)."""
    import orbax.checkpoint as ocp
    from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

    metric = lambda m: m[best_metric]  # noqa: E731
    policy = pp.AnyPreservationPolicy([
        pp.LatestN(n=keep_last),
        pp.BestN(get_metric_fn=metric, reverse=(best_mode == "min"), n=keep_best,
                 keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, best_fn=metric, best_mode=best_mode,
        keep_checkpoints_without_metrics=True, enable_async_checkpointing=asynchronous,
        create=not read_only, read_only=read_only,
        save_interval_steps=0 if read_only else 1,  # what read_only sets anyway, without its warning
        step_name_format=StepsWithReadableMetrics(ocp.step.standard_name_format()))
    handlers = {"model": ocp.StandardCheckpointHandler(), "train": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler()}  # named, so that item_metadata can read the stored shapes
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


class StepsWithReadableMetrics:
    """Orbax's standard step names, except that a step whose metrics file does not parse is not listed.

    Orbax reads every listed step's metrics when it opens and fails to open at all on one that does
    not parse. Such a step is damaged (its checksums say so where it is sealed); our own listing of
    the directory still finds it, so a restore of it is refused as damaged and a resume passes over it.
    """

    def __init__(self, standard: Any):
        self._standard = standard

    def build_name(self, step: int) -> str:
        return self._standard.build_name(step)

    def find_step(self, base_path: Any, step: int) -> Any:
        return self._standard.find_step(base_path, step)

    def find_all(self, base_path: Any):
        return (m for m in self._standard.find_all(base_path) if _metrics_readable(Path(m.path)))

    def __str__(self) -> str:
        return f"{self._standard} (steps with readable metrics)"


def _metrics_readable(step_dir: Path) -> bool:
    import json

    path = step_dir / "metrics" / "metrics"
    if not path.exists():
        return True  # a step saved without metrics
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):  # ValueError: JSONDecodeError, UnicodeDecodeError
        return False
    return True


def stored_tree_differs(manager: Any, step: int, targets: dict[str, Any]) -> bool:
    """Does any target (by item name) differ from the tree stored in that item of `step`: its leaves'
    key names and array shapes? False where the stored tree cannot be read: that is damage, not a mismatch."""
    import jax

    def leaves(tree: Any) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
        return sorted((tuple(_key_name(k) for k in path), tuple(leaf.shape) if hasattr(leaf, "shape") else ())
                      for path, leaf in jax.tree_util.tree_leaves_with_path(tree))

    try:
        stored = manager.item_metadata(step)
        trees = {name: leaves(stored[name]) for name in targets}
    except Exception:  # noqa: BLE001 (unreadable metadata, whatever its reader raises)
        return False
    return any(trees[name] != leaves(target) for name, target in targets.items())


def _key_name(key: Any) -> str:
    """A path key as a name: a dict key, an attribute or a position (Orbax stores named tuples as dicts)."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


# -- Orbax's own reports ----------------------------------------------------------------------

def _in_orbax(filename: str) -> bool:
    return f"{os.sep}orbax{os.sep}" in filename


def _raised_in_orbax(exc: BaseException | None) -> bool:
    """Did `exc` (or an exception it was raised from) pass through Orbax's code?"""
    for _ in range(5):
        if exc is None:
            return False
        tb = exc.__traceback__
        while tb is not None:
            if _in_orbax(tb.tb_frame.f_code.co_filename):
                return True
            tb = tb.tb_next
        exc = exc.__cause__ or exc.__context__
    return False


class _OrbaxRecords(logging.Filter):
    """Drops Orbax's log records (its notices and its tracebacks of failed background writes, logged on
    the absl logger) and asyncio's "exception was never retrieved" for Orbax's abandoned futures."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _in_orbax(record.pathname):
            return False
        return not (record.exc_info and _raised_in_orbax(record.exc_info[1]))


def _orbax_debris(unraisable: Any) -> bool:
    """The debris of a failed Orbax read or write: its coroutines collected after the failure, and the
    callbacks of its abandoned tensorstore writes, which end on the event loop Orbax has closed."""
    code = getattr(unraisable.object, "cr_code", None)
    if code is not None and _in_orbax(code.co_filename):
        return True
    return _raised_in_orbax(unraisable.exc_value) or _raised_by_closed_loop(unraisable.exc_value)


def _raised_by_closed_loop(exc: BaseException | None) -> bool:
    import asyncio

    check = asyncio.BaseEventLoop._check_closed.__code__
    tb = exc.__traceback__ if isinstance(exc, RuntimeError) else None
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code is check


class _Quiet:
    """A counted scope: the first entry installs the filter and the unraisable hook, the last exit removes
    them, whatever order the scopes of several managers end in. `pin()` takes one entry that is never
    exited (after a failed write)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._pinned = False
        self._filter = _OrbaxRecords()
        self._previous_hook: Any = None

    def _hook(self, unraisable: Any) -> None:
        if not _orbax_debris(unraisable):
            (self._previous_hook or sys.__unraisablehook__)(unraisable)

    def enter(self) -> None:
        with self._lock:
            self._enter()

    def pin(self) -> None:
        with self._lock:
            if not self._pinned:
                self._pinned = True
                self._enter()

    def _enter(self) -> None:  # under the lock
        self._depth += 1
        if self._depth == 1:
            # absl's logger first: created by getLogger before absl is imported, it would be a plain
            # Logger, whose records name absl's file rather than Orbax's as where they come from
            from absl import logging as absl_logging  # noqa: F401

            for name in ("absl", "asyncio"):
                logging.getLogger(name).addFilter(self._filter)
            self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._hook

    def exit(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for name in ("absl", "asyncio"):
                    logging.getLogger(name).removeFilter(self._filter)
                if sys.unraisablehook == self._hook:  # else another hook was installed over ours: leave both
                    sys.unraisablehook = self._previous_hook
                self._previous_hook = None


_QUIET = _Quiet()


@contextlib.contextmanager
def quiet():
    """While inside: Orbax's reports of the failures cnn reports itself in one line are dropped. Nothing
    else is changed, and everything is as before once the last open scope ends (unless `stay_quiet()`
    pinned one open)."""
    _QUIET.enter()
    try:
        yield
    finally:
        _QUIET.exit()


def stay_quiet() -> None:
    """After a failed write: a scope that stays open for the rest of the process. Orbax's futures of that
    write may be collected at any later time (a collection outside every scope, at exit, once tensorstore
    lets go of them) and asyncio would log each one's traceback; the filter drops only Orbax's records."""
    _QUIET.pin()


# -- failures and leftovers ---------------------------------------------------------------------

def write_failure(exc: BaseException | None) -> str | None:
    """The OS's words for a failed write ('No space left on device'), or None if `exc` is not one.

    The one failure Orbax gives no type for: tensorstore 0.1.86 (under orbax-checkpoint 0.12.8) raises a
    failed write as a plain ValueError whose text carries the OS error code (`[os_error_code=28]`).
    That code is read here; every other decision in cnncli.checkpoint is made on types and checks.
    """
    for _ in range(5):
        if exc is None:
            return None
        if isinstance(exc, OSError) and exc.errno:
            return os.strerror(exc.errno)
        m = re.search(r"os_error_code='?(\d+)", str(exc))
        if m:
            return os.strerror(int(m.group(1)))
        exc = exc.__cause__ or exc.__context__
    return None


def first_line(exc: BaseException) -> str:
    """The first sentence of an error, for display: Orbax and tensorstore append advice about their internals."""
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    return text.split(". ")[0].rstrip(".")[:200]


def clean_temporaries(directory: Path) -> bool:
    """Remove the leftovers of unfinished saves (`*.orbax-checkpoint-tmp*`); whether there were any."""
    found = False
    if directory.exists():
        for tmp in directory.glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(tmp, ignore_errors=True)
            found = True
    return found


def clean_temporaries_until_settled(directory: Path, quiet_s: float = 0.3, limit_s: float = 3.0) -> None:
    """After a failed save, clean until no temporary has reappeared for `quiet_s` (at most `limit_s`).

    Orbax 0.12.8 waits for a save's commit futures one after the other and stops at the first that
    fails (futures/future.py, ChainedFuture.result); the save's other array writes (tensorstore's own
    threads) may still run and recreate its temporary directory, and no public call waits for them.
    """
    start = calm = time.monotonic()
    while time.monotonic() - start < limit_s:
        if clean_temporaries(directory):
            calm = time.monotonic()
        elif time.monotonic() - calm >= quiet_s:
            return
        time.sleep(0.05)
