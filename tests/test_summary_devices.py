"""`cnn summarize --devices N`: one device's training memory under data parallelism, with the
parameters replicated or split over the devices (`train.shard_params`), checked against the
bytes that real sharded arrays hold and against XLA's compilation of the sharded step."""

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.summary import SummaryOptions, summarize_model

runner = CliRunner()

PROBE = r"""
import json, jax
from cnncli.config import OptimizerConfig, ScheduleConfig
from cnncli.distributed import bytes_per_device, make_mesh, state_shardings
from cnncli.models import create_model
from cnncli.summary import SummaryOptions, summarize_model
from cnncli.train.optim import build_optimizer, build_schedule
from cnncli.train.state import init_train_state, split_model

assert jax.device_count() == 4
one = summarize_model("resnet18", SummaryOptions(input_size=32, num_classes=10, batch_size=4, compile=True,
                                                 advice=False))
out = {"one_device_flops": one.xla["flops"]}
for shard in (False, True):
    s = summarize_model("resnet18", SummaryOptions(input_size=32, num_classes=10, batch_size=16, devices=4,
                                                   shard_params=shard, compile=True, advice=False))
    model = create_model("resnet18", num_classes=10, input_shape=(32, 32, 3))
    parts, params, stats = split_model(model)
    sched = build_schedule(ScheduleConfig(), 0.1, 1, 1)
    tx = build_optimizer(OptimizerConfig(name="sgd", momentum=0.9), sched)
    state = init_train_state(params, stats, tx, ema=False)
    placed = jax.device_put(state, state_shardings(make_mesh(), state, shard=shard))
    out[str(shard)] = {"memory": s.memory, "xla": s.xla,
                       "params": bytes_per_device({"p": placed.params, "b": placed.batch_stats}),
                       "opt": bytes_per_device(placed.opt_state)}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def four_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("shard", ["False", "True"])
def test_per_device_bytes_equal_real_sharded_arrays(four_devices, shard):
    r = four_devices[shard]
    mem = r["memory"]
    assert (mem["devices"], mem["batch_per_device"], mem["shard_params"]) == (4, 4, shard == "True")
    assert mem["params_bytes"] == r["params"]  # parameters + BatchNorm statistics, to the byte
    # momentum has the parameters' shapes; optax adds only scalar counters beside it
    assert 0 <= r["opt"] - mem["optimizer_bytes"] <= 16


@pytest.mark.slow
def test_sharding_divides_the_state_and_keeps_the_activations(four_devices):
    rep, sh = four_devices["False"]["memory"], four_devices["True"]["memory"]
    assert sh["params_bytes"] < 0.26 * rep["params_bytes"]  # all but biases and norms split four ways
    assert sh["optimizer_bytes"] < 0.26 * rep["optimizer_bytes"]
    assert sh["activations_bytes"] == rep["activations_bytes"]


@pytest.mark.slow
@pytest.mark.parametrize("shard", ["False", "True"])
def test_xla_compiles_the_sharded_step_per_device(four_devices, shard):
    """XLA's per-device arguments are the state this device holds, plus its 4 images and labels."""
    r = four_devices[shard]
    x, mem = r["xla"], r["memory"]
    assert x["devices"] == 4 and x["note"] is None
    state = mem["params_bytes"] + mem["optimizer_bytes"]
    assert state < x["argument_bytes"] < state + 4 * 32 * 32 * 3 + 4 * 4 + 4096
    # the FLOPs of one device's share: those of one device alone stepping on 4 images; sharded, less
    # the optimizer's elementwise update of the 3/4 of the parameters another device updates
    one = four_devices["one_device_flops"]
    if shard == "False":
        assert x["flops"] == pytest.approx(one, rel=0.02)
    else:
        trainable = mem["grads_bytes"] * 4 // 4  # about: a quarter of the gradients' bytes x 4 devices / 4 bytes
        assert one - 16 * 0.75 * trainable < x["flops"] < one


@pytest.mark.slow
def test_devices_split_the_batch_not_the_replicated_state():
    one = summarize_model("vgg11", SummaryOptions(input_size=32, num_classes=10, batch_size=64)).memory
    eight = summarize_model("vgg11", SummaryOptions(input_size=32, num_classes=10, batch_size=64, devices=8)).memory
    assert eight["params_bytes"] == one["params_bytes"] and eight["optimizer_bytes"] == one["optimizer_bytes"]
    assert eight["activations_bytes"] * 8 == one["activations_bytes"]
    assert eight["batch_per_device"] == 8


def test_largest_batch_is_a_multiple_of_the_devices_that_fits_each():
    budget = 2 * 10**9
    s = summarize_model("vgg11", SummaryOptions(input_size=64, num_classes=10, batch_size=None, memory_budget=budget,
                                                devices=8, shard_params=True))
    mem = s.memory
    largest = mem["largest_batch"]
    assert largest > 0 and largest % 8 == 0 and mem["batch_size"] == largest
    per_image = mem["activations_bytes_per_image"]
    fixed = mem["params_bytes"] + mem["grads_bytes"] + mem["optimizer_bytes"]
    assert fixed + largest // 8 * per_image <= budget < fixed + (largest // 8 + 1) * per_image
    assert mem["fits"] is True


def test_cli_devices_table_json_and_errors(tmp_path):
    res = runner.invoke(app, ["summarize", "vgg11", "--input-size", "32", "--devices", "4", "--shard-params",
                              "--batch-size", "32", "--no-compile"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "per device, batch 32 = 8 x 4 devices, parameters and optimizer state split over them" in text

    res = runner.invoke(app, ["summarize", "vgg11", "--devices", "3", "--batch-size", "16", "--no-compile"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "error: the batch (16) must be divisible by the number of devices (3): it is the global batch, split "
        "evenly over them"]

    # more devices than this process has: the analytic figures, and a note instead of XLA's
    res = runner.invoke(app, ["summarize", "resnet20", "--devices", "64", "--format", "json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.output)
    assert s["memory"]["batch_size"] == 64 and s["memory"]["batch_per_device"] == 1
    assert s["xla"]["flops"] is None and "64 devices asked for" in s["xla"]["note"]


def test_config_shard_params_is_taken_unless_overridden(tmp_path):
    cfg = tmp_path / "fsdp.yaml"
    cfg.write_text("model: {name: vgg11, input_size: 32, num_classes: 10}\n"
                   "data: {source: synthetic}\n"
                   "train: {batch_size: 32, shard_params: true}\n")
    for extra, sharded in (([], True), (["--replicate-params"], False)):
        res = runner.invoke(app, ["summarize", str(cfg), "--devices", "4", "--no-compile", "--format", "json", *extra])
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["memory"]["shard_params"] is sharded


def test_a_budget_nothing_fits_is_reported_per_device_not_refused():
    s = summarize_model("vgg11", SummaryOptions(input_size=32, num_classes=10, batch_size=None, memory_budget=10**6,
                                                devices=8))
    mem = s.memory
    assert (mem["largest_batch"], mem["batch_size"], mem["fits"]) == (0, 8, False)
    assert mem["limited_by"].startswith("parameters, gradients and optimizer state alone take")
