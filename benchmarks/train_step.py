"""Training-step throughput (images/s, compile excluded) under XLA CPU flag variants.

Each variant runs in its own process (XLA_FLAGS must be set before jax is imported); the
ratios against the default are measured in one run of this script.

    python benchmarks/train_step.py [--models resnet20,vgg11] [--steps 20] [--batch 128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# "default": what cnn does by itself (its XLA defaults included); "xla-default": XLA's own.
VARIANTS = {
    "default": "",
    "xla-default": None,
    "ynn-off": "--xla_cpu_experimental_ynn_fusion_type=",
    "ynn-no-individual-conv": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
}

CHILD = r"""
import json, sys, time
import cnncli
cnncli.apply_cpu_defaults()  # what the `cnn` command applies at start (XLA flags, oneDNN kernels)
import jax, jax.numpy as jnp, numpy as np
from cnncli.config import AugmentConfig, OptimizerConfig, ScheduleConfig
from cnncli.models import create_model
from cnncli.train.optim import build_optimizer, build_schedule
from cnncli.train.state import init_train_state, split_model
from cnncli.train.step import make_train_step
name, size, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model = create_model(name, num_classes=10, input_shape=(size, size, 3))
parts, params, stats = split_model(model)
sched = build_schedule(ScheduleConfig(), 0.1, 1, 1)
tx = build_optimizer(OptimizerConfig(), sched)
step = jax.jit(make_train_step(parts, tx, sched, num_classes=10, augment=AugmentConfig(random_crop_padding=4, flip=True),
                               mean=[0.5] * 3, std=[0.25] * 3, seed=0), donate_argnums=0)
state = init_train_state(params, stats, tx, ema=False)
rng = np.random.default_rng(0)
x = jnp.asarray(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
y = jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))
t0 = time.perf_counter(); state, m = step(state, x, y); jax.block_until_ready(m); compile_s = time.perf_counter() - t0
state, m = step(state, x, y); jax.block_until_ready(m)
t0 = time.perf_counter()
for _ in range(steps):
    state, m = step(state, x, y)
jax.block_until_ready(m)
dt = time.perf_counter() - t0
print(json.dumps({"images_per_sec": steps * batch / dt, "compile_s": compile_s}))
"""

SIZES = {"resnet20": 32, "plain20": 32, "resnet56": 32, "vgg11": 32, "resnet18": 64, "alexnet": 67}


def run(model: str, flags: str | None, batch: int, steps: int) -> dict:
    env = dict(os.environ)
    env["CNN_XLA_DEFAULTS"] = "0" if flags is None else "1"
    if flags:
        env["XLA_FLAGS"] = flags
    else:
        env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-c", CHILD, model, str(SIZES.get(model, 32)), str(batch), str(steps)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="resnet20,vgg11,resnet18")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    print(f"{'model':<10} {'variant':<24} {'img/s':>8} {'ratio':>6} {'compile s':>9}")
    for model in args.models.split(","):
        base = None
        for variant, flags in VARIANTS.items():
            r = run(model, flags, args.batch, args.steps)
            base = base or r["images_per_sec"]
            print(f"{model:<10} {variant:<24} {r['images_per_sec']:8.1f} {r['images_per_sec'] / base:6.2f} "
                  f"{r['compile_s']:9.1f}", flush=True)


if __name__ == "__main__":
    main()
