"""`cnn bench` reports the real training step; the PyTorch reference does the same work as cnn."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cnncli.cli import app

runner = CliRunner()
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

KEYS = ("model", "batch_size", "input_size", "dtype", "device", "compile_time_s", "step_time_ms",
        "step_time_ms_spread", "images_per_second", "eval_images_per_second", "flops_per_step", "kernels",
        "achieved_flops_per_second", "mfu", "xla_flags")


def cnn(*args):
    return runner.invoke(app, [str(a) for a in args])


def bench_json(*args) -> dict:
    res = cnn("bench", *args, "--steps", 2, "--warmup", 1, "--format", "json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.mark.slow
def test_bench_tiny_model_gives_a_wellformed_report():
    from cnncli.summary.report import SummaryOptions, summarize_model

    r = bench_json("resnet20", "--batch-size", 8, "--input-size", 16)
    assert all(k in r for k in KEYS)
    assert (r["model"], r["batch_size"], r["input_size"], r["dtype"]) == ("resnet20", 8, 16, "float32")
    import jax

    assert r["device"] == {"platform": jax.devices()[0].platform, "kind": jax.devices()[0].device_kind,
                           "count": len(jax.devices())}
    for key in ("compile_time_s", "step_time_ms", "images_per_second", "eval_images_per_second", "flops_per_step",
                "achieved_flops_per_second"):
        assert r[key] > 0, key
    assert r["step_time_ms_spread"] >= 0
    assert r["images_per_second"] == pytest.approx(8 / (r["step_time_ms"] / 1e3))
    assert r["achieved_flops_per_second"] == pytest.approx(r["model_flops_per_step"] / (r["step_time_ms"] / 1e3))
    # Model FLOPs: three forward passes, 2 FLOPs per multiply-accumulate (the summary counts them layer by layer).
    forward = 2 * summarize_model("resnet20", SummaryOptions(input_size=16)).total_macs * 8
    assert r["model_flops_per_step"] == pytest.approx(3 * forward)
    if r["device"]["platform"] == "cpu":
        assert r["mfu"] is None  # no known peak for a CPU
        # XLA:CPU counts the convolutions too (it skips the first layer's input gradient, adds the small ops);
        # where oneDNN runs them, XLA counts the same step compiled with its own.
        assert 0.75 * 3 * forward < r["flops_per_step"] < 1.25 * 3 * forward
        from cnncli.kernels import kernels_in_use

        assert r["kernels"] == kernels_in_use()
    assert math.isfinite(r["final_loss"])


@pytest.mark.slow
def test_bench_and_summarize_report_one_xla_flop_count():
    """Both compile the step a bare model name stands for and read XLA's count of the compiled program
    (bench read the lowered one where oneDNN ran the step: 2.4% lower for ResNet-20 at batch 128)."""
    r = bench_json("resnet20", "--batch-size", 8, "--input-size", 16)
    res = cnn("summarize", "resnet20", "--batch-size", 8, "--input-size", 16, "--format", "json")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["xla"]["flops"] == r["flops_per_step"] > 0


def resnet20_macs(size: int, channels: int, width: float = 1.0, classes: int = 10) -> int:
    """ResNet-20's multiply-accumulates per image, by hand: a 3x3 stem, three stages of six 3x3
    convolutions (16, 32, 64 channels times `width`; the first of stages 2 and 3 halves the size),
    option-A shortcuts (no weights) and the dense layer."""
    c1, c2, c3 = (round(c * width) for c in (16, 32, 64))
    s2, s3 = size // 2, size // 4
    return (9 * channels * c1 * size**2 + 6 * 9 * c1 * c1 * size**2
            + 9 * c1 * c2 * s2**2 + 5 * 9 * c2 * c2 * s2**2
            + 9 * c2 * c3 * s3**2 + 5 * 9 * c3 * c3 * s3**2 + c3 * classes)


def assert_timed_and_counted(r: dict, batch: int, macs: int) -> None:
    """Throughput from the step time; model FLOPs = 3 forward passes of 2 FLOPs per MAC; XLA's count of
    the compiled step within 25% of them (see test_bench_tiny_model_gives_a_wellformed_report)."""
    assert r["step_time_ms"] > 0 and r["compile_time_s"] > 0
    assert r["images_per_second"] == pytest.approx(batch / (r["step_time_ms"] / 1e3))
    assert r["model_flops_per_step"] == pytest.approx(3 * 2 * macs * batch)
    assert 0.75 * r["model_flops_per_step"] < r["flops_per_step"] < 1.25 * r["model_flops_per_step"]
    assert math.isfinite(r["final_loss"])


@pytest.mark.slow
def test_bench_names_xla_where_onednn_does_not_take_the_step():
    import jax

    if jax.default_backend() != "cpu":
        pytest.skip("the oneDNN kernels are for the CPU")
    r = bench_json("resnet20", "--batch-size", 4, "--input-size", 8, "--dtype", "bfloat16")
    assert r["kernels"].startswith("XLA (") and r["dtype"] == "bfloat16"
    assert_timed_and_counted(r, 4, resnet20_macs(8, 3))


@pytest.mark.slow
def test_bench_times_a_config_on_its_own_data(tiny_config):
    r = bench_json(tiny_config, "--data", "config")
    assert (r["model"], r["batch_size"], r["input_size"], r["channels"], r["data"]) == ("resnet20", 32, 16, 1, "config")
    assert_timed_and_counted(r, 32, resnet20_macs(16, 1, width=0.5))  # the config's model.width: 0.5


@pytest.mark.parametrize("args, message", [
    (["resnet21"], "unknown model 'resnet21'"),
    (["resnet20", "--batch-size", "0"], "--batch-size must be a positive integer"),
    (["resnet20", "--dtype", "float64"], "--dtype must be one of float32, bfloat16"),
    (["resnet20", "--data", "config"], "--data config needs a config file"),
    (["missing.yaml"], "does not exist"),
])
def test_bench_bad_input_is_one_line_and_exit_2(args, message):
    res = cnn("bench", *args)
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr


def _reference():
    spec = importlib.util.spec_from_file_location("torch_reference", BENCHMARKS / "torch_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_reference_resnet20_matches_cnn_loss_over_three_sgd_steps():
    torch = pytest.importorskip("torch", reason="the PyTorch reference needs the bench extra: pip install -e '.[bench]'")
    import jax
    import jax.numpy as jnp

    from cnncli.config import AugmentConfig, OptimizerConfig, ScheduleConfig
    from cnncli.data.augment import augment_train
    from cnncli.models import create_model
    from cnncli.train.optim import build_optimizer, build_schedule
    from cnncli.train.state import init_train_state
    from cnncli.train.step import make_train_step
    from tests.float64 import split_float64

    # Both sides in float64, on the same input. In float32 the comparison is at the mercy of ReLU's kink:
    # among the ~3M activations of three steps some sit within float32 rounding of zero (this batch has
    # one at 3.4e-6 in the last block), and which side of the kink it lands on depends on the order of
    # float32 sums (oneDNN or XLA, this CPU or another): the third loss moves by 6.5e-4. The input is
    # cnn's own normalisation (XLA's x / 255 is a multiplication, an ulp off numpy's division). cnn's
    # oneDNN kernels take float32 only: here its XLA path runs; tests/test_kernels.py holds one to the other.
    ref = _reference()
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 16).astype(np.int32)
    x = jax.jit(lambda im: augment_train(jax.random.key(0), im, AugmentConfig(), jnp.float32(mean), jnp.float32(std),
                                         None))(images)
    x = torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float64).transpose(0, 3, 1, 2)))
    y = torch.from_numpy(labels.astype(np.int64))

    with jax.enable_x64(True):
        parts, params, stats = split_float64(create_model("resnet20", num_classes=10, input_shape=(32, 32, 3), seed=1))
        sched = build_schedule(ScheduleConfig(), 0.1, 1, 1)
        tx = build_optimizer(OptimizerConfig(lr=0.1, momentum=0.9, weight_decay=5e-3), sched)
        step = jax.jit(make_train_step(parts, tx, sched, num_classes=10, augment=AugmentConfig(), mean=mean,
                                       std=std, seed=0))
        state = init_train_state(params, stats, tx, ema=False)

        torch.manual_seed(0)
        model = ref.build_model("resnet20", 10).train()
        with torch.no_grad():
            ref.load_cnn_weights(model, params, stats)
        model = model.double()
        torch_step = ref.make_step(model, ref.make_optimizer(model, lr=0.1, momentum=0.9, weight_decay=5e-3), None,
                                   "cpu")
        # The loss after the second update tells the optimizers apart: with weight decay 0 on one side it
        # moves by 2.5e-4 relative, with momentum 0.8 by 1.5e-2 (measured on cnn's side in float32).
        for _ in range(3):
            state, metrics = step(state, images, labels)
            assert metrics["loss"].dtype == jnp.float64
            # float64 apart from cnn's learning rate, momentum and decay, float32 scalars: 2e-9 apart
            assert float(torch_step(x, y)) == pytest.approx(float(metrics["loss"]), rel=1e-7)


def test_report_figures_from_the_measurements():
    """The report's derived figures, from made-up measurements on a chip with a known peak (the MFU branch
    no CPU run reaches): medians over the windows, FLOPs times the devices, MFU against 2 x the H200's peak."""
    import dataclasses

    from cnncli.bench import BenchRequest
    from cnncli.bench.report import Measured, bench_report
    from cnncli.bench.workload import Workload
    from cnncli.config import config_from_dict

    cfg = config_from_dict({"model": {"name": "resnet20"}, "train": {"batch_size": 64}}, "test", [])
    work = Workload((32, 32, 3), 10, [0.5] * 3, [0.25] * 3)
    device = {"platform": "gpu", "kind": "NVIDIA H200", "count": 2}
    m = Measured(step_times=[0.030, 0.010, 0.020], eval_times=[0.004, 0.008], compile_s=12.0, eval_compile_s=3.0,
                 flops_per_device=1e12, model_flops=9e11, final_loss=2.5, kernels="XLA")
    r = bench_report(BenchRequest("resnet20", steps=3), cfg, work, device, m)
    assert r["step_time_ms"] == pytest.approx(20.0) and r["step_time_ms_spread"] == pytest.approx(20.0)
    assert r["step_time_ms_windows"] == pytest.approx([30.0, 10.0, 20.0]) and r["windows"] == 3
    assert r["images_per_second"] == pytest.approx(64 / 0.020)
    assert r["eval_step_time_ms"] == pytest.approx(6.0) and r["eval_images_per_second"] == pytest.approx(64 / 0.006)
    assert r["flops_per_step"] == 2e12 and r["xla_flops_per_second"] == pytest.approx(2e12 / 0.020)
    assert r["achieved_flops_per_second"] == pytest.approx(9e11 / 0.020)
    assert r["peak_flops_per_second"] == 2 * 989.4e12
    assert r["mfu"] == pytest.approx(9e11 / 0.020 / (2 * 989.4e12))
    assert (r["batch_size"], r["input_size"], r["channels"], r["final_loss"]) == (64, 32, 3, 2.5)
    cpu = bench_report(BenchRequest("resnet20"), cfg, work, {**device, "platform": "cpu"},
                       dataclasses.replace(m, flops_per_device=None))
    assert (cpu["mfu"], cpu["peak_flops_per_second"], cpu["flops_per_step"], cpu["xla_flops_per_second"]) == (
        None, None, None, None)


def test_time_windows_splits_the_steps_and_syncs_each_window():
    from cnncli.bench.timing import time_windows

    calls, syncs, said = [], [], []
    times = time_windows(lambda: calls.append(1) or len(calls), syncs.append, warmup=2, steps=7, windows=3,
                         progress=said.append, label="train")
    assert len(calls) == 2 + 7 and len(times) == 3 and all(t >= 0 for t in times)
    assert syncs == [2, 2 + 3, 2 + 3 + 2, 2 + 3 + 2 + 2]  # after the warm-up, then after windows of 3, 2, 2 steps
    assert [s.split(",")[0] for s in said] == ["train: window 1/3", "train: window 2/3", "train: window 3/3"]
