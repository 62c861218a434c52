"""The run directory: where a training run writes everything, who owns it, and how it is found again.

    runs/<name>/
      .cnn-run        marker: this folder was made by `cnn train` (so --force may replace it)
      .lock           OS lock held by the one process writing the run; holds its pid and host
      config.yaml     fully resolved config (defaults + file + overrides + data-derived sizes)
      split.json      how train/val/test were split (seed, held-out indices)
      data.json       class names, image shape, normalisation mean/std
      metrics.jsonl   one object per logged step and per evaluation
      metrics.csv     one row per epoch
      status.json     running / finished / interrupted / failed, timings, pid and host
      checkpoints/    Orbax steps (latest + best)
      results.json    final test-split evaluation of the best checkpoint
      model.safetensors  exported best weights
      tensorboard/    event files

Replacing (--force): the old run moves aside inside the folder until the new one has written its
files (cnncli/run_replace.py). Ownership: one process at a time holds an OS lock on `.lock`
(cnncli/run_lock.py); `RunDir.create` takes it, a resume calls `acquire()` or enters `lock()`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from cnncli import regular_file, run_lock, run_replace
from cnncli.atomic import write_text_atomic
from cnncli.errors import CnnError, RunDirError, WriteError
from cnncli.run_lock import LOCK
from cnncli.run_replace import REPLACED

MARKER = ".cnn-run"
STATUSES = ("running", "finished", "interrupted", "failed")
RUN_FILES = (MARKER, LOCK, "config.yaml", "split.json", "data.json", "init.json", "metrics.jsonl", "metrics.csv",
             "status.json", "results.json")  # what a run reads or writes as one file
RUN_FOLDERS = ("checkpoints", "tensorboard")
_SYSTEM_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


def default_run_name(config_path: str | Path | None) -> str:
    stem = Path(config_path).stem if config_path else "run"
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _write_atomic(path: Path, text: str, *, in_place_when_full: bool = False) -> None:
    """Write via a temporary file and rename, so readers never see half a file; one-line error on failure.

    `in_place_when_full`: where the disk has no room for the temporary, overwrite the file in the
    space it already holds, if the new text fits there (a run's last status on a full disk)."""
    try:
        write_text_atomic(path, text)
    except OSError as exc:
        if in_place_when_full and exc.errno in (errno.ENOSPC, errno.EDQUOT) and _overwrite_in_place(path, text):
            return
        raise WriteError(f"could not write {path}: {_reason(exc)}") from None


def _overwrite_in_place(path: Path, text: str) -> bool:
    """Overwrite the JSON file `path` with the JSON `text` without asking the disk for a block: only where
    the file's allocated blocks hold all of it. Padded with spaces to the old length, so that one write
    leaves valid JSON and no truncation follows. Whether all of it was written."""
    data = text.encode()
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        data += b" " * max(0, st.st_size - len(data))
        if len(data) > st.st_blocks * 512:
            return False
        if os.pwrite(fd, data, 0) != len(data):  # a copy-on-write file system may still run out
            return False
        os.fsync(fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


class RunDir:
    """Paths, small files, ownership and status of one run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.replaced: Path | None = None  # where --force moved the old run while the new one starts

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
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    def is_run(self) -> bool:
        """Has what `cnn eval` / `--resume` need: a resolved config.yaml."""
        return self.config.is_file()

    def is_cnn_run(self) -> bool:
        """Made by `cnn train`: the marker file, or (older runs) a status.json carrying cnn's fields."""
        if (self.path / MARKER).is_file():
            return True
        try:
            status = json.loads(regular_file.read_text(self.path / "status.json", RunDirError))
        except (OSError, ValueError, CnnError):
            return False
        return (isinstance(status, dict) and status.get("status") in STATUSES
                and "steps_per_epoch" in status and "total_steps" in status)

    # -- creating and opening -----------------------------------------------------------

    @classmethod
    def check_create(cls, path: str | Path, *, force: bool = False) -> RunDir:
        """Refuse now, changing nothing, whatever `create` would refuse; a command checks before its work."""
        run = cls(path)
        run._check_location()
        if run.path.is_dir() and any(run.path.iterdir()):
            if not force:
                raise RunDirError(
                    f"run directory {run.path} already exists; use --resume {run.path} to continue it, "
                    "--force to replace it, or --name/--run-dir for a new one")
            if not run.is_cnn_run():
                entries = sorted(p.name for p in run.path.iterdir())
                shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
                raise RunDirError(f"--force refuses to clear {run.path}: it is not a cnn run directory (no {MARKER} "
                                  f"marker or run status.json) and holds {len(entries)} entries ({shown})")
            owner = run.owner()
            if owner is not None and not run_lock.holds(run.path):
                raise run_lock.in_use(run.path, owner)
        return run

    @classmethod
    def create(cls, path: str | Path, *, force: bool = False) -> RunDir:
        """A fresh run directory, locked by this process.

        Refuses an existing non-empty folder; with `force`, replaces it only if it is a cnn run
        directory that no live process owns. Never touches any other folder's files.
        """
        run = cls.check_create(path, force=force)
        if run.path.is_dir() and any(run.path.iterdir()):
            run.acquire()  # refuses if a live process took it since the check
            run.release()
            run.replaced = run_replace.move_aside(run.path)
        made = not run.path.exists()
        try:
            run.path.mkdir(parents=True, exist_ok=True)
            (run.path / MARKER).write_text(json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
            run.acquire()
        except (OSError, RunDirError) as exc:
            if made:
                shutil.rmtree(run.path, ignore_errors=True)  # a refused command leaves nothing behind
            run.restore_replaced()
            raise RunDirError(f"cannot create run directory {run.path}: "
                              f"{_reason(exc) if isinstance(exc, OSError) else exc}") from None
        return run

    # -- --force: the old run waits aside inside the folder until the new one has its files -----

    def discard_replaced(self) -> None:
        """The new run has written its files: delete the old run that --force moved aside."""
        aside, self.replaced = self.replaced, None
        if aside is not None:
            run_replace.discard(aside)

    def restore_replaced(self) -> None:
        """The new run ended before it wrote its files: remove what it made and put the old run back."""
        aside, self.replaced = self.replaced, None
        if aside is not None and aside.is_dir():
            self.release()
            run_replace.restore(self.path, aside)

    def _check_location(self) -> None:
        resolved = self.path.resolve()
        if any(resolved == r or r in resolved.parents for r in _SYSTEM_ROOTS):
            raise RunDirError(f"cannot create run directory {self.path}: /{resolved.parts[1]} is a system folder, "
                              "not storage")
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"cannot create run directory {self.path}: it is a file, not a folder")
        for parent in self.path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise RunDirError(f"cannot create run directory {self.path}: {parent} is a file, not a folder")
                if not self.path.exists() and not os.access(parent, os.W_OK | os.X_OK):
                    raise RunDirError(f"cannot create run directory {self.path}: {parent} is not writable "
                                      "(read-only filesystem or no permission)")
                break

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        run = cls(path)
        if not run.path.is_dir():
            raise RunDirError(f"no such run directory: {run.path}")
        if not run.is_run():
            raise RunDirError(f"{run.path} is not a run directory (no config.yaml)")
        return run

    def check_files(self) -> None:
        """Refuse, changing nothing, a run whose own files are not what training reads and writes (a
        metrics.jsonl replaced by a folder, a tensorboard folder by a file, a FIFO for status.json)."""
        for name in RUN_FILES:
            found = regular_file.not_regular(self.path / name)
            if found is not None:
                raise RunDirError(f"run directory {self.path}: {name} is {found}, not a regular file; move it "
                                  "away to continue this run")
        for name in RUN_FOLDERS:
            p = self.path / name
            if p.exists() and not p.is_dir():
                raise RunDirError(f"run directory {self.path}: {name} is a file, not a folder; move it away to "
                                  "continue this run")

    # -- ownership ----------------------------------------------------------------------

    def acquire(self) -> RunDir:
        """Own this run for the life of the process; a one-line RunDirError naming the live owner otherwise."""
        run_lock.acquire(self.path)
        return self

    def release(self) -> None:
        """Give up ownership (the kernel also does this when the process ends)."""
        run_lock.release(self.path)

    @contextlib.contextmanager
    def lock(self) -> Iterator[RunDir]:
        """`with run.lock():` owns the run inside the block; re-entrant if this process already owns it."""
        held = run_lock.holds(self.path)
        self.acquire()
        try:
            yield self
        finally:
            if not held:
                self.release()

    def owner(self) -> dict | None:
        """{'pid', 'host'} of the live process owning this run, or None if nobody holds the lock."""
        return run_lock.owner(self.path)

    # -- small files --------------------------------------------------------------------

    def read_json(self, name: str) -> Any:
        p = self.path / name
        if not p.exists():
            return None
        try:
            return json.loads(regular_file.read_text(p, RunDirError))
        except (OSError, ValueError) as exc:
            raise RunDirError(f"{p}: unreadable JSON ({str(exc)[:200]})") from None

    def write_json(self, name: str, obj: Any, *, in_place_when_full: bool = False) -> None:
        """Atomic JSON write; a WriteError (one line: what, where, why) if the disk refuses it
        (`in_place_when_full`: see _write_atomic)."""
        _write_atomic(self.path / name, json.dumps(obj, indent=2) + "\n", in_place_when_full=in_place_when_full)

    def write_text(self, name: str, text: str) -> None:
        """Atomic text write (e.g. config.yaml); a WriteError if the disk refuses it."""
        _write_atomic(self.path / name, text)

    def set_status(self, status: str, **fields: Any) -> None:
        """Merge `fields` into status.json and set its status; an unreadable old status.json is replaced."""
        try:
            current = self.read_json("status.json") or {}
        except RunDirError:
            current = {}
        if not isinstance(current, dict):
            current = {}
        current.update(fields, status=status, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
        # a failed run's status matters most when the disk is full: then it overwrites the old one in place
        self.write_json("status.json", current, in_place_when_full=True)


def _holds_run(folder: Path) -> bool:
    """A run directory: cnn's marker, or a config.yaml beside a status.json."""
    return (folder / MARKER).is_file() or ((folder / "config.yaml").is_file() and (folder / "status.json").is_file())


def refuse_run_file(path: str | Path, option: str) -> None:
    """Refuse, in one line, an output path (`option`: the command's -o/--output) that would write over a
    run directory's own files: its config.yaml, status.json, metrics, results, exported model.*, or
    anything in its checkpoints/ or tensorboard/ folder (or the run directory itself). A new file of
    another name beside them (a report, a plot) is allowed. Links are followed: a link to a run's
    file is that file."""
    target = Path(path).resolve()
    folders = [target, *target.parents]
    for folder in folders:
        if not folder.is_dir() or not _holds_run(folder):
            continue
        rel = target.relative_to(folder)
        first = rel.parts[0] if rel.parts else ""
        if not rel.parts or first in RUN_FILES or first in RUN_FOLDERS or first.startswith((REPLACED, "model.")):
            what = f"the run directory {folder}" if not rel.parts else f"{rel} of the run {folder}"
            raise RunDirError(f"{option} {path} would write over {what}; write it elsewhere")


class Location(NamedTuple):
    """What a user's path names: its run (if it belongs to one), checkpoints folder and step."""

    run: RunDir | None  # the run directory (with config.yaml) the path belongs to
    checkpoints: Path | None  # its checkpoints folder, if the path has or is one
    step: int | None  # set when the path is one checkpoint step directory


def _is_step_dir(path: Path) -> bool:
    return path.name.isdigit() and path.is_dir() and any(
        (path / n).exists() for n in ("_CHECKPOINT_METADATA", "meta", "model", "train"))


def locate(path: str | Path) -> Location:
    """Resolve a run directory, its checkpoints/ folder or one checkpoints/<step> folder."""
    p = Path(path)
    if not p.exists():
        raise RunDirError(f"no such run directory or checkpoint: {p}")
    if not p.is_dir():
        raise RunDirError(f"{p} is a file, not a run directory or checkpoint")
    step = None
    if _is_step_dir(p) or (p.name.isdigit() and p.parent.name == "checkpoints"):  # a step, even an empty one
        checkpoints, step = p.parent, int(p.name)
    elif (p / "checkpoints").is_dir():
        checkpoints = p / "checkpoints"
    elif p.name == "checkpoints" or any(_is_step_dir(c) for c in p.iterdir()):
        checkpoints = p
    else:
        checkpoints = None
    run = RunDir(checkpoints.parent if checkpoints is not None else p)
    return Location(run if run.is_run() else None, checkpoints, step)
