"""Training engine: losses, accumulation, faults (NaN, signals, kill -9, torn saves), resume."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.config import AugmentConfig, OptimizerConfig, ScheduleConfig
from cnncli.models import create_model
from cnncli.train.optim import build_optimizer, build_schedule
from cnncli.train.state import init_train_state
from cnncli.train.step import cross_entropy, make_train_step
from tests.float64 import split_float64

runner = CliRunner()


def records(run, split=None):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if split is None or r["split"] == split]


def test_label_smoothing_against_numpy():
    logits = jnp.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
    labels = jnp.array([0, 1])
    eps = 0.1
    got = np.asarray(cross_entropy(logits, labels, 3, eps))
    lg = np.asarray(logits, np.float64)
    logp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    target = np.full((2, 3), eps / 3)
    target[[0, 1], [0, 1]] += 1 - eps
    assert np.allclose(got, -(target * logp).sum(-1), atol=1e-6)
    assert np.allclose(np.asarray(cross_entropy(logits, labels, 3)), -logp[[0, 1], [0, 1]], atol=1e-6)


def _one_step(accum: int):
    """One SGD step of a small VGG in float64 with the batch in `accum` parts; accum=0: no step (the start)."""
    # VGG without BatchNorm and without dropout: the gradient of a batch is the mean of its parts
    model = create_model("vgg11", width=0.0625, dropout=0.0, num_classes=4, input_shape=(32, 32, 3), seed=0)
    parts, params, stats = split_float64(model)
    sched = build_schedule(ScheduleConfig(), 0.05, 1, 1)
    tx = build_optimizer(OptimizerConfig(name="sgd", lr=0.05, momentum=0.0), sched)
    state = init_train_state(params, stats, tx, ema=False)
    if not accum:
        return state, {}
    step = jax.jit(make_train_step(parts, tx, sched, num_classes=4, augment=AugmentConfig(), mean=[0.5] * 3,
                                   std=[0.25] * 3, seed=0, grad_accum_steps=accum))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    y = jnp.asarray(rng.integers(0, 4, 8).astype(np.int32))
    return step(state, x, y)


def test_gradient_accumulation_equals_one_large_batch():
    # float64 (tests/float64.py): in float32 one batch of 8 and four of 2 sum in different orders, and
    # on a GPU their convolutions take different algorithms, so an activation at a ReLU's or a max-pool's
    # kink may fall on either side and move a weight far beyond rounding
    with jax.enable_x64(True):
        big, m1 = _one_step(1)
        acc, m4 = _one_step(4)
        start = jax.tree.leaves(_one_step(0)[0].params)
        assert m1["loss"].dtype == jnp.float64 and jax.tree.leaves(acc.params)[0].dtype == jnp.float64
    assert float(m1["loss"]) == pytest.approx(float(m4["loss"]), rel=1e-12)
    assert float(m1["grad_norm"]) == pytest.approx(float(m4["grad_norm"]), rel=1e-12)
    for a, b, p in zip(jax.tree.leaves(big.params), jax.tree.leaves(acc.params), start):
        assert np.abs(a - p).max() > 1e-6  # the step moved every leaf
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def cnn(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.slow
def test_nan_stops_with_the_step_and_skip_counts(tiny_config, tmp_path):
    res = cnn("train", tiny_config, "--run-dir", tmp_path / "stop", "--set", "optimizer.lr=1e30")
    assert res.exit_code == 3
    assert "NaN/Inf at step 2" in res.output and "no checkpoint was written yet" in res.output
    assert json.loads((tmp_path / "stop" / "status.json").read_text())["status"] == "failed"

    res = cnn("train", tiny_config, "--run-dir", tmp_path / "skip", "--set", "optimizer.lr=1e30",
              "--set", "train.on_nonfinite=skip")
    assert res.exit_code == 0, res.output
    last = records(tmp_path / "skip", "train")[-1]
    assert last["step"] == 8 and 1 <= last["nonfinite_steps"] <= 7


def _spawn(args, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "cnncli.cli", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _train_steps_seen(run):
    return (run / "metrics.jsonl").exists() and len(records(run, "train")) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_signal_writes_checkpoint_and_resume_completes(tiny_config, tmp_path, sig, code):
    run = tmp_path / "run"
    args = ["train", tiny_config, "--run-dir", run, "--set", "train.steps=400", "--set", "train.log_every_steps=1",
            "--set", "train.eval_every_steps=1000", "--set", "train.checkpoint_every_steps=1000"]
    proc = _spawn(args, tmp_path)
    assert _wait_for(lambda: _train_steps_seen(run), proc), proc.communicate()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "checkpoint written; resume with: cnn train --resume" in err and "Traceback" not in err
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted"
    stopped = status["step"]
    assert 3 <= stopped < 400
    assert (run / "checkpoints" / str(stopped)).is_dir()

    res = cnn("train", "--resume", run, "--set", "train.steps=410")
    assert res.exit_code == 0, res.output
    steps = [r["step"] for r in records(run, "train")]
    assert steps == list(range(1, 411))  # contiguous: nothing lost, nothing repeated
    assert json.loads((run / "status.json").read_text())["status"] == "finished"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
def test_a_signal_while_the_first_step_compiles_checkpoints_it(tiny_config, tmp_path, sig):
    """status.json says "running" before the first step compiles; the signal lands in the compile, the
    step finishes, is checkpointed, and the run says it was interrupted (before: SIGHUP killed it there
    with status "running" and no checkpoint)."""
    run = tmp_path / "run"
    proc = _spawn(["train", tiny_config, "--run-dir", run, "--no-cache", "--set", "train.steps=400",
                   "--set", "train.checkpoint_every_steps=1000"], tmp_path)

    def running():
        try:
            return json.loads((run / "status.json").read_text())["status"] == "running"
        except (OSError, ValueError):
            return False

    assert _wait_for(running, proc, timeout=300), proc.communicate()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and "first step after" in err
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and status["step"] == 1, status
    assert (run / "checkpoints" / "1").is_dir()


@pytest.mark.slow
def test_a_signal_before_the_run_directory_exists_is_one_line(tiny_config, tmp_path):
    """During the imports and the data's loading nothing is written yet: one line, 129, no run directory."""
    run = tmp_path / "run"
    script = os.path.join(os.path.dirname(sys.executable), "cnn")  # the console script: handlers from its first line
    proc = subprocess.Popen([script, "train", str(tiny_config), "--run-dir", str(run)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The signal goes once jax's native library is mapped: past the handlers (the script's first
    # line, also after its relaunch) and before the run directory (after the imports and the data).
    maps = f"/proc/{proc.pid}/maps"
    assert _wait_for(lambda: "jaxlib" in open(maps).read(), proc), proc.communicate()
    assert proc.poll() is None and not run.exists()
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=300)
    assert (proc.returncode, err.splitlines()[-1:]) == (129, ["interrupted (SIGHUP)"]), err
    assert "Traceback" not in err and not run.exists()


@pytest.mark.slow
def test_kill_9_then_resume_recovers(tiny_config, tmp_path):
    run = tmp_path / "run"
    args = ["train", tiny_config, "--run-dir", run, "--set", "train.steps=100", "--set", "train.log_every_steps=1",
            "--set", "train.checkpoint_every_steps=1", "--set", "train.eval_every_steps=1000",
            "--set", "train.keep_last=2"]
    proc = _spawn(args, tmp_path)
    ck = run / "checkpoints"
    assert _wait_for(lambda: ck.exists() and sum(p.name.isdigit() for p in ck.iterdir()) >= 2, proc), \
        proc.communicate()
    proc.kill()  # SIGKILL: no handler runs, saves may be torn
    proc.wait()
    res = cnn("train", "--resume", run, "--set", "train.checkpoint_every_steps=50")
    assert res.exit_code == 0, res.output
    assert not list(ck.glob("*orbax-checkpoint-tmp*"))
    steps = [r["step"] for r in records(run, "train")]
    assert steps == list(range(1, 101))
    assert json.loads((run / "results.json").read_text())["num_examples"] == 359


@pytest.mark.slow
def test_torn_save_is_ignored_and_cleaned(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run, run)
    ck = run / "checkpoints"
    # what a crash in the middle of saving step 12 leaves behind
    torn = ck / "12.orbax-checkpoint-tmp-1234"
    shutil.copytree(ck / "8", torn)
    shutil.rmtree(torn / "model")
    res = cnn("train", "--resume", run, "--set", "train.steps=12")
    assert res.exit_code == 0, res.output
    assert not torn.exists()
    assert [r["step"] for r in records(run, "train")][-1] == 12
    assert "resuming" in res.output and "from step 8" in res.output


def test_resume_with_another_model_is_refused(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run, run)
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    res = cnn("train", "--resume", run, "--set", "model.name=resnet32", "--set", "train.steps=12")
    assert res.exit_code == 2
    assert "resnet20" in res.output and "resnet32" in res.output
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before


@pytest.mark.slow
def test_tensorboard_events_are_valid_records(tiny_config, tmp_path):
    """Parse the event file as TensorBoard does: length-prefixed records of Event protos."""
    import struct

    from tensorboardX.proto import event_pb2

    run = tmp_path / "run"
    assert cnn("train", tiny_config, "--run-dir", run, "--set", "output.tensorboard=true").exit_code == 0
    (event_file,) = (run / "tensorboard").glob("events.out.tfevents.*")
    data = event_file.read_bytes()
    tags, pos = {}, 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        ev = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
        pos += 12 + length + 4
        for v in ev.summary.value:
            tags.setdefault(v.tag, []).append((ev.step, v.simple_value))
    assert pos == len(data)
    assert [s for s, _ in tags["train/loss"]] == [2, 4, 6, 8]
    jsonl = {r["step"]: r["loss"] for r in records(run, "train")}
    assert all(v == pytest.approx(jsonl[s], rel=1e-6) for s, v in tags["train/loss"])
    assert "val/accuracy" in tags


@pytest.mark.slow
def test_ema_follows_its_recursion_and_is_evaluated_alongside(tiny_config, tmp_path):
    """With a checkpoint at every step: EMA_t = d EMA_{t-1} + (1 - d) params_t, leaf by leaf, and the
    validation record's ema_accuracy / ema_loss are those of the EMA weights (with the step's BatchNorm
    statistics), computed here by calling the restored model outside the Evaluator."""
    import orbax.checkpoint as ocp
    from flax import nnx

    from cnncli.data.pipeline import prepare_dataset
    from cnncli.evaluate import load_checkpoint_model

    d, run = 0.9, tmp_path / "run"
    res = cnn("train", tiny_config, "--run-dir", run, "--set", f"train.ema_decay={d}",
              "--set", "train.checkpoint_every_steps=1", "--set", "train.keep_last=10")
    assert res.exit_code == 0, res.output
    raw = {s: ocp.StandardCheckpointer().restore(run / "checkpoints" / str(s) / "model") for s in range(1, 9)}
    for s in range(2, 9):
        ema, prev, params = (jax.tree.leaves(raw[s]["ema_params"]), jax.tree.leaves(raw[s - 1]["ema_params"]),
                             jax.tree.leaves(raw[s]["params"]))
        assert len(ema) == len(prev) == len(params)
        for e, ep, p in zip(ema, prev, params):
            np.testing.assert_allclose(e, d * np.asarray(ep) + (1 - d) * np.asarray(p), rtol=1e-5, atol=1e-7)
    moved = [float(np.max(np.abs(np.subtract(e, p))))
             for e, p in zip(jax.tree.leaves(raw[8]["ema_params"]), jax.tree.leaves(raw[8]["params"]))]
    assert max(moved) > 1e-3  # the average lags the weights: the two evaluations differ

    loaded = load_checkpoint_model(run / "checkpoints" / "8")
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(raw[8]["params"])))
    ema = jax.tree.unflatten(jax.tree.structure(loaded.params), jax.tree.leaves(raw[8]["ema_params"]))
    x, y = prepare_dataset(loaded.config.data).split("val")
    xf = (x.astype(np.float32) / 255.0 - np.float32(loaded.mean)) / np.float32(loaded.std)
    model = nnx.merge(loaded.parts.eval_graph, ema, loaded.batch_stats, loaded.parts.rng_state)
    logits = np.asarray(model(jnp.asarray(xf)), np.float64)
    z = logits - logits.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    (record,) = [r for r in records(run, "val") if r["step"] == 8]
    assert record["ema_loss"] == pytest.approx(float(-log_probs[np.arange(len(y)), y].mean()), rel=1e-5)
    ranked = np.sort(log_probs, axis=1)
    ties = int(np.sum(ranked[:, -1] - ranked[:, -2] < 1e-5))  # may round either way in another batch size
    assert abs(record["ema_accuracy"] - float(np.mean(log_probs.argmax(1) == y))) * len(y) <= ties
    assert [r["step"] for r in records(run, "val") if "ema_accuracy" in r] == [4, 8]


@pytest.mark.slow
def test_compile_cache_is_on_by_default_and_times_are_reported(tiny_config, tmp_path):
    """A second run of the same config takes its executables from the persistent cache; --no-cache
    neither reads nor writes it. Compile time and the time to the first step are reported apart."""
    env = dict(os.environ, CNN_CACHE_DIR=str(tmp_path / "cache"))  # JAX's in <cache>/jax (cnncli/native/cache.py)

    def train(name, *extra):
        proc = subprocess.run([sys.executable, "-m", "cnncli.cli", "train", str(tiny_config), "--run-dir",
                               str(tmp_path / name), "--format", "json", *extra], env=env, capture_output=True,
                              text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "first step after" in proc.stderr
        return json.loads(proc.stdout)

    first = train("a")
    cached = sorted(p.name for p in (tmp_path / "cache" / "jax").iterdir())
    assert first["compile_cache_hits"] == 0 and cached
    assert 0 < first["compile_time_s"] < first["first_step_s"] < first["wall_time_s"]
    second = train("b")
    assert second["compile_cache_hits"] > 0
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "cache" / "jax").iterdir())
    off = train("c", "--no-cache", "--set", "train.seed=9")  # a new seed: new constants, new executables
    assert off["compile_cache_hits"] == 0
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "cache" / "jax").iterdir()) == before


@pytest.mark.parametrize("command", [True, False])
def test_the_tensorboard_writer_does_not_import_torch(tmp_path, command):
    """tensorboardX imports PyTorch where it is installed (1.1 s of a run's start-up): in the `cnn` command
    the metrics writer hides it for that import, and torch stays importable and usable by tensorboardX
    afterwards; a library user's process gets tensorboardX's own import."""
    pytest.importorskip("torch")
    if not command:
        code = ("import sys; from pathlib import Path; from cnncli.metrics import MetricsWriter\n"
                f"w = MetricsWriter(Path({str(tmp_path / 'm.jsonl')!r}), Path({str(tmp_path / 'm.csv')!r}), "
                f"Path({str(tmp_path / 'tb')!r}))\n"
                "assert 'torch' in sys.modules\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return
    code = (
        "import sys; from pathlib import Path; from cnncli.metrics import MetricsWriter, "
        "hide_torch_from_tensorboardx\nhide_torch_from_tensorboardx()\n"
        f"w = MetricsWriter(Path({str(tmp_path / 'm.jsonl')!r}), Path({str(tmp_path / 'm.csv')!r}), Path({str(tmp_path / 'tb')!r}))\n"
        "w.write(1, 0.5, 'train', {'loss': 1.25}); w.close()\n"
        "assert w._tb is not None and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)\n"
        "import torch; print('torch', torch.__version__)\n"
        "w._tb.add_scalar('t', torch.tensor(2.5), 1); w._tb.close()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("torch ")
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
