"""The run directory: --force replaces only cnn runs, one writer at a time, one-line write failures, locate()."""

import json
import re
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from cnncli.atomic import leftover_temps
from cnncli.errors import RunDirError, WriteError
from cnncli.rundir import LOCK, MARKER, RunDir, locate


def test_force_keeps_a_users_project_folder(tmp_path):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('mine')\n")
    (project / "config.yaml").write_text("train: {}\n")
    (project / "notes.txt").write_text("notes\n")
    before = {p.relative_to(project): p.read_bytes() for p in project.rglob("*") if p.is_file()}
    for check in (RunDir.check_create, RunDir.create):
        with pytest.raises(RunDirError, match="not a cnn run directory") as err:
            check(project, force=True)
    assert "\n" not in str(err.value)
    assert {p.relative_to(project): p.read_bytes() for p in project.rglob("*") if p.is_file()} == before


def test_force_replaces_a_run_directory(tmp_path):
    run = RunDir.create(tmp_path / "run")
    run.config.write_text("x: 1\n")
    run.write_json("results.json", {"accuracy": 0.5})
    run.release()
    with pytest.raises(RunDirError, match="already exists"):
        RunDir.create(tmp_path / "run")
    again = RunDir.create(tmp_path / "run", force=True)
    # the old run waits aside, whole, until the new one has written its files
    assert again.replaced is not None and again.replaced.parent == again.path
    assert json.loads((again.replaced / "results.json").read_text()) == {"accuracy": 0.5}
    again.discard_replaced()
    assert sorted(p.name for p in again.path.iterdir()) == sorted([MARKER, LOCK])
    again.release()


def test_older_run_recognised_by_its_status(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.yaml").write_text("x: 1\n")
    (old / "status.json").write_text(json.dumps({"status": "finished", "total_steps": 10, "steps_per_epoch": 5}))
    assert RunDir(old).is_cnn_run()
    (old / "status.json").write_text(json.dumps({"status": "finished"}))  # some other tool's status file
    assert not RunDir(old).is_cnn_run()
    (old / "status.json").write_text("{broken")
    assert not RunDir(old).is_cnn_run()


@pytest.mark.parametrize("kind", ["file", "file_parent", "proc"])
def test_unusable_paths_are_one_line_errors(tmp_path, kind):
    f = tmp_path / "afile"
    f.write_text("x")
    path = {"file": f, "file_parent": f / "run", "proc": "/proc/self/cnn-run"}[kind]
    with pytest.raises(RunDirError) as err:
        RunDir.create(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_parent_is_a_one_line_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(RunDirError, match="cannot create run directory"):
            RunDir.create(ro / "run")
    finally:
        ro.chmod(0o700)


def _tiny_fs(tmp_path, size="64k"):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, check=False)
    if r.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    return mnt


def test_full_disk_write_is_one_line(tmp_path):
    mnt = _tiny_fs(tmp_path)
    try:
        run = RunDir.create(mnt / "run")
        run.set_status("running", pid=1)
        with pytest.raises(WriteError, match="config.yaml"):
            run.write_text("config.yaml", "x" * 200_000)
        assert not run.config.exists()
        with pytest.raises(WriteError) as err:
            run.write_json("big.json", {"x": "y" * 200_000})
        msg = str(err.value)
        assert "\n" not in msg and str(mnt / "run" / "big.json") in msg and "No space left" in msg
        assert leftover_temps(mnt / "run") == [] and not (mnt / "run" / "big.json").exists()  # no half file
        assert run.read_json("status.json")["status"] == "running"  # the old status is intact
        run.release()
        fill = mnt / "fill"
        with pytest.raises(OSError):
            fill.write_bytes(b"x" * 200_000)  # the disk is now full to the last block
        with pytest.raises(RunDirError, match="No space left") as err:
            RunDir.create(mnt / "second" / "run")
        assert "\n" not in str(err.value) and not (mnt / "second" / "run").exists()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_failed_status_is_written_on_a_disk_full_to_the_last_block(tmp_path):
    """No room for status.json's temporary: the status is overwritten in the blocks it already has, so a
    run that failed on a full disk does not go on saying "running"; other files still fail in one line."""
    mnt = _tiny_fs(tmp_path)
    run = None
    try:
        run = RunDir.create(mnt / "run")
        run.set_status("running", pid=1, step=0)
        with pytest.raises(OSError):
            (mnt / "fill").write_bytes(b"x" * 400_000)  # the disk is now full to the last block
        with pytest.raises(WriteError, match="No space left"):
            run.write_json("other.json", {"a": 1})
        reason = "could not write checkpoint 4: No space left on device; the last complete checkpoint is 2"
        run.set_status("failed", reason=reason, step=5)
        status = run.read_json("status.json")
        assert status["status"] == "failed" and status["reason"] == reason and status["pid"] == 1
        assert leftover_temps(mnt / "run") == []
        too_big = "x" * 8192  # more than the file's blocks hold: refused, the old status left whole
        with pytest.raises(WriteError, match="No space left"):
            run.set_status("failed", reason=too_big)
        assert run.read_json("status.json") == status
    finally:
        if run is not None:
            run.release()  # its lock file is open: the file system could not be unmounted
        subprocess.run(["umount", str(mnt)], check=False)


def test_read_only_filesystem(tmp_path):
    mnt = _tiny_fs(tmp_path)
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        with pytest.raises(RunDirError, match="is not writable") as err:
            RunDir.create(mnt / "run")
        assert "\n" not in str(err.value)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


HOLDER = textwrap.dedent("""
    import sys, time
    from cnncli.rundir import RunDir
    run = RunDir.create(sys.argv[1])
    print("locked", flush=True)
    time.sleep(600)
""")


def _start_holder(path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_is_refused_while_the_first_lives(tmp_path):
    path = tmp_path / "run"
    holder = _start_holder(path)
    try:
        run = RunDir(path)
        assert run.owner() == {"pid": holder.pid, "host": socket.gethostname()}
        with pytest.raises(RunDirError) as err:
            run.acquire()
        msg = str(err.value)
        assert "\n" not in msg and f"process {holder.pid} on host {socket.gethostname()}" in msg
        for check in (RunDir.check_create, RunDir.create):  # --force does not take a live run away either
            with pytest.raises(RunDirError, match=f"in use by process {holder.pid}"):
                check(path, force=True)
        assert (path / MARKER).exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The holder died without cleaning up: its .lock file stays but the kernel dropped the lock.
    assert json.loads((path / LOCK).read_text())["pid"] == holder.pid
    run = RunDir(path)
    assert run.owner() is None
    with run.lock():
        assert json.loads((path / LOCK).read_text())["pid"] == os.getpid()
        with run.lock():  # re-entrant within one process
            pass
        assert run.owner()["pid"] == os.getpid()
    assert run.owner() is None


def test_locate(tmp_path):
    run = tmp_path / "run"
    step = run / "checkpoints" / "12"
    (step / "model").mkdir(parents=True)
    (run / "config.yaml").write_text("x: 1\n")
    for p, expected in [(run, (run, run / "checkpoints", None)),
                        (run / "checkpoints", (run, run / "checkpoints", None)),
                        (step, (run, run / "checkpoints", 12))]:
        loc = locate(p)
        assert (loc.run.path, loc.checkpoints, loc.step) == expected
    bare = tmp_path / "bare"
    (bare / "3" / "meta").mkdir(parents=True)
    assert locate(bare) == (None, bare, None)
    assert locate(bare / "3") == (None, bare, 3)
    plain = tmp_path / "plain"
    plain.mkdir()
    assert locate(plain) == (None, None, None)
    with pytest.raises(RunDirError, match="no such run directory"):
        locate(tmp_path / "missing")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        locate(tmp_path / "f.txt")


def _old_run(path):
    """A finished run directory as `cnn train` leaves it (hand-written)."""
    run = RunDir.create(path)
    run.config.write_text("model: {name: resnet20}\n")
    run.set_status("finished", steps_per_epoch=1, total_steps=1)
    (run.checkpoints / "1").mkdir(parents=True)
    (run.checkpoints / "1" / "model").write_text("weights")
    run.release()
    return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file() and p.name != LOCK}


def _files(path):
    return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file() and p.name != LOCK}


def test_force_never_removes_the_folder_itself(tmp_path, monkeypatch):
    """A mount point or the working directory cannot be removed: --force replaces what is inside."""
    import shutil

    path = tmp_path / "mounted"
    before = _old_run(path)
    real_rmtree = shutil.rmtree

    def rmtree(p, *args, **kwargs):  # what a mount point answers to removing the folder itself
        if os.path.abspath(p) == str(path):
            raise OSError(16, "Device or resource busy", str(p))
        return real_rmtree(p, *args, **kwargs)

    real_rmdir = os.rmdir

    def rmdir(p, *args, **kwargs):
        if os.path.abspath(p) == str(path):
            raise OSError(16, "Device or resource busy", str(p))
        return real_rmdir(p, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    monkeypatch.setattr(os, "rmdir", rmdir)
    monkeypatch.chdir(path)
    run = RunDir.create(".", force=True)
    assert _files(path / run.replaced.name) == before  # the old run is whole until the new one has files
    run.write_text("config.yaml", "model: {name: resnet32}\n")
    run.discard_replaced()
    assert sorted(p.name for p in path.iterdir()) == sorted([MARKER, LOCK, "config.yaml"])
    run.release()


def test_force_that_cannot_move_the_old_run_aside_changes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "run"
    before = _old_run(path)
    real_rename, calls = os.rename, []

    def rename(src, dst, *args, **kwargs):
        calls.append(src)
        if len(calls) == 3:  # fails in the middle: the first two entries were moved already
            raise OSError(13, "Permission denied", str(src))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(RunDirError, match="could not move the old run .* aside: Permission denied.*left as it was"):
        RunDir.create(path, force=True)
    assert _files(path) == before and not list(path.glob(".cnn-replaced*"))


def test_a_new_run_that_fails_before_its_files_puts_the_old_one_back(tmp_path):
    path = tmp_path / "run"
    before = _old_run(path)
    run = RunDir.create(path, force=True)
    (path / "config.yaml").write_text("half of a new run\n")
    run.restore_replaced()
    assert _files(path) == before and not list(path.glob(".cnn-replaced*"))


@pytest.mark.parametrize("name,make", [("metrics.jsonl", "dir"), ("metrics.csv", "dir"), ("status.json", "fifo"),
                                       ("tensorboard", "file"), ("checkpoints", "file")])
def test_run_files_of_the_wrong_kind_are_refused(tmp_path, name, make):
    path = tmp_path / "run"
    _old_run(path)
    target = path / name
    if target.is_dir():
        import shutil

        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    {"dir": target.mkdir, "fifo": lambda: os.mkfifo(target), "file": lambda: target.write_text("x")}[make]()
    kind = {"dir": "a directory, not a regular file", "fifo": "a FIFO (named pipe), not a regular file",
            "file": "a file, not a folder"}[make]
    with pytest.raises(RunDirError, match=re.escape(f"{name} is {kind}")):
        RunDir(path).check_files()


def test_status_json_that_is_a_fifo_does_not_hang(tmp_path):
    path = tmp_path / "run"
    _old_run(path)
    (path / "status.json").unlink()
    os.mkfifo(path / "status.json")
    run = RunDir(path)
    assert run.owner() is None
    with pytest.raises(RunDirError, match="is a FIFO"):
        run.read_json("status.json")
    assert run.is_cnn_run()  # by its marker


@pytest.mark.parametrize("target", ["config.yaml", "status.json", "metrics.jsonl", "model.safetensors",
                                    "checkpoints/1/model", "checkpoints/new.json", "tensorboard/x", "."])
def test_outputs_may_not_write_over_a_runs_files(tmp_path, target):
    from cnncli.rundir import refuse_run_file

    path = tmp_path / "run"
    _old_run(path)
    with pytest.raises(RunDirError, match=r"--output .* would write over .*; write it elsewhere"):
        refuse_run_file(path / target, "--output")
    link = tmp_path / "link.json"
    link.symlink_to(path / "config.yaml")
    with pytest.raises(RunDirError, match="config.yaml of the run"):
        refuse_run_file(link, "-o")
    refuse_run_file(path / "report.json", "--output")  # a new file of its own beside the run's is fine
    refuse_run_file(path / "plots" / "curves.png", "--output")
    refuse_run_file(tmp_path / "elsewhere.json", "--output")


@pytest.mark.parametrize("args", [
    ["eval", "{run}", "--output", "{run}/config.yaml"],
    ["eval", "{run}", "--plot", "{run}/checkpoints/1/model"],
    ["plot", "{run}", "-o", "{run}/status.json"],
    ["show", "filters", "{run}", "-o", "{run}/metrics.jsonl"],
    ["show", "cam", "{run}", "img.png", "-o", "{run}/config.yaml"],
    ["weights", "export", "{run}", "-o", "{run}/model.safetensors"],
    ["weights", "import", "x.pth", "--model", "resnet18", "-o", "{run}/checkpoints"],
])
def test_commands_refuse_outputs_over_a_runs_files_before_any_work(tmp_path, args):
    from typer.testing import CliRunner

    from cnncli.cli import app

    path = tmp_path / "run"
    before = _old_run(path)
    (path / "model.safetensors").write_bytes(b"exported")
    before = _files(path)
    res = CliRunner().invoke(app, [a.format(run=path) for a in args])
    assert res.exit_code == 2 and res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert res.stderr.startswith("error: ") and "would write over" in res.stderr and res.stderr.count("\n") == 1
    assert _files(path) == before
