"""The training loop's exits and the numbers it logs, checked against independent computations."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from cnncli.cli import app

runner = CliRunner()


def cnn(*args):
    return runner.invoke(app, [str(a) for a in args])


def records(run, split=None):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if split is None or r["split"] == split]


def csv_rows(run):
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def cosine_with_warmup(k, base, warm, total, final=0.0):
    """The rate of the (k+1)-th update: linear warmup to `base`, then cosine to `final`."""
    if k < warm:
        return base * (k + 1) / warm
    t = min(max((k - warm) / max(1, total - warm), 0.0), 1.0)
    return final + (base - final) * 0.5 * (1 + math.cos(math.pi * t))


EPOCH_RUN = ["--set", "train.steps=90", "--set", "train.log_every_steps=5", "--set", "train.eval_every_steps=30",
             "--set", "train.checkpoint_every_steps=1000", "--set", "schedule.warmup_steps=10"]


@pytest.mark.slow
def test_logged_lr_is_the_rate_of_the_logged_step(tiny_config, tmp_path):
    run = tmp_path / "run"
    res = cnn("train", tiny_config, "--run-dir", run, *EPOCH_RUN)
    assert res.exit_code == 0, res.output
    train = records(run, "train")
    assert [r["step"] for r in train] == list(range(5, 91, 5))
    for r in train:  # the record at step s reports the rate of update s, i.e. schedule(s - 1)
        assert r["lr"] == pytest.approx(cosine_with_warmup(r["step"] - 1, 0.05, 10, 90), rel=1e-5, abs=1e-7), r
    rows = csv_rows(run)
    assert [int(r["step"]) for r in rows] == [30, 60, 90]
    for row in rows:
        assert float(row["lr"]) == pytest.approx(cosine_with_warmup(int(row["step"]) - 1, 0.05, 10, 90), rel=1e-5, abs=1e-7)
    # the step's first record has no timed window: images_per_sec is absent, not 0
    res = cnn("train", tiny_config, "--run-dir", tmp_path / "every", "--set", "train.log_every_steps=1")
    assert res.exit_code == 0, res.output
    first, second = records(tmp_path / "every", "train")[:2]
    assert "images_per_sec" not in first and second["images_per_sec"] > 0


def _spawn(args, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "cnncli.cli", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_resume_mid_epoch_writes_the_rows_of_an_uninterrupted_run(tiny_config, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert cnn("train", tiny_config, "--run-dir", whole, *EPOCH_RUN).exit_code == 0
    slow = ["--set", "train.log_every_steps=1"]  # records every step: the signal lands mid-epoch
    proc = _spawn(["train", tiny_config, "--run-dir", cut, *EPOCH_RUN, *slow], tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (cut / "metrics.jsonl").exists() and len(records(cut, "train")) >= 40:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    stopped = json.loads((cut / "status.json").read_text())["step"]
    assert 40 <= stopped < 90 and stopped % 30, stopped  # inside the second or third epoch
    res = cnn("train", "--resume", cut, "--set", "train.log_every_steps=5")
    assert res.exit_code == 0, res.output
    a, b = csv_rows(whole), csv_rows(cut)
    assert [r["step"] for r in a] == [r["step"] for r in b] == ["30", "60", "90"]
    for ra, rb in zip(a, b):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
            assert float(rb[key]) == pytest.approx(float(ra[key]), rel=1e-6), (ra["step"], key)


@pytest.mark.slow
def test_any_failure_leaves_a_failed_status_and_a_resumable_run(tiny_config, tmp_path, monkeypatch):
    from cnncli.train import feeds

    run = tmp_path / "run"
    real_step = feeds.ArrayFeed.step
    calls = {"n": 0}

    def failing_step(self, state, batch):
        calls["n"] += 1
        if calls["n"] == 7:
            raise RuntimeError("device lost\nsecond line")
        return real_step(self, state, batch)

    monkeypatch.setattr(feeds.ArrayFeed, "step", failing_step)
    res = cnn("train", tiny_config, "--run-dir", run, "--set", "train.checkpoint_every_steps=2",
              "--set", "train.log_every_steps=1", "--set", "train.eval_every_steps=100")
    assert res.exit_code != 0 and isinstance(res.exception, RuntimeError)
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and status["reason"] == "RuntimeError: device lost"
    assert [r["step"] for r in records(run, "train")] == list(range(1, 7))  # every line parses
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())[-1] == 6

    monkeypatch.setattr(feeds.ArrayFeed, "step", real_step)
    res = cnn("train", "--resume", run)
    assert res.exit_code == 0, res.output
    assert "from step 6" in res.output
    assert [r["step"] for r in records(run, "train")] == list(range(1, 9))
    assert json.loads((run / "status.json").read_text())["status"] == "finished"


def _train_losses(run):
    return {r["step"]: r["loss"] for r in records(run, "train")}


@pytest.mark.slow
def test_resume_falls_back_past_a_damaged_checkpoint_with_the_same_losses(tiny_config, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    common = ["--set", "train.log_every_steps=1", "--set", "train.checkpoint_every_steps=2",
              "--set", "train.keep_last=10", "--set", "train.eval_every_steps=100",
              "--set", "schedule.name=constant"]  # the rate does not depend on the run's length
    assert cnn("train", tiny_config, "--run-dir", whole, *common).exit_code == 0
    assert cnn("train", tiny_config, "--run-dir", cut, *common, "--set", "train.steps=6").exit_code == 0
    # the newest checkpoint (step 6) is damaged: truncate its largest array file
    arrays = sorted((p for p in (cut / "checkpoints" / "6").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    arrays[-1].write_bytes(arrays[-1].read_bytes()[: arrays[-1].stat().st_size // 2])
    res = cnn("train", "--resume", cut, "--set", "train.steps=8")
    assert res.exit_code == 0, res.output
    flat = "".join(res.output.split())  # the console may wrap the long path anywhere
    assert f"warning:checkpoint{cut / 'checkpoints' / '6'}isdamaged(" in flat, res.output
    assert "skipped" in flat.split(f"{cut / 'checkpoints' / '6'}isdamaged(", 1)[1], res.output
    assert "from step 4" in res.output
    a, b = _train_losses(whole), _train_losses(cut)
    assert sorted(b) == list(range(1, 9))
    assert all(b[s] == a[s] for s in range(5, 9)), (a, b)  # bit for bit from the restored step on


def test_resume_refuses_a_folder_cnn_did_not_create(tmp_path, tiny_config):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "config.yaml").write_text(tiny_config.read_text() + "# my notes\n")
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    res = cnn("train", "--resume", project)
    assert res.exit_code == 2 and "not a run directory cnn created" in res.output
    assert {p: p.read_bytes() for p in project.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_killed_run_is_listed_as_dead_and_resumes(tiny_config, tmp_path):
    run = tmp_path / "run"
    proc = _spawn(["train", tiny_config, "--run-dir", run, "--set", "train.steps=400",
                   "--set", "train.checkpoint_every_steps=2", "--set", "train.log_every_steps=1"], tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.05)
    res = cnn("runs", tmp_path, "--format", "json")
    assert json.loads(res.stdout)[0]["status"] == "running"  # alive: its lock is held
    proc.kill()
    proc.wait()
    res = cnn("runs", tmp_path, "--format", "json")
    assert json.loads(res.stdout)[0]["status"] == "dead"
    res = cnn("train", "--resume", run, "--set", "train.steps=12")
    assert res.exit_code == 0, res.output


def _listing(folder):
    """Every entry under `folder` with its kind, size and modification time (ns)."""
    return {str(p.relative_to(folder)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def test_constructing_a_training_touches_no_file_and_its_session_is_the_start_step(tiny_run, tmp_path):
    """A Training of a resume at step 4 of a run logged to step 8: building it changes no entry of the run
    directory (the old metrics rows stay) and prints nothing; `run()` outside the session is refused;
    entering `session()` is what claims the run and drops the rows past step 4."""
    import io
    import shutil

    from rich.console import Console

    from cnncli.config import load_config
    from cnncli.rundir import RunDir
    from cnncli.train.loop import Training
    from cnncli.train.setup import build_training

    path = tmp_path / "run"
    shutil.copytree(tiny_run.run, path)
    setup = build_training(load_config(path / "config.yaml"), None)
    before = _listing(path)
    assert [r["step"] for r in records(path, "train")] == list(range(1, 9))
    out = io.StringIO()
    meta = {"step": 4, "images_seen": 128, "cluster": {"processes": 3, "devices": 3}}
    training = Training(setup, RunDir(path), object(), Console(file=out), (setup.state, meta))
    with pytest.raises(RuntimeError, match="session"):
        training.run()
    assert _listing(path) == before and out.getvalue() == ""
    assert json.loads((path / "status.json").read_text())["status"] == "finished"

    with training.session():
        status = json.loads((path / "status.json").read_text())
        assert status["status"] == "running" and status["pid"] == os.getpid()
        assert [r["step"] for r in records(path, "train")] == [1, 2, 3, 4]  # the resume's truncation
        assert [int(r["step"]) for r in csv_rows(path)] == [4]
    assert "written by 3 process(es) on 3 device(s)" in out.getvalue()


@pytest.mark.slow
def test_a_log_eval_and_checkpoint_step_records_then_evaluates_then_checkpoints(tiny_config, tmp_path, monkeypatch):
    """Steps 4 and 8 log, evaluate and checkpoint (2 and 6 log and checkpoint). With a fake clock -- a step
    1 s, an evaluation 50 s, a save 100 s -- every images/s is 32 (the batch per second: neither
    evaluation nor saving is in it), each epoch row's train loss is the mean of its four logged steps
    (the record came first), and each checkpoint's meta holds what the evaluation before it left."""
    import types

    from cnncli.checkpoint import CheckpointManager
    from cnncli.train import clock as clock_module
    from cnncli.train import feeds

    now = [1000.0]
    monkeypatch.setattr(clock_module, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    real_step, real_eval, real_save = feeds.ArrayFeed.step, feeds.ArrayFeed.evaluate, CheckpointManager.save
    saved = {}

    def step(self, *args):
        now[0] += 1.0
        return real_step(self, *args)

    def evaluate(self, *args):
        now[0] += 50.0
        return real_eval(self, *args)

    def save(self, step, model_tree, train_tree, meta, metrics=None):
        saved[step] = (json.loads(json.dumps(meta)), metrics)
        now[0] += 100.0
        return real_save(self, step, model_tree, train_tree, meta, metrics)

    monkeypatch.setattr(feeds.ArrayFeed, "step", step)
    monkeypatch.setattr(feeds.ArrayFeed, "evaluate", evaluate)
    monkeypatch.setattr(CheckpointManager, "save", save)
    run = tmp_path / "run"
    res = cnn("train", tiny_config, "--run-dir", run, "--set", "train.log_every_steps=1",
              "--set", "train.checkpoint_every_steps=2", "--set", "train.keep_last=10")
    assert res.exit_code == 0, res.output

    lines = records(run)
    train = {r["step"]: r for r in lines if r["split"] == "train"}
    val = {r["step"]: r for r in lines if r["split"] == "val"}
    assert sorted(train) == list(range(1, 9)) and sorted(val) == [4, 8] and sorted(saved) == [2, 4, 6, 8]
    assert "images_per_sec" not in train[1]  # the compiling step is not timed
    assert [train[s]["images_per_sec"] for s in range(2, 9)] == [32.0] * 7
    assert json.loads((run / "status.json").read_text())["images_per_sec"] == 32.0
    for s in (4, 8):  # at each boundary: the train record, then the val record
        at = [r["split"] for r in lines if r["step"] == s]
        assert at[:2] == ["train", "val"], at
    rows = {int(r["step"]): r for r in csv_rows(run)}
    assert sorted(rows) == [4, 8]
    for s in (4, 8):
        assert float(rows[s]["train_loss"]) == pytest.approx(sum(train[k]["loss"] for k in range(s - 3, s + 1)) / 4,
                                                             rel=1e-6)
        assert float(rows[s]["val_accuracy"]) == val[s]["accuracy"] and float(rows[s]["images_per_sec"]) == 32.0
    for s, (meta, metrics) in saved.items():
        assert meta["step"] == s and meta["images_seen"] == 32 * s
        # timed: steps 2..s, 1 s and 32 images each; no evaluation or save time, no image twice
        assert meta["steady"] == {"images": 32 * (s - 1), "seconds": float(s - 1)}
        if s in val:  # after the evaluation: its numbers, and the epoch it closed
            assert meta["val"]["accuracy"] == val[s]["accuracy"] and meta["val"]["loss"] == val[s]["loss"]
            assert metrics == {"val_accuracy": val[s]["accuracy"], "val_loss": val[s]["loss"]}
            assert meta["log"]["epoch_sums"] == {"loss": 0.0, "accuracy": 0.0, "n": 0}
        else:  # mid-epoch: the sums of the epoch's steps so far
            assert meta["val"] is None and metrics is None
            assert meta["log"]["epoch_sums"]["n"] == 2
            assert meta["log"]["epoch_sums"]["loss"] == pytest.approx(train[s - 1]["loss"] + train[s]["loss"],
                                                                      rel=1e-6)
