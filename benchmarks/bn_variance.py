"""The cost of BatchNorm's stable variance: one training step with each variance, alternated.

cnn's BatchNorm takes its batch variance in one shifted pass (`cnncli.kernels.batch_stats`). This
compiles the same training step three times, with that variance, with flax's fast variance
(E[x^2] - E[x]^2, unstable far from zero) and with two passes (the mean first, then the squared
deviations), and times them in turn, `--rounds` times, in one process:

    python benchmarks/bn_variance.py --model resnet20 --batch-size 128 --input-size 32 [--xla-kernels]

On a GPU run it as is (JAX picks the card). Prints one JSON document: images/s per variance
(median over rounds) and each one's ratio to the shifted variance.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import numpy as np


def _variances():
    import jax.numpy as jnp

    from cnncli.kernels.batchnorm import batch_stats

    def fast(x, axes):
        x = jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))
        mean = jnp.mean(x, axis=axes)
        return mean, jnp.maximum(jnp.mean(jnp.square(x), axis=axes) - jnp.square(mean), 0.0)

    def two_pass(x, axes):
        x = jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))
        mean = jnp.mean(x, axis=axes)
        return mean, jnp.mean(jnp.square(x - jnp.expand_dims(mean, axes)), axis=axes)

    return {"shifted": batch_stats, "fast": fast, "two_pass": two_pass}


@contextlib.contextmanager
def _using(stats):
    import cnncli.kernels.batchnorm as kernel
    import cnncli.models.layers as layers

    saved = kernel.batch_stats, layers.batch_stats
    kernel.batch_stats = layers.batch_stats = stats
    try:
        yield
    finally:
        kernel.batch_stats, layers.batch_stats = saved


def _step(model_name: str, batch: int, size: int, dtype: str):
    import jax

    from cnncli.config import AugmentConfig, OptimizerConfig, ScheduleConfig
    from cnncli.models import create_model
    from cnncli.train.optim import build_optimizer, build_schedule
    from cnncli.train.state import init_train_state, split_model
    from cnncli.train.step import make_train_step

    options = {} if dtype == "float32" else {"dtype": dtype}
    parts, params, stats = split_model(create_model(model_name, num_classes=10, input_shape=(size, size, 3),
                                                    seed=0, **options))
    sched = build_schedule(ScheduleConfig(), 0.1, 1, 1)
    tx = build_optimizer(OptimizerConfig(lr=0.1, momentum=0.9, weight_decay=5e-4), sched)
    step = jax.jit(make_train_step(parts, tx, sched, num_classes=10, augment=AugmentConfig(),
                                   mean=[0.5] * 3, std=[0.25] * 3, seed=0), donate_argnums=0)
    rng = np.random.default_rng(0)
    images = jax.device_put(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    labels = jax.device_put(rng.integers(0, 10, batch).astype(np.int32))
    state = init_train_state(params, stats, tx, ema=False)
    compiled = step.lower(state, images, labels).compile()
    return compiled, state, images, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed window")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--xla-kernels", action="store_true", help="without cnn's oneDNN kernels on the CPU")
    args = parser.parse_args()

    import cnncli

    cnncli.apply_cpu_defaults()
    import jax

    from cnncli.kernels import xla_kernels

    kernels = xla_kernels() if args.xla_kernels else contextlib.nullcontext()
    runs = {}
    with kernels:
        for name, stats in _variances().items():
            with _using(stats):
                runs[name] = list(_step(args.model, args.batch_size, args.input_size, args.dtype))
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds + 1):  # the first round warms up and is not kept
        for name, run in runs.items():
            compiled, state, images, labels = run
            start = time.perf_counter()
            for _ in range(args.steps):
                state, metrics = compiled(state, images, labels)
            jax.block_until_ready(metrics)
            rates[name].append(args.batch_size * args.steps / (time.perf_counter() - start))
            run[1] = state
    median = {name: statistics.median(r[1:]) for name, r in rates.items()}
    print(json.dumps({
        "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "model": args.model, "batch_size": args.batch_size, "input_size": args.input_size, "dtype": args.dtype,
        "kernels": "xla" if args.xla_kernels else "default",
        "images_per_second": {k: round(v, 1) for k, v in median.items()},
        "vs_shifted": {k: round(v / median["shifted"], 3) for k, v in median.items()},
    }))


if __name__ == "__main__":
    main()
