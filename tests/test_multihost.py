"""Several processes on localhost under `jax.distributed` (CPU devices, gloo collectives), launched
the way a cluster launches them: one `cnn train` per process with --coordinator/--num-processes/
--process-id. Every wait is bounded; a process still running at its timeout is killed and fails the test.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # every test here starts several processes

CONFIG = """\
model: {name: resnet20, width: 0.5}
data: {source: digits, image_size: 16, augment: {random_crop_padding: 2}}
optimizer: {lr: 0.05}
schedule: {name: cosine, warmup_steps: 2}
train: {steps: 4, batch_size: 32, log_every_steps: 1, eval_every_steps: 2, checkpoint_every_steps: 2, seed: 3}
output: {tensorboard: false}
distributed: {initialization_timeout: 120, heartbeat_timeout: 20, shutdown_timeout: 20}
"""
TIMEOUT = 420  # seconds for one process (two share this machine's cores and both compile)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _cnn(args, log, devices=1) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cnncli.cli", "train", *map(str, args)], env=_env(devices),
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def _launch(config, run, n, *, devices=1, resume=False, extra=()) -> list[tuple[subprocess.Popen, object]]:
    """Start the `n` processes of one run; returns (process, log path) per process id."""
    port = _free_port()
    head = ["--resume", run] if resume else [config, "--run-dir", run]
    procs = []
    for i in range(n):
        log = run.parent / f"{run.name}.{'resume.' if resume else ''}{i}.log"
        procs.append((_cnn([*head, "--coordinator", f"127.0.0.1:{port}", "--num-processes", n, "--process-id", i,
                            *extra], log, devices), log))
    return procs


def _finish(procs, timeout=TIMEOUT) -> list[tuple[int, str]]:
    """(exit code, output) of each process, killing all of them if one outlives `timeout`."""
    deadline = time.monotonic() + timeout
    out = []
    try:
        for proc, log in procs:
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            out.append((rc, log.read_text()))
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out


def _train_losses(run) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["split"] == "train"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("multihost")
    (path / "tiny.yaml").write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def one_device(workdir):
    """The reference: one process, one device, the same global batch of 32."""
    run = workdir / "one"
    [(rc, out)] = _finish([(_cnn([workdir / "tiny.yaml", "--run-dir", run], workdir / "one.log"), workdir / "one.log")])
    assert rc == 0, out
    return run


@pytest.fixture(scope="module")
def pair(workdir):
    """Two processes of one device each, one run directory."""
    run = workdir / "pair"
    procs = _launch(workdir / "tiny.yaml", run, 2)
    pids = [p.pid for p, _ in procs]
    return run, pids, _finish(procs)


def test_two_processes_train_as_one(one_device, pair):
    run, pids, results = pair
    (rc0, out0), (rc1, out1) = results
    assert rc0 == 0 and rc1 == 0, out0 + out1
    a, b = _train_losses(one_device), _train_losses(run)
    assert len(a) == len(b) == 4
    assert b[0] == pytest.approx(a[0], abs=1e-6)  # same global batch, same initial parameters
    assert b == pytest.approx(a, rel=2e-3)  # BatchNorm over the global batch; only summation order differs
    assert "2 process(es) x 1 device(s) = 2 device(s); global batch 32, 16 per device" in out0
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "finished" and status["pid"] == pids[0]
    assert status["cluster"] == {"processes": 2, "devices": 2, "local_devices": 1, "platform": "cpu",
                                 "global_batch": 32, "per_device_batch": 16, "shard_params": False,
                                 "state_bytes_per_device": status["cluster"]["state_bytes_per_device"]}
    assert json.loads((run / ".lock").read_text())["pid"] == pids[0]


def test_only_process_zero_writes_and_prints(pair):
    run, _, results = pair
    (_, out0), (_, out1) = results
    files = {p.name for p in run.iterdir()}
    assert {"config.yaml", "split.json", "data.json", "metrics.jsonl", "metrics.csv", "status.json", "results.json",
            "model.safetensors", "checkpoints"} <= files
    assert not any(".tmp" in name for name in files)  # no writer's temporary left (cnncli.atomic)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["step"], r["split"]) for r in records]
    assert len(keys) == len(set(keys))  # one writer: no record twice
    assert (run / "metrics.csv").read_text().count("\n") == 1 + 2  # header + one row per evaluation
    assert "epoch" in out0 and "test accuracy" in out0
    shown = [line for line in out1.splitlines() if line.strip() and not line.startswith(("W0000", "I0000", "[Gloo]"))]
    assert shown == [], out1  # process 1 prints nothing of its own
    results_json = json.loads((run / "results.json").read_text())
    assert results_json["num_examples"] == 359  # every test image counted once across the two processes


def test_checkpoint_of_two_processes_evaluates_in_one(pair, workdir):
    run, _, _ = pair
    proc = subprocess.run([sys.executable, "-m", "cnncli.cli", "eval", str(run), "--format", "json"], env=_env(1),
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    expected = json.loads((run / "results.json").read_text())
    assert report["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-9)


def test_pair_resumes_in_one_process(pair, workdir):
    """The global batch and its order do not depend on the processes: a resume on fewer goes on, with a note."""
    run, _, _ = pair
    log = workdir / "pair.resume-one.log"
    [(rc, out)] = _finish([(_cnn(["--resume", run, "--set", "train.steps=6"], log), log)])
    assert rc == 0, out
    assert ("note: the checkpoint was written by 2 process(es) on 2 device(s), this run has 1 on 1: the global batch "
            "(32) and the order of examples stay the same, 32 per device") in out
    assert "resuming" in out and "from step 4" in out
    assert [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert json.loads((run / "status.json").read_text())["cluster"]["processes"] == 1


def test_four_devices_and_two_processes_of_two_match_one(one_device, workdir):
    four = workdir / "four"
    [(rc, out)] = _finish([(_cnn([workdir / "tiny.yaml", "--run-dir", four], workdir / "four.log", 4),
                            workdir / "four.log")])
    assert rc == 0, out
    assert "1 process(es) x 4 device(s) = 4 device(s); global batch 32, 8 per device" in out
    two_by_two = workdir / "two_by_two"
    results = _finish(_launch(workdir / "tiny.yaml", two_by_two, 2, devices=2))
    assert [rc for rc, _ in results] == [0, 0], results
    assert "2 process(es) x 2 device(s) = 4 device(s); global batch 32, 8 per device" in results[0][1]
    a = _train_losses(one_device)
    for run in (four, two_by_two):
        assert _train_losses(run) == pytest.approx(a, rel=2e-3)


def _signal_after(procs, run, step: int, sig) -> None:
    """Send `sig` to process 1 once the run has logged training step `step` (it must still be running)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and procs[1][0].poll() is None:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and f'"step": {step},' in metrics.read_text():
            break
        time.sleep(0.1)
    assert procs[1][0].poll() is None, f"process 1 ended before it could be sent {signal.Signals(sig).name}"
    procs[1][0].send_signal(sig)


def test_a_killed_process_stops_the_other_and_the_pair_resumes(workdir):
    run = workdir / "killed"
    extra = ["--set", "train.steps=24", "--set", "train.eval_every_steps=12",
             "--set", "distributed.heartbeat_timeout=10", "--set", "distributed.shutdown_timeout=10"]
    procs = _launch(workdir / "tiny.yaml", run, 2, extra=extra)
    try:
        _signal_after(procs, run, 6, signal.SIGKILL)
        (rc0, out0), _ = _finish(procs, timeout=120)  # the survivor notices (gloo, heartbeats) and leaves
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
    assert rc0 == 3, out0
    assert "error: another process of this 2-process run failed or stopped answering" in out0
    assert "restart all processes with --resume" in out0
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed"

    results = _finish(_launch(workdir / "tiny.yaml", run, 2, resume=True))
    assert [rc for rc, _ in results] == [0, 0], results
    resumed = int(results[0][1].split("resuming ")[1].split("from step ")[1].split()[0])
    assert 4 <= resumed < 24 and resumed % 2 == 0  # the last complete checkpoint before the kill
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    assert [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["split"] == "train"] == list(range(1, 25))


def test_ctrl_c_to_one_process_stops_both_at_one_checkpoint(workdir):
    """SIGINT to process 1 alone: jax's preemption service tells process 0, both stop after the same
    step, checkpoint it together and exit as interrupted; the pair resumes from there."""
    run = workdir / "interrupted"
    extra = ["--set", "train.steps=400", "--set", "train.eval_every_steps=200", "--set", "train.log_every_steps=10",
             "--set", "train.checkpoint_every_steps=200"]
    procs = _launch(workdir / "tiny.yaml", run, 2, extra=extra)
    try:
        _signal_after(procs, run, 10, signal.SIGINT)
        (rc0, out0), (rc1, out1) = _finish(procs, timeout=180)
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
    assert (rc0, rc1) == (143, 130), (out0, out1)
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted", status
    stopped = status["step"]
    assert 10 <= stopped < 400
    assert f"at step {stopped}: checkpoint written; resume with: cnn train --resume {run}" in out0
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())[-1] == stopped

    results = _finish(_launch(workdir / "tiny.yaml", run, 2, resume=True, extra=["--set", "train.steps=" +
                                                                              str(stopped + 4)]))
    assert [rc for rc, _ in results] == [0, 0], results
    assert f"from step {stopped}" in results[0][1]
    assert [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["split"] == "train"][-1] == stopped + 4


def test_unreachable_coordinator_is_one_line(workdir):
    run = workdir / "alone"
    [(rc, out)] = _finish([(_cnn([workdir / "tiny.yaml", "--run-dir", run, "--coordinator", f"127.0.0.1:{_free_port()}",
                                  "--num-processes", 2, "--process-id", 1,
                                  "--set", "distributed.initialization_timeout=2"], workdir / "alone.log"),
                            workdir / "alone.log")], timeout=120)
    assert rc == 3
    port = out.split("127.0.0.1:")[1].split()[0]
    assert out.strip().splitlines()[-1] == (
        f"error: could not join the cluster at 127.0.0.1:{port} within 2 s (distributed.initialization_timeout): is "
        "process 0 running there, and is the port reachable from this host?")
    assert not run.exists()


FOLDER_CONFIG = """\
model: {{name: resnet20, width: 0.25}}
data: {{source: folder, path: {path}, image_size: 16, channels: 1, num_workers: 1, augment: {{random_crop_padding: 2}}}}
optimizer: {{lr: 0.05}}
train: {{steps: 4, batch_size: 16, log_every_steps: 1, eval_every_steps: 2, seed: 1}}
output: {{tensorboard: false, export: null}}
"""


def test_image_folder_decoded_per_process_matches_one_process(workdir):
    """Each process decodes its rows of every training and evaluation batch (90 test images: the last
    evaluation batch is padded and masked), and the pair sees what one process sees."""
    import numpy as np
    from PIL import Image

    from cnncli.config import DataConfig
    from cnncli.data.pipeline import prepare_dataset

    d = prepare_dataset(DataConfig(source="digits", image_size=16))
    root = workdir / "folder"
    for split, n in (("train", 96), ("val", 40), ("test", 90)):
        x, y = d.split(split)
        for i, (img, label) in enumerate(zip(x[:n], y[:n])):
            (root / split / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(img)[..., 0], "L").save(root / split / str(label) / f"{i:05d}.png")
    config = workdir / "folder.yaml"
    config.write_text(FOLDER_CONFIG.format(path=root))
    # One process with two devices runs the same kernels (XLA's) over the same two halves of each batch as
    # the pair, so the only difference left is which process decoded which rows. (One device would run
    # oneDNN's kernels: rounding that training amplifies to 3e-4 in the losses by step 4.)
    single = workdir / "folder_one"
    [(rc, out)] = _finish([(_cnn([config, "--run-dir", single], workdir / "folder_one.log", devices=2),
                            workdir / "folder_one.log")])
    assert rc == 0, out
    pair = workdir / "folder_pair"
    results = _finish(_launch(config, pair, 2))
    assert [rc for rc, _ in results] == [0, 0], results

    def records(run):
        return [(r["step"], r["split"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]

    def losses(run):
        return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]

    assert records(pair) == records(single)
    assert losses(pair) == pytest.approx(losses(single), rel=1e-5)
    one, two = (json.loads((run / "results.json").read_text()) for run in (single, pair))
    assert one["num_examples"] == two["num_examples"] == 90
    assert two["accuracy"] == pytest.approx(one["accuracy"], abs=1e-9)


def test_shard_params_over_two_processes(one_device, pair, workdir):
    """FSDP-style state: each process's device holds part of every large array; the losses stay."""
    run = workdir / "sharded_pair"
    results = _finish(_launch(workdir / "tiny.yaml", run, 2, extra=["--set", "train.shard_params=true"]))
    assert [rc for rc, _ in results] == [0, 0], results
    assert _train_losses(run) == pytest.approx(_train_losses(one_device), rel=2e-3)
    sharded = json.loads((run / "status.json").read_text())["cluster"]
    replicated = json.loads((pair[0] / "status.json").read_text())["cluster"]
    assert sharded["shard_params"] and not replicated["shard_params"]
    assert sharded["state_bytes_per_device"] < 0.6 * replicated["state_bytes_per_device"]
    assert "MiB per device (split over the devices)" in results[0][1]


def test_processes_that_disagree_on_the_config_are_refused_before_the_run_directory(workdir):
    """Process 1 started with another batch size: both refuse in one line, and nothing is written (before:
    both failed later, and status.json said "running" for ever)."""
    run = workdir / "disagree"
    port = _free_port()
    procs = []
    for i, extra in enumerate(([], ["--set", "train.batch_size=64"])):
        log = workdir / f"disagree.{i}.log"
        procs.append((_cnn([workdir / "tiny.yaml", "--run-dir", run, "--coordinator", f"127.0.0.1:{port}",
                            "--num-processes", 2, "--process-id", i, *extra], log), log))
    results = _finish(procs, timeout=180)
    assert [rc for rc, _ in results] == [2, 2], results
    for _, out in results:
        assert ("error: the processes of this run disagree on the config (file and --set): process(es) 1 differ "
                "from process 0") in out and "Traceback" not in out
    assert not run.exists()


def test_sighup_to_one_process_stops_both_at_one_checkpoint(workdir):
    """A closed terminal (SIGHUP) of process 1 is passed to jax's preemption service like Ctrl-C."""
    run = workdir / "hangup"
    extra = ["--set", "train.steps=400", "--set", "train.eval_every_steps=200", "--set", "train.log_every_steps=10",
             "--set", "train.checkpoint_every_steps=200"]
    procs = _launch(workdir / "tiny.yaml", run, 2, extra=extra)
    try:
        _signal_after(procs, run, 10, signal.SIGHUP)
        (rc0, out0), (rc1, out1) = _finish(procs, timeout=180)
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
    assert (rc0, rc1) == (143, 129), (out0, out1)
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted", status
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())[-1] == status["step"]


PLACE_PROBE = """
import json, sys
import jax, numpy as np
pid, port, same = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "same"
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid, initialization_timeout=60)
from cnncli import distributed
from cnncli.errors import ConfigError
mesh = distributed.make_mesh()
tree = {"w": np.arange(4096, dtype=np.float32).reshape(64, 64), "b": np.float32(0.5) + (0 if same else pid),
        "step": np.int64(7)}
shardings = distributed.state_shardings(mesh, tree, shard=True)
try:
    placed = distributed.place(mesh, tree, shardings)
except ConfigError as exc:
    print(json.dumps({"error": str(exc)}))
    sys.exit(0)
w = placed["w"].addressable_shards[0]
print(json.dumps({"w_rows": [w.index[0].start, w.index[0].stop], "w_ok": bool(np.array_equal(w.data, tree["w"][w.index])),
                  "b": float(placed["b"].addressable_data(0)), "step_dtype": str(placed["step"].dtype),
                  "global_w": list(placed["w"].shape), "sum": float(jax.jit(lambda t: t["w"].sum())(placed))}))
"""


@pytest.mark.parametrize("same", [True, False])
def test_place_builds_each_process_shards_and_refuses_differing_values(workdir, same):
    """`place` under two processes: each builds its own devices' shards from its host copy (the split
    array's halves, the scalars whole), after one check that both hold the same values; where they differ,
    both refuse in one line (jax's own device_put would all-gather every leaf to compare it)."""
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", PLACE_PROBE, str(i), port, "same" if same else "differ"],
                              env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    if not same:
        for r in reports:
            assert r["error"].startswith("the processes of this run disagree on the train state: process(es) 1 "
                                         "differ from process 0"), r
        return
    assert [r["w_rows"] for r in reports] == [[0, 32], [32, 64]]
    assert all(r["w_ok"] and r["b"] == 0.5 and r["step_dtype"] == "int32" and r["global_w"] == [64, 64]
               for r in reports), reports
    assert reports[0]["sum"] == reports[1]["sum"] == float(np.arange(4096, dtype=np.float64).sum())
