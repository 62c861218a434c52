"""`cnn bench`'s report: the measurements with the figures derived from them and the process's setup."""

from __future__ import annotations

import dataclasses
import os
import statistics
from pathlib import Path
from typing import Any

from cnncli.bench.flops import peak_flops
from cnncli.bench.workload import BenchRequest, Workload
from cnncli.config import Config


@dataclasses.dataclass(frozen=True)
class Measured:
    """What a bench measured: seconds per step in each window, compile seconds, FLOPs, the last loss."""

    step_times: list[float]
    eval_times: list[float]
    compile_s: float
    eval_compile_s: float
    flops_per_device: float | None  # XLA's count of the compiled step, one device's
    model_flops: float
    final_loss: float
    kernels: str


def started_with(name: str) -> str:
    """`name`'s value in the environment this process started with (what ld.so and glibc read: the
    `cnn` command restores the user's own values after its relaunch, cnncli/entry.py)."""
    try:
        for entry in Path("/proc/self/environ").read_bytes().split(b"\0"):
            key, _, value = entry.partition(b"=")
            if key.decode(errors="replace") == name:
                return value.decode(errors="replace")
        return ""
    except OSError:
        return os.environ.get(name, "")


def device_info() -> dict[str, Any]:
    import jax

    devices = jax.devices()
    return {"platform": devices[0].platform, "kind": devices[0].device_kind, "count": len(devices)}


def bench_report(req: BenchRequest, cfg: Config, work: Workload, device: dict[str, Any], m: Measured) -> dict[str, Any]:
    """The JSON report of `cnn bench`: medians over the windows, throughput, FLOP/s and MFU."""
    import jax

    bs = cfg.train.batch_size
    step_s = statistics.median(m.step_times)
    eval_s = statistics.median(m.eval_times)
    # Under data parallelism every device runs the same partitioned program on its share of the batch.
    flops = m.flops_per_device * device["count"] if m.flops_per_device is not None else None
    achieved = m.model_flops / step_s
    peak = peak_flops(device["kind"]) if device["platform"] != "cpu" else None
    mfu = achieved / (peak * device["count"]) if peak else None
    return {
        "model": cfg.model.name,
        "target": req.target,
        "batch_size": bs,
        "input_size": work.image_shape[0],
        "channels": work.image_shape[2],
        "dtype": cfg.model.dtype,
        "data": req.data,
        "device": device,
        "compile_time_s": m.compile_s,
        "step_time_ms": step_s * 1e3,
        "step_time_ms_spread": (max(m.step_times) - min(m.step_times)) * 1e3,
        "step_time_ms_windows": [s * 1e3 for s in m.step_times],
        "images_per_second": bs / step_s,
        "eval_compile_time_s": m.eval_compile_s,
        "eval_step_time_ms": eval_s * 1e3,
        "eval_images_per_second": bs / eval_s,
        "flops_per_step": flops,
        "xla_flops_per_second": flops / step_s if flops is not None else None,
        "model_flops_per_step": m.model_flops,
        "achieved_flops_per_second": achieved,
        "peak_flops_per_second": peak * device["count"] if peak else None,
        "mfu": mfu,
        "steps": req.steps,
        "warmup_steps": req.warmup_steps,
        "windows": len(m.step_times),
        "final_loss": m.final_loss,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "kernels": m.kernels,
        "glibc_tunables": started_with("GLIBC_TUNABLES"),
        "ld_preload": started_with("LD_PRELOAD"),  # the allocator (cnncli/entry.py)
        "jax_version": jax.__version__,
    }
