"""`run_bench`: build the training step as `cnn train` does, compile it, time it and count its FLOPs."""

from __future__ import annotations

from typing import Any

from cnncli.bench import timing
from cnncli.bench.flops import model_flops_per_step
from cnncli.bench.report import Measured, bench_report, device_info
from cnncli.bench.timing import Progress
from cnncli.bench.workload import BenchRequest, Workload, batches, resolve_config, workload
from cnncli.config import Config, model_options
from cnncli.kernels import kernels_in_use, xla_kernels


def _train_step(cfg: Config, work: Workload, mesh, req: BenchRequest):
    """(model parts, the training step, its replicated initial state), as cnncli.train.setup builds them."""
    from cnncli.distributed import replicate
    from cnncli.models import create_model
    from cnncli.train.optim import build_optimizer, build_schedule
    from cnncli.train.state import init_train_state, split_model
    from cnncli.train.step import make_train_step

    t = cfg.train
    model = create_model(cfg.model.name, num_classes=work.num_classes, input_shape=work.image_shape, seed=t.seed,
                         **model_options(cfg.model))
    parts, params, batch_stats = split_model(model)
    total = max(1000, req.warmup_steps + req.steps + 1)
    schedule = build_schedule(cfg.schedule, cfg.optimizer.lr, total, total)
    tx = build_optimizer(cfg.optimizer, schedule)
    step_fn = make_train_step(
        parts, tx, schedule, num_classes=work.num_classes, augment=cfg.data.augment, mean=work.mean, std=work.std,
        seed=t.seed, label_smoothing=t.label_smoothing, grad_accum_steps=t.grad_accum_steps,
        ema_decay=t.ema_decay, stop_on_nonfinite=t.on_nonfinite == "stop", input_size=work.image_shape[0])
    state = replicate(mesh, init_train_state(params, batch_stats, tx, ema=t.ema_decay is not None))
    return parts, step_fn, state


def _time_train(compiled, state, feed, req: BenchRequest, progress: Progress) -> tuple[Any, list[float], float]:
    """(the state after the timed steps, seconds per step in each window, the last step's loss)."""
    import jax

    box = {"state": state}

    def train_one():
        box["state"], box["metrics"] = compiled(box["state"], *next(feed))
        return box["state"], box["metrics"]

    times = timing.time_windows(train_one, jax.block_until_ready, req.warmup_steps, req.steps, req.windows,
                                progress, "train")
    return box["state"], times, float(jax.device_get(box["metrics"]["loss"]))


def _kernels_and_xla_flops(compiled, fn, state, feed) -> tuple[str, float | None]:
    """(what runs the convolutions and batch norms, XLA's FLOPs for the step with XLA's own kernels)."""
    import jax

    from cnncli.train.xla_cost import xla_flops

    kernels = kernels_in_use()
    if kernels.startswith("oneDNN") and "cnn_onednn" not in (compiled.as_text() or ""):
        kernels = "XLA (oneDNN takes float32 convolutions only)"  # e.g. a bfloat16 step on a CPU
    flops = xla_flops(compiled)
    if kernels.startswith("oneDNN"):  # XLA counts nothing inside a custom call: count XLA's own ops, compiled
        with xla_kernels():  # a fresh function, so that jax's trace cache cannot hand back the first trace
            flops = xla_flops(jax.jit(lambda *args: fn(*args)).lower(state, *next(feed)).compile())
    return kernels, flops


def run_bench(req: BenchRequest, progress: Progress = lambda _msg: None) -> dict[str, Any]:
    """Compile and time the training and evaluation steps of `req`; returns the report as a dict."""
    cfg = resolve_config(req)
    import jax

    from cnncli.distributed import check_batch_size, make_mesh

    t = cfg.train
    work = workload(cfg, req.data)
    mesh = make_mesh()
    check_batch_size(t.batch_size, mesh)
    device = device_info()
    progress(f"bench {cfg.model.name}: batch {t.batch_size}, {work.image_shape[0]}x{work.image_shape[1]}, "
             f"{cfg.model.dtype}, {req.data} data, {device['count']} {device['kind']} device(s)")
    parts, step_fn, state = _train_step(cfg, work, mesh, req)
    fn, feed = batches(cfg, work, mesh, step_fn)

    progress("compiling the train step ...")
    compiled, compile_s = timing.timed_compile(jax.jit(fn, donate_argnums=(0,)), state, *next(feed))
    progress(f"compiled in {compile_s:.1f} s; timing {req.steps} steps after {req.warmup_steps} warm-up")
    state, step_times, loss = _time_train(compiled, state, feed, req, progress)

    eval_times, eval_compile_s = timing.time_eval(req, parts, state, work, mesh, t.batch_size, t.seed, progress)
    model_flops = model_flops_per_step(parts, state.params, state.batch_stats, (t.batch_size, *work.image_shape))
    kernels, flops = _kernels_and_xla_flops(compiled, fn, state, feed)
    return bench_report(req, cfg, work, device, Measured(step_times, eval_times, compile_s, eval_compile_s, flops,
                                                         model_flops, loss, kernels))
