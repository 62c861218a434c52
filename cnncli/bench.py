"""`cnn bench`: time the training step that `cnn train` runs.

The step is built exactly as the training loop builds it (`make_train_step` with the
config's augmentation, the optimizer from `cnncli.train.optim`, the state replicated and
the batch sharded over the mesh of `cnncli.distributed`) and compiled ahead of time, so
compile time is measured apart from running time. Steady-state time is the median over
several windows of steps after a warm-up, each window ended by waiting for the device.

FLOPs come two ways: `flops_per_step` is XLA's cost analysis of the compiled step (null on a
GPU, where it would leave out the convolutions that run as cuDNN calls; where the step's convolutions and batch
norms are oneDNN calls, it is the analysis of the same step compiled with XLA's own -- the
figure `cnn summarize` reports, cnncli.train.xla_cost), `model_flops_per_step` is counted from
the traced forward pass (convolutions and matrix products, x 3 for the backward pass).
Achieved FLOP/s and MFU use the model FLOPs, MFU against the chip's dense bf16 peak.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnncli.config import Config
from cnncli.errors import ConfigError
from cnncli.kernels import kernels_in_use, xla_kernels

DTYPES = ("float32", "bfloat16")
DATA_CHOICES = ("synthetic", "config")

# Dense bfloat16 peak FLOP/s per chip, matched against the device kind in this order.
PEAK_BF16_FLOPS = (
    ("h100 pcie", 756e12),
    ("h100 nvl", 835e12),
    ("h100", 989.4e12),
    ("h200", 989.4e12),
    ("a100", 312e12),
    ("l4", 121e12),
    ("tpu v4", 275e12),
    ("tpu v5 lite", 197e12),
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),
    ("tpu v6 lite", 918e12),
    ("tpu v6e", 918e12),
)

Progress = Callable[[str], None]


def peak_flops(device_kind: str) -> float | None:
    """The chip's dense bf16 peak FLOP/s for a known device kind, else None."""
    kind = device_kind.lower()
    for key, peak in PEAK_BF16_FLOPS:
        if key in kind:
            return peak
    return None


@dataclasses.dataclass(frozen=True)
class BenchRequest:
    """What to time: a model name or config file and the command-line choices."""

    target: str
    batch_size: int | None = None
    input_size: int | None = None
    dtype: str | None = None
    steps: int = 20
    data: str = "synthetic"
    warmup_steps: int = 2
    windows: int = 5


def _is_config_path(target: str) -> bool:
    return target.endswith((".yaml", ".yml")) or Path(target).is_file()


def resolve_config(req: BenchRequest) -> Config:
    """Validate the request and build the Config it times (the file's, or a bare model's)."""
    from cnncli.config import config_from_dict, read_yaml

    if req.dtype is not None and req.dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {req.dtype!r}")
    if req.data not in DATA_CHOICES:
        raise ConfigError(f"--data must be one of {', '.join(DATA_CHOICES)}, got {req.data!r}")
    for flag, value in (("--batch-size", req.batch_size), ("--input-size", req.input_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be a positive integer, got {value}")
    if req.steps < 1:
        raise ConfigError(f"--steps must be a positive integer, got {req.steps}")
    if _is_config_path(req.target):
        path = Path(req.target)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        raw, where = read_yaml(path), str(path)
    else:
        if req.data == "config":
            raise ConfigError("--data config needs a config file; a bare model name is timed on synthetic data")
        from cnncli.train.recipe import bare_model_raw

        raw, where = bare_model_raw(req.target), "bench"
    overrides = []
    if req.batch_size is not None:
        overrides.append(f"train.batch_size={req.batch_size}")
    if req.input_size is not None:
        overrides.append(f"model.input_size={req.input_size}")
    if req.dtype is not None:
        overrides.append(f"model.dtype={req.dtype}")
    cfg = config_from_dict(raw, where, overrides)
    from cnncli.models import get_spec

    get_spec(cfg.model.name)
    return cfg


def _model_options(cfg: Config) -> dict[str, Any]:
    m = cfg.model
    return {"dropout": m.dropout, "width": m.width, "shortcut": m.shortcut, "zero_init_residual": m.zero_init_residual,
            "bn_momentum": m.bn_momentum, "bn_epsilon": m.bn_epsilon, "dtype": m.dtype, "remat": m.remat,
            "lrn": m.lrn}


@dataclasses.dataclass
class _Workload:
    """The step's inputs: a batch source, the data's shape and normalisation."""

    image_shape: tuple[int, int, int]
    num_classes: int
    mean: list[float]
    std: list[float]
    dataset: Any = None  # a prepared Dataset for --data config


def _workload(cfg: Config, data: str) -> _Workload:
    from cnncli.models import get_spec

    spec = get_spec(cfg.model.name)
    if data == "config":
        from cnncli.data.pipeline import prepare_dataset

        d = cfg.data
        if cfg.model.input_size is not None:
            d = dataclasses.replace(d, image_size=cfg.model.input_size)
        if cfg.model.in_channels is not None:
            d = dataclasses.replace(d, channels=cfg.model.in_channels)
        ds = prepare_dataset(d)
        return _Workload(ds.image_shape, max(cfg.model.num_classes or 0, ds.num_classes), ds.mean, ds.std, ds)
    size = cfg.model.input_size or cfg.data.image_size or spec.default_input[0]
    channels = cfg.model.in_channels or cfg.data.channels or spec.default_input[2]
    classes = cfg.model.num_classes or (cfg.data.num_classes if cfg.data.source == "synthetic"
                                        else spec.default_classes)
    return _Workload((size, size, channels), classes, [0.5] * channels, [0.25] * channels)


def _batches(cfg: Config, work: _Workload, mesh, step_fn):
    """(function to jit, endless iterator of its batch arguments), as the training feeds build them."""
    import numpy as np

    from cnncli.distributed import shard_global_batch

    batch_size = cfg.train.batch_size
    if work.dataset is None:
        rng = np.random.default_rng(cfg.train.seed)
        x = shard_global_batch(mesh, rng.integers(0, 256, (batch_size, *work.image_shape), dtype=np.uint8))
        y = shard_global_batch(mesh, rng.integers(0, work.num_classes, batch_size).astype(np.int32))

        def fixed():
            while True:
                yield x, y

        return step_fn, fixed()
    from cnncli.data.pipeline import TrainIndexStream
    from cnncli.train.feeds import ArrayFeed, make_feed

    ds = work.dataset
    if len(ds.y_train) < batch_size:
        raise ConfigError(f"train.batch_size = {batch_size} is larger than the training split ({len(ds.y_train)})")
    stream = TrainIndexStream(len(ds.y_train), batch_size, cfg.train.seed)
    feed = make_feed(ds, mesh, step_fn, None, cfg)
    if isinstance(feed, ArrayFeed):  # the device-resident data: the step gathers its batch by index
        def fn(state, data_x, data_y, idx):
            return step_fn(state, data_x[idx], data_y[idx])
    else:
        fn = step_fn
    return fn, iter(feed.batches(stream, 0, 1 << 30))


def _jaxpr_macs(jaxpr) -> int:
    """Multiply-accumulates of the convolutions and matrix products in a jaxpr, sub-jaxprs included."""
    import math

    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
            total += math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) // out_features
        elif name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += _jaxpr_macs(inner)
    return total


def model_flops_per_step(parts, params, batch_stats, batch_shape: tuple[int, ...]) -> float:
    """The model's training FLOPs for one batch: 3 x the forward pass (backward = 2 x forward), 2 per MAC.

    Counted from the traced forward pass, independent of the backend: XLA's GPU cost analysis
    leaves out convolutions that run as cuDNN calls.
    """
    import jax
    import jax.numpy as jnp

    from cnncli.train.step import forward

    x = jax.ShapeDtypeStruct(batch_shape, jnp.float32)
    with xla_kernels():  # convolutions as lax primitives, whatever runs them
        closed = jax.make_jaxpr(lambda p, s, x: forward(parts, p, s, x, train=True)[0])(params, batch_stats, x)
    return 3.0 * 2.0 * _jaxpr_macs(closed.jaxpr)


def _timed_compile(jitted, *args) -> tuple[Any, float]:
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


def _time_windows(run_one: Callable[[], Any], sync: Callable[[Any], None], warmup: int, steps: int,
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


def _time_eval(req: BenchRequest, parts, state, work: _Workload, mesh, batch_size: int, seed: int,
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
    compiled, compile_s = _timed_compile(jax.jit(eval_step), *args)
    times = _time_windows(lambda: compiled(*args), jax.block_until_ready, req.warmup_steps, req.steps, req.windows,
                          progress, "eval")
    return times, compile_s


def _started_with(name: str) -> str:
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


def _device_info() -> dict[str, Any]:
    import jax

    devices = jax.devices()
    return {"platform": devices[0].platform, "kind": devices[0].device_kind, "count": len(devices)}


def run_bench(req: BenchRequest, progress: Progress = lambda _msg: None) -> dict[str, Any]:
    """Compile and time the training and evaluation steps of `req`; returns the report as a dict."""
    cfg = resolve_config(req)
    import jax

    from cnncli.distributed import check_batch_size, make_mesh, replicate
    from cnncli.models import create_model
    from cnncli.train.optim import build_optimizer, build_schedule
    from cnncli.train.state import init_train_state, split_model
    from cnncli.train.step import make_train_step
    from cnncli.train.xla_cost import xla_flops

    t = cfg.train
    work = _workload(cfg, req.data)
    mesh = make_mesh()
    check_batch_size(t.batch_size, mesh)
    device = _device_info()
    progress(f"bench {cfg.model.name}: batch {t.batch_size}, {work.image_shape[0]}x{work.image_shape[1]}, "
             f"{cfg.model.dtype}, {req.data} data, {device['count']} {device['kind']} device(s)")
    model = create_model(cfg.model.name, num_classes=work.num_classes, input_shape=work.image_shape, seed=t.seed,
                         **_model_options(cfg))
    parts, params, batch_stats = split_model(model)
    total = max(1000, req.warmup_steps + req.steps + 1)
    schedule = build_schedule(cfg.schedule, cfg.optimizer.lr, total, total)
    tx = build_optimizer(cfg.optimizer, schedule)
    step_fn = make_train_step(
        parts, tx, schedule, num_classes=work.num_classes, augment=cfg.data.augment, mean=work.mean, std=work.std,
        seed=t.seed, label_smoothing=t.label_smoothing, grad_accum_steps=t.grad_accum_steps,
        ema_decay=t.ema_decay, stop_on_nonfinite=t.on_nonfinite == "stop", input_size=work.image_shape[0])
    state = replicate(mesh, init_train_state(params, batch_stats, tx, ema=t.ema_decay is not None))
    fn, batches = _batches(cfg, work, mesh, step_fn)

    progress("compiling the train step ...")
    train_compiled, compile_s = _timed_compile(jax.jit(fn, donate_argnums=(0,)), state, *next(batches))
    progress(f"compiled in {compile_s:.1f} s; timing {req.steps} steps after {req.warmup_steps} warm-up")
    box = {"state": state}

    def train_one():
        box["state"], box["metrics"] = train_compiled(box["state"], *next(batches))
        return box["state"], box["metrics"]

    step_times = _time_windows(train_one, jax.block_until_ready, req.warmup_steps, req.steps, req.windows,
                               progress, "train")
    state = box["state"]
    loss = float(jax.device_get(box["metrics"]["loss"]))

    eval_times, eval_compile_s = _time_eval(req, parts, state, work, mesh, t.batch_size, t.seed, progress)
    model_flops = model_flops_per_step(parts, state.params, state.batch_stats, (t.batch_size, *work.image_shape))
    kernels = kernels_in_use()
    if kernels.startswith("oneDNN") and "cnn_onednn" not in (train_compiled.as_text() or ""):
        kernels = "XLA (oneDNN takes float32 convolutions only)"  # e.g. a bfloat16 step on a CPU
    flops = xla_flops(train_compiled)
    if kernels.startswith("oneDNN"):  # XLA counts nothing inside a custom call: count XLA's own ops, compiled
        with xla_kernels():  # a fresh function, so that jax's trace cache cannot hand back the first trace
            flops = xla_flops(jax.jit(lambda *args: fn(*args)).lower(state, *next(batches)).compile())
    return _report(req, cfg, work, device, step_times, eval_times, compile_s, eval_compile_s,
                   flops, model_flops, loss, kernels)


def _report(req: BenchRequest, cfg: Config, work: _Workload, device: dict, step_times: list[float],
            eval_times: list[float], compile_s: float, eval_compile_s: float, flops_per_device: float | None,
            model_flops: float, final_loss: float, kernels: str) -> dict[str, Any]:
    import jax

    bs = cfg.train.batch_size
    step_s = statistics.median(step_times)
    eval_s = statistics.median(eval_times)
    # Under data parallelism every device runs the same partitioned program on its share of the batch.
    flops = flops_per_device * device["count"] if flops_per_device is not None else None
    achieved = model_flops / step_s
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
        "compile_time_s": compile_s,
        "step_time_ms": step_s * 1e3,
        "step_time_ms_spread": (max(step_times) - min(step_times)) * 1e3,
        "step_time_ms_windows": [s * 1e3 for s in step_times],
        "images_per_second": bs / step_s,
        "eval_compile_time_s": eval_compile_s,
        "eval_step_time_ms": eval_s * 1e3,
        "eval_images_per_second": bs / eval_s,
        "flops_per_step": flops,
        "xla_flops_per_second": flops / step_s if flops is not None else None,
        "model_flops_per_step": model_flops,
        "achieved_flops_per_second": achieved,
        "peak_flops_per_second": peak * device["count"] if peak else None,
        "mfu": mfu,
        "steps": req.steps,
        "warmup_steps": req.warmup_steps,
        "windows": len(step_times),
        "final_loss": final_loss,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "kernels": kernels,
        "glibc_tunables": _started_with("GLIBC_TUNABLES"),
        "ld_preload": _started_with("LD_PRELOAD"),  # the allocator (cnncli/entry.py)
        "jax_version": jax.__version__,
    }
