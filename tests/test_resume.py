"""What `cnn train --resume` may change, refusals that change no file, finished runs, full disks."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnncli.cli import app

runner = CliRunner()


def cnn(*args):
    return runner.invoke(app, [str(a) for a in args])


def snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def finished(tiny_run):
    """The folder holding the session's tiny run ("run") and its config ("tiny.yaml"): read, never changed."""
    assert tiny_run.config == tiny_run.run.parent / "tiny.yaml"
    return tiny_run.run.parent


@pytest.mark.parametrize("override,key", [
    ("model.name=resnet32", "model.name"),
    ("model.width=1.0", "model.width"),
    ("data.source=synthetic", "data.source"),
    ("data.image_size=24", "data.image_size"),
    ("data.split_seed=5", "data.split_seed"),
    ("train.batch_size=16", "train.batch_size"),
    ("optimizer.name=adam", "optimizer.name"),
])
def test_a_refused_resume_changes_no_file(finished, override, key):
    run = finished / "run"
    before = snapshot(run)
    res = cnn("train", "--resume", run, "--set", override, "--set", "train.steps=20")
    assert res.exit_code == 2 and key in res.output and "cannot change" in res.output, res.output
    assert snapshot(run) == before


@pytest.mark.slow
def test_resume_with_every_checkpoint_gone_is_refused_unless_restarted(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished / "run", run)
    shutil.rmtree(run / "checkpoints")
    before = snapshot(run)
    res = cnn("train", "--resume", run, "--set", "train.steps=12")
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines() == [res.output.strip()]  # one line
    assert "no checkpoint" in res.output and "reach step 8" in res.output and "--restart" in res.output
    assert snapshot(run) == before and not (run / "checkpoints").exists()
    res = cnn("train", "--resume", run, "--set", "train.steps=12", "--restart")
    assert res.exit_code == 0, res.output
    assert "training starts from step 0" in res.output
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # the shared run logs every step (tests/conftest.py): each step once, from the first
    assert [r["step"] for r in lines if r["split"] == "train"] == list(range(1, 13))


def test_restart_belongs_to_resume(tiny_config, tmp_path):
    res = cnn("train", tiny_config, "--run-dir", tmp_path / "run", "--restart")
    assert res.exit_code == 2 and "--restart applies to --resume" in res.output
    assert not (tmp_path / "run").exists()


def test_finished_run_and_config_with_resume(finished):
    run = finished / "run"
    before = snapshot(run)
    res = cnn("train", "--resume", run)
    assert res.exit_code == 0 and "already finished" in res.output
    res = cnn("train", finished / "tiny.yaml", "--resume", run)
    assert res.exit_code == 2 and "not both" in res.output
    res = cnn("train", "--resume", run, "--print-config", "--set", "model.name=vgg11")
    assert res.exit_code == 2 and "model.name" in res.output
    assert snapshot(run) == before


def test_a_resume_onto_other_data_or_fewer_steps_is_refused_and_changes_no_file(finished, tmp_path):
    """data.path may move a dataset, not replace it: the run's data.json / split.json are what it trained
    on. Here the copy's records say it started on other classes, then on another split; and an interrupted
    run at step 8 resumed with train.steps=2 would be written "finished" at a step it had passed."""
    run = tmp_path / "run"
    shutil.copytree(finished / "run", run)
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "status": "interrupted"}))
    data = json.loads((run / "data.json").read_text())
    (run / "data.json").write_text(json.dumps({**data, "class_names": ["cat", "dog"] + data["class_names"][2:]}))
    before = snapshot(run)
    res = cnn("train", "--resume", run, "--set", "train.steps=12")
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines() == [res.output.strip()]
    assert "the data is not the data the run started with (class names ['cat', 'dog', '2', '3', '4', ... (10 " \
           "classes)] -> ['0', '1', '2', '3', '4', ... (10 classes)])" in res.output
    assert snapshot(run) == before
    (run / "data.json").write_text(json.dumps(data))
    split = json.loads((run / "split.json").read_text())
    (run / "split.json").write_text(json.dumps({**split, "test_indices": split["test_indices"][::-1]}))
    res = cnn("train", "--resume", run, "--set", "train.steps=12")
    assert res.exit_code == 2 and "the split (split.json" in res.output, res.output
    (run / "split.json").write_text(json.dumps(split))
    before = snapshot(run)
    res = cnn("train", "--resume", run, "--set", "train.steps=2")
    assert res.exit_code == 2, res.output
    assert "the run is at step 8, past the 2 steps the config now asks for" in res.output
    assert snapshot(run) == before


# How much fits decides where a run meets the full disk (a checkpoint's arrays, its checksums, the run's
# own files), and the timing of the asynchronous save moves it: each size is a different mix of these.
@pytest.mark.slow
@pytest.mark.parametrize("size,resume", [("800k", False), ("850k", False), ("900k", True)])
def test_full_disk_ends_in_one_line_with_a_true_status(tiny_config, tmp_path, size, resume):
    """One error line; status.json says failed; no temporaries left; the checkpoint the line names as the
    last complete one is intact and no newer one is; with space given back, the run resumes from it."""
    from cnncli.checkpoint.seal import damage

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        run = disk / "run"
        res = subprocess.run([sys.executable, "-m", "cnncli.cli", "train", str(tiny_config), "--run-dir", str(run),
                              "--set", "train.steps=40", "--set", "train.checkpoint_every_steps=2",
                              "--set", "train.keep_last=20"], capture_output=True, text=True, timeout=600)
        assert res.returncode == 2
        lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "No space left on device" in lines[0], res.stderr
        assert "Traceback" not in res.stderr
        status = json.loads((run / "status.json").read_text())
        assert status["status"] == "failed" and status["reason"] in lines[0]
        checkpoints = run / "checkpoints"
        assert not list(checkpoints.glob("*orbax-checkpoint-tmp*"))
        intact = sorted(int(p.name) for p in checkpoints.iterdir() if damage(p) is None)
        named = re.search(r"the last complete checkpoint is (\S+?)(?: \(intact\))?$", lines[0])
        if named:
            assert intact and Path(named.group(1)) == checkpoints / str(intact[-1]), (lines[0], intact)
        else:
            assert "no checkpoint" in lines[0] and not intact, (lines[0], intact)
        if resume:
            subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
            res = cnn("train", "--resume", run)
            assert res.exit_code == 0, res.output
            if intact:
                assert f"from step {intact[-1]} " in res.output, res.output
            assert json.loads((run / "status.json").read_text())["status"] == "finished"
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
