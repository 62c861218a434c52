"""Three ResNet-20 training steps in a fresh process, and a yardstick for how far two runs' weights
may drift apart under float32 rounding: the shared instrument of the tests that compare two ways
of compiling the same step (XLA flags, oneDNN kernels)."""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

SCRIPT = r"""
import json, os
import cnncli
cnncli.apply_cpu_defaults()  # as the `cnn` command does at start
import jax, numpy as np
from cnncli.config import AugmentConfig, OptimizerConfig, ScheduleConfig
from cnncli.kernels import kernels_in_use
from cnncli.models import create_model
from cnncli.train.optim import build_optimizer, build_schedule
from cnncli.train.state import init_train_state, split_model
from cnncli.train.step import make_train_step
parts, params, stats = split_model(create_model("resnet20", num_classes=10, input_shape=(32, 32, 3), seed=1))
sched = build_schedule(ScheduleConfig(), 0.1, 1, 1)
tx = build_optimizer(OptimizerConfig(lr=0.1, momentum=0.9, weight_decay=5e-3), sched)
step = jax.jit(make_train_step(parts, tx, sched, num_classes=10, augment=AugmentConfig(random_crop_padding=4, flip=True),
                               mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3], seed=0))
rng = np.random.default_rng(0)
x, y = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 16).astype(np.int32)
if os.environ.get("PERTURB"):  # each weight moved by about one float32 rounding step
    noise = np.random.default_rng(1)
    params = jax.tree.map(lambda p: p * (1 + 1e-7 * noise.standard_normal(p.shape)).astype(np.float32), params)
state, losses = init_train_state(params, stats, tx, ema=False), []
for _ in range(3):
    state, m = step(state, x, y)
    losses.append(float(m["loss"]))
np.savez(os.environ["THREE_STEPS_OUT"], *[np.asarray(p) for p in jax.tree.leaves(state.params)])  # every value
print(json.dumps({"flags": os.environ.get("XLA_FLAGS", ""), "kernels": kernels_in_use(), "losses": losses}))
"""


def run_three_steps(**env: str) -> dict:
    """SCRIPT's report, run on the CPU with `env` over this environment (cnn's switches cleared): its
    flags, kernels and losses, and under "params" every value of every parameter leaf after the steps."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("XLA_FLAGS", "CNN_XLA_DEFAULTS", "CNN_ONEDNN", "PERTURB")}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "params.npz")
        environ.update(JAX_PLATFORMS="cpu", THREE_STEPS_OUT=out, **env)
        proc = subprocess.run([sys.executable, "-c", SCRIPT], env=environ, capture_output=True, text=True,
                              timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        with np.load(out) as arrays:
            report["params"] = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
    return report


def weight_spread(run: dict, reference: dict) -> float:
    """Median over parameter leaves of the largest difference (over every value of the leaf), relative to
    the reference's largest value."""
    assert [np.shape(a) for a in run["params"]] == [np.shape(b) for b in reference["params"]]
    return float(np.median([np.max(np.abs(np.subtract(a, b))) / np.max(np.abs(b))
                            for a, b in zip(run["params"], reference["params"])]))
