"""How `cnn bench` measures: compile ahead of time, then windows of steps each ended by a device sync."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cnncli.bench.workload import BenchRequest, Workload

Progress = Callable[[str], None]


def timed_compile(jitted, *args) -> tuple[Any, float]:
    """(the compiled function, seconds its lowering and compilation took)."""
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


def time_windows(run_one: Callable[[], Any], sync: Callable[[Any], None], warmup: int, steps: int,
                 windows: int, progress: Progress, label: str) -> list[float]:
    """Seconds per step in each window, after `warmup` steps; each window ends with a device sync."""
    out = None
    for _ in range(warmup):
        out = run_one()
    sync(out)
    windows = max(1, min(windows, steps))
    per = [steps // windows + (1 if i < steps % windows else 0) for i in range(windows)]
    times = []
    for i, n in enumerate(per):
        start = time.perf_counter()
        for _ in range(n):
            out = run_one()
        sync(out)
        times.append((time.perf_counter() - start) / n)
        progress(f"{label}: window {i + 1}/{windows}, {times[-1] * 1e3:.1f} ms/step")
    return times


def time_eval(req: BenchRequest, parts, state, work: Workload, mesh, batch_size: int, seed: int,
              progress: Progress) -> tuple[list[float], float]:
    """Forward-only throughput: `make_eval_step` on a random batch, compiled ahead of time."""
    import jax
    import numpy as np

    from cnncli.distributed import shard_global_batch
    from cnncli.train.step import make_eval_step

    rng = np.random.default_rng(seed + 1)
    args = (state.params, state.batch_stats,
            shard_global_batch(mesh, rng.integers(0, 256, (batch_size, *work.image_shape), dtype=np.uint8)),
            shard_global_batch(mesh, rng.integers(0, work.num_classes, batch_size).astype(np.int32)),
            shard_global_batch(mesh, np.ones(batch_size, np.bool_)))
    eval_step = make_eval_step(parts, num_classes=work.num_classes, mean=work.mean, std=work.std)
    progress("compiling the eval step ...")
    compiled, compile_s = timed_compile(jax.jit(eval_step), *args)
    times = time_windows(lambda: compiled(*args), jax.block_until_ready, req.warmup_steps, req.steps, req.windows,
                         progress, "eval")
    return times, compile_s
