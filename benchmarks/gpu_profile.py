"""Profile `cnn bench`'s training step and list the device's top operations by time.

    python benchmarks/gpu_profile.py resnet50 --batch-size 256 --dtype bfloat16 --steps 10 --out prof/

Runs `cnn bench`'s own step (cnncli.bench.run_bench) with a jax.profiler trace around the timed
training windows only (not the compile, the warm-up or the eval step), then reads the trace's
Perfetto JSON and sums the device's kernel time per XLA operation. Prints one JSON document:
the bench report's key figures, the busy share of the traced wall time, and the top operations
(name, milliseconds per step, share of the kernel time). Works wherever jax.profiler traces;
on the CPU the "device" rows are XLA's host-side operations.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import sys
import time
from pathlib import Path


def _trace_file(root: Path) -> Path | None:
    found = sorted(root.rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _kernel_table(trace: dict, steps: int, top: int) -> dict:
    """Per-operation device time from a Perfetto trace; device tracks are those named /device:GPU/TPU."""
    events = trace.get("traceEvents", trace if isinstance(trace, list) else [])
    names = {e.get("pid"): e.get("args", {}).get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    device_pids = {pid for pid, n in names.items() if "/device:" in n and "CPU" not in n.upper()}
    host = not device_pids
    if host:  # no accelerator in the trace: XLA's host-side ops
        device_pids = {pid for pid, n in names.items() if "/host:CPU" in n or "Host" in n}
    threads = {(e.get("pid"), e.get("tid")): e.get("args", {}).get("name", "") for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    busy: dict[str, float] = collections.defaultdict(float)  # per track, to tell kernels from derived lines
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in device_pids:
            busy[f"{names[e['pid']]} / {threads.get((e['pid'], e.get('tid')), e.get('tid'))}"] += float(e.get("dur", 0))
    # XLA's derived "XLA Ops" line names each op once; without it, the kernels on the streams.
    op_line = {k for k, n in threads.items() if k[0] in device_pids and n == "XLA Ops"}
    wanted = op_line or {k for k, n in threads.items() if k[0] in device_pids and ("Stream" in n or host)}
    per_op: dict[str, float] = collections.defaultdict(float)
    count: dict[str, int] = collections.defaultdict(int)
    first, last = float("inf"), 0.0
    for e in events:
        if e.get("ph") != "X" or (e.get("pid"), e.get("tid")) not in wanted:
            continue
        args = e.get("args") or {}
        op = args.get("hlo_op") or e.get("name", "?")
        op = op if isinstance(op, str) else str(op)
        per_op[op] += float(e.get("dur", 0.0))
        count[op] += 1
        first, last = min(first, float(e["ts"])), max(last, float(e["ts"]) + float(e.get("dur", 0.0)))
    total = sum(per_op.values())
    rows = sorted(per_op.items(), key=lambda kv: -kv[1])[:top]
    return {
        "tracks_ms_per_step": {k: v / 1e3 / steps for k, v in sorted(busy.items(), key=lambda kv: -kv[1])[:12]},
        "op_source": "XLA Ops line" if op_line else "kernels on the streams",
        "kernel_ms_per_step": total / 1e3 / steps,
        "span_ms_per_step": (last - first) / 1e3 / steps if total else 0.0,
        "top": [{"op": op[:160], "ms_per_step": us / 1e3 / steps, "share": us / total if total else 0.0,
                 "calls_per_step": count[op] / steps} for op, us in rows],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, default=Path("profile-out"))
    ap.add_argument("--no-trace", action="store_true", help="time only: the bench's figures without the profiler")
    a = ap.parse_args()

    import jax

    from cnncli import bench
    from cnncli.bench import timing

    a.out.mkdir(parents=True, exist_ok=True)
    timed = timing.time_windows

    def traced(run_one, sync, warmup, steps, windows, progress, label):
        if label != "train":
            return timed(run_one, sync, warmup, steps, windows, progress, label)
        out = None
        for _ in range(warmup):
            out = run_one()
        sync(out)
        jax.profiler.start_trace(str(a.out), create_perfetto_trace=True)
        try:
            return timed(run_one, sync, 0, steps, windows, progress, label)
        finally:
            jax.profiler.stop_trace()

    if not a.no_trace:
        timing.time_windows = traced
    req = bench.BenchRequest(a.target, batch_size=a.batch_size, input_size=a.input_size, dtype=a.dtype,
                             steps=a.steps, windows=1)
    start = time.perf_counter()
    report = bench.run_bench(req, lambda msg: print(msg, file=sys.stderr))
    result = {k: report[k] for k in ("model", "batch_size", "dtype", "device", "step_time_ms", "images_per_second",
                                     "mfu", "xla_flags", "jax_version")}
    result["wall_s"] = time.perf_counter() - start
    path = None if a.no_trace else _trace_file(a.out)
    if path is None:
        result["profile"] = None
    else:
        with gzip.open(path, "rt") as f:
            result["profile"] = _kernel_table(json.load(f), a.steps, a.top)
        result["profile"]["trace"] = str(path)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
