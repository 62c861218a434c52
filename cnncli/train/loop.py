"""The training loop: `train_and_evaluate(config, run_dir)`.

One code path for one device or many: the state is replicated over a `data` mesh axis
and every batch is sharded along it. In-memory datasets sit on the device as uint8; the
step gathers its batch from a host-computed index vector and augments inside jit.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import time
from contextlib import contextmanager
from typing import Any

import numpy as np

from cnncli.config import Config
from cnncli.errors import CheckpointError, ConfigError, TrainingError, TrainingInterrupted
from cnncli.rundir import RunDir


def resolve_data_shape(cfg: Config) -> None:
    """The model's fixed input size/channels (if any) decide the data conversion."""
    m, d = cfg.model, cfg.data
    if m.input_size is not None:
        if d.image_size is not None and d.image_size != m.input_size:
            raise ConfigError(f"model.input_size={m.input_size} contradicts data.image_size={d.image_size}")
        d.image_size = m.input_size
    if m.in_channels is not None:
        if d.channels is not None and d.channels != m.in_channels:
            raise ConfigError(f"model.in_channels={m.in_channels} contradicts data.channels={d.channels}")
        d.channels = m.in_channels


def resolve_model_shape(cfg: Config, data) -> None:
    """Fill model.num_classes / input_size / in_channels from the prepared data."""
    h, w, c = data.image_shape
    if h != w:
        raise ConfigError(f"images are {h}x{w}; set data.image_size to train on square inputs")
    m = cfg.model
    if m.num_classes is None:
        m.num_classes = data.num_classes
    elif m.num_classes < data.num_classes:
        raise ConfigError(f"model.num_classes={m.num_classes} but the dataset has {data.num_classes} classes")
    m.input_size, m.in_channels = h, c


class _SignalCatcher:
    """Remembers SIGINT/SIGTERM so that the loop can finish its step and checkpoint."""

    def __init__(self):
        self.signum: int | None = None

    @contextmanager
    def installed(self):
        previous = {}
        try:
            for s in (signal.SIGINT, signal.SIGTERM):
                previous[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread: no handlers, no graceful stop
            previous = {}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _handle(self, signum, frame):
        if self.signum is not None:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.signum = signum


def _peak_memory_bytes() -> int | None:
    """Peak device memory of the first local device, where the backend reports it (GPU/TPU; not CPU)."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _model_tree(state) -> dict:
    tree = {"params": state.params, "batch_stats": state.batch_stats}
    if state.ema_params is not None:
        tree["ema_params"] = state.ema_params
    return tree


def _train_tree(state) -> dict:
    return {"opt_state": state.opt_state, "step": state.step, "lr_scale": state.lr_scale,
            "nonfinite_steps": state.nonfinite_steps, "first_nonfinite_step": state.first_nonfinite_step}


def train_and_evaluate(cfg: Config, run: RunDir, *, resume: bool = False, console=None) -> dict[str, Any]:
    """Train `cfg` into `run`, evaluate the best checkpoint on the test split, return a summary dict."""
    import jax
    import jax.numpy as jnp
    from rich.console import Console

    from cnncli.checkpoint import CheckpointManager, export_weights
    from cnncli.data.pipeline import TrainIndexStream, prepare_dataset
    from cnncli.distributed import check_batch_size, make_mesh, replicate
    from cnncli.evaluate import Evaluator, model_options
    from cnncli.metrics import MetricsWriter, TrainProgress, truncate_after, truncate_csv_after
    from cnncli.models import create_model
    from cnncli.train.optim import PlateauController, build_optimizer, build_schedule
    from cnncli.train.feeds import make_feed
    from cnncli.train.state import init_train_state, split_model
    from cnncli.train.step import make_train_step

    console = console or Console(stderr=True, soft_wrap=True)
    wall_start = time.perf_counter()
    t = cfg.train

    # ---- data and model ---------------------------------------------------------------
    resolve_data_shape(cfg)
    data = prepare_dataset(cfg.data)
    resolve_model_shape(cfg, data)
    mesh = make_mesh()
    check_batch_size(t.batch_size, mesh)
    eval_bs = t.eval_batch_size or t.batch_size
    model = create_model(cfg.model.name, num_classes=cfg.model.num_classes,
                         input_shape=data.image_shape, seed=t.seed, **model_options(cfg))
    parts, params, batch_stats = split_model(model)

    stream = TrainIndexStream(len(data.y_train), t.batch_size, t.seed)
    spe = stream.steps_per_epoch
    total_steps = t.steps if t.steps is not None else max(1, math.ceil(t.epochs * spe))
    total_epochs = total_steps / spe
    eval_every = t.eval_every_steps or max(1, round(t.eval_every_epochs * spe))
    ckpt_every = t.checkpoint_every_steps or max(1, round(t.checkpoint_every_epochs * spe))
    schedule = build_schedule(cfg.schedule, cfg.optimizer.lr, spe, total_steps)
    tx = build_optimizer(cfg.optimizer, schedule)
    state = init_train_state(params, batch_stats, tx, ema=t.ema_decay is not None)
    best_mode = "max" if t.best_metric.endswith("accuracy") else "min"
    plateau = None
    if cfg.schedule.name == "plateau":
        plateau = PlateauController(
            mode="max" if cfg.schedule.metric.endswith("accuracy") else "min", patience=cfg.schedule.patience,
            factor=cfg.schedule.factor, min_scale=cfg.schedule.min_lr / cfg.optimizer.lr,
            threshold=cfg.schedule.threshold)

    # ---- run directory ----------------------------------------------------------------
    run.config.write_text(cfg.to_yaml())
    run.write_json("split.json", data.split_info)
    run.write_json("data.json", {"source": data.source, "path": data.path, "description": data.description,
                                 "class_names": data.class_names, "image_shape": list(data.image_shape),
                                 "mean": data.mean, "std": data.std, "stats_from": data.stats_from,
                                 "sizes": data.sizes(), "notes": data.notes})
    for note in data.notes:
        console.print(f"note: {note}")
    manager = CheckpointManager(run.checkpoints, keep_last=t.keep_last, keep_best=t.keep_best,
                                best_metric=t.best_metric, best_mode=best_mode)
    identity = {"name": cfg.model.name, "num_classes": cfg.model.num_classes, "input_shape": list(data.image_shape)}

    # Time spent by earlier processes of this run (resume): wall times and rates cover the whole run.
    start_step, images_seen, train_time, compile_time, wall_before = 0, 0, 0.0, 0.0, 0.0
    steady = {"images": 0, "seconds": 0.0}  # steps after the first of each process, evaluation excluded
    best: dict[str, Any] = {"value": None, "step": None, "epoch": None}
    bad_evals = 0
    if resume and manager.latest_step() is not None:
        latest = manager.latest_step()
        saved = manager.restore_meta(latest).get("model", {})
        if saved and saved != identity:
            raise CheckpointError(f"cannot resume {run.path}: its checkpoint holds {saved} but the config now asks for "
                                  f"{identity}")
        model_tree, train_tree, meta = manager.restore(latest, _model_tree(state), _train_tree(state))
        state = state.replace(params=model_tree["params"], batch_stats=model_tree["batch_stats"],
                              ema_params=model_tree.get("ema_params"), **train_tree)
        start_step = int(meta["step"])
        images_seen, train_time = int(meta["images_seen"]), float(meta["train_time_s"])
        compile_time = float(meta.get("compile_time_s", 0.0))
        wall_before = float(meta.get("wall_time_s", 0.0))
        steady = dict(meta.get("steady", steady))
        best, bad_evals = meta["best"], int(meta["bad_evals"])
        if plateau is not None and meta.get("plateau"):
            plateau.load_state_dict(meta["plateau"])
        console.print(f"resuming {run.path} from step {start_step} (epoch {start_step / spe:.2f})")
    truncate_after(run.metrics_jsonl, start_step)
    truncate_csv_after(run.metrics_csv, start_step)
    run.set_status("running", started=time.strftime("%Y-%m-%dT%H:%M:%S"), pid=os.getpid(), host=socket.gethostname(),
                   total_steps=total_steps,
                   steps_per_epoch=spe, model=cfg.model.name, dataset=cfg.data.source)

    # ---- compiled steps ---------------------------------------------------------------
    step_fn = make_train_step(
        parts, tx, schedule, num_classes=cfg.model.num_classes, augment=cfg.data.augment, mean=data.mean,
        std=data.std, seed=t.seed, label_smoothing=t.label_smoothing, grad_accum_steps=t.grad_accum_steps,
        ema_decay=t.ema_decay, stop_on_nonfinite=t.on_nonfinite == "stop")

    evaluator = Evaluator(parts, num_classes=cfg.model.num_classes, mean=data.mean, std=data.std, mesh=mesh,
                          batch_size=eval_bs)
    feed = make_feed(data, mesh, step_fn, evaluator, cfg)
    state = replicate(mesh, state)
    sizes = data.sizes()

    writer = MetricsWriter(run.metrics_jsonl, run.metrics_csv, run.tensorboard if cfg.output.tensorboard else None)

    def meta_for(step: int, val: dict | None) -> dict:
        return {"step": step, "epoch": step / spe, "images_seen": images_seen, "train_time_s": train_time,
                "wall_time_s": wall_before + time.perf_counter() - wall_start,
                "compile_time_s": compile_time, "steady": steady, "best": best, "bad_evals": bad_evals,
                "plateau": plateau.state_dict() if plateau else None,
                "data_position": {"seed": t.seed, "epoch": step // spe, "batch_in_epoch": step % spe},
                "model": identity, "class_names": data.class_names, "has_ema": state.ema_params is not None,
                "val": val}

    def save(step: int, val: dict | None) -> None:
        metrics = None
        if val is not None:
            metrics = {"val_accuracy": val["accuracy"], "val_loss": val["loss"]}
        manager.save(step, _model_tree(state), _train_tree(state), meta_for(step, val), metrics)

    evaluate = feed.evaluate

    # ---- the loop ---------------------------------------------------------------------
    catcher = _SignalCatcher()
    pending: list = []
    epoch_sums = {"loss": 0.0, "accuracy": 0.0, "n": 0}
    last_train: dict[str, float] = {}
    window_start, window_images = None, 0
    epoch_start = time.perf_counter()
    stopped_early = False
    console.print(
        f"[bold]{cfg.model.name}[/] on {cfg.data.source}: {sizes['train']} train / {sizes['val']} val / "
        f"{sizes['test']} test images {data.image_shape}, {total_steps} steps ({total_epochs:.3g} epochs of {spe}), "
        f"{len(mesh.devices.flat)} {jax.devices()[0].platform} device(s)")

    def flush_logs(step: int) -> None:
        nonlocal pending, window_start, window_images, last_train
        if not pending:
            return
        fetched = jax.device_get(pending)
        pending = []
        now = time.perf_counter()
        vals = {k: float(np.mean([f[k] for f in fetched])) for k in fetched[0]}
        if window_start is not None and now > window_start:
            vals["images_per_sec"] = window_images / (now - window_start)
            steady["images"] += window_images
            steady["seconds"] += now - window_start
        window_start, window_images = now, 0
        counters = jax.device_get((state.nonfinite_steps, state.first_nonfinite_step))
        vals["nonfinite_steps"] = int(counters[0])
        peak = _peak_memory_bytes()
        if peak is not None:
            vals["peak_memory_bytes"] = peak
        for f in fetched:
            epoch_sums["loss"] += float(f["loss"])
            epoch_sums["accuracy"] += float(f["accuracy"])
            epoch_sums["n"] += 1
        writer.write(step, step / spe, "train", vals)
        last_train = vals
        progress.update(step, vals)
        if counters[0] > 0 and t.on_nonfinite == "stop":
            manager.wait()
            good = manager.latest_step()
            where = f"{run.checkpoints / str(good)}" if good is not None else "none (no checkpoint was written yet)"
            run.set_status("failed", reason=f"non-finite loss at step {int(counters[1]) + 1}")
            raise TrainingError(
                f"loss or gradient became NaN/Inf at step {int(counters[1]) + 1}; training stopped. "
                f"Last good checkpoint: {where}. Lower optimizer.lr or set train.on_nonfinite=skip")

    with catcher.installed(), TrainProgress(console, total_steps, start_step, spe, total_epochs) as progress:
        for step, batch in zip(range(start_step, total_steps), feed.batches(stream, start_step, total_steps)):
            if step == start_step:
                t0 = time.perf_counter()
                state, m = feed.step(state, batch)
                jax.block_until_ready(m)
                compile_time += time.perf_counter() - t0  # summed over the processes of a resumed run
                window_start = time.perf_counter()
            else:
                state, m = feed.step(state, batch)
                window_images += t.batch_size
            pending.append(m)
            done = step + 1
            images_seen += t.batch_size
            is_eval = done % eval_every == 0 or done == total_steps
            if done % t.log_every_steps == 0 or is_eval or catcher.signum:
                flush_logs(done)
            val = None
            if is_eval:
                train_time += time.perf_counter() - epoch_start
                val = evaluate("val", state.params, state.batch_stats)
                extra = {}
                if state.ema_params is not None:
                    ema_val = evaluate("val", state.ema_params, state.batch_stats)
                    extra = {"ema_accuracy": ema_val["accuracy"], "ema_loss": ema_val["loss"]}
                writer.write(done, done / spe, "val", {**val, **extra})
                if t.eval_test:
                    writer.write(done, done / spe, "test", evaluate("test", state.params, state.batch_stats))
                score = val["accuracy"] if t.best_metric == "val_accuracy" else val["loss"]
                # Ties go to the later step (as the checkpoint policy keeps it); only strict gains reset patience.
                prev = best["value"]
                if prev is None or (score >= prev if best_mode == "max" else score <= prev):
                    best = {"value": score, "step": done, "epoch": done / spe}
                strictly = prev is None or (score > prev if best_mode == "max" else score < prev)
                bad_evals = 0 if strictly else bad_evals + 1
                if plateau is not None:
                    scale = plateau.update(val["accuracy"] if cfg.schedule.metric == "val_accuracy" else val["loss"])
                    state = state.replace(lr_scale=replicate(mesh, jnp.float32(scale)))
                n = max(1, epoch_sums["n"])
                writer.write_epoch_row({
                    "epoch": round(done / spe, 4), "step": done, "train_loss": epoch_sums["loss"] / n,
                    "train_accuracy": epoch_sums["accuracy"] / n, "val_loss": val["loss"],
                    "val_accuracy": val["accuracy"], "val_top5_accuracy": val["top5_accuracy"],
                    "lr": last_train.get("lr"), "images_per_sec": last_train.get("images_per_sec"),
                    "epoch_time_s": time.perf_counter() - epoch_start,
                    "wall_time_s": wall_before + time.perf_counter() - wall_start})
                progress.console.print(
                    f"epoch {done / spe:6.2f}  step {done:>6}  train loss {epoch_sums['loss'] / n:.4f} "
                    f"acc {epoch_sums['accuracy'] / n:.4f}  val loss {val['loss']:.4f} acc {val['accuracy']:.4f}  "
                    f"lr {last_train.get('lr', 0):.3g}  {last_train.get('images_per_sec', 0):.0f} img/s")
                epoch_sums = {"loss": 0.0, "accuracy": 0.0, "n": 0}
                epoch_start = time.perf_counter()
                if t.early_stopping_patience is not None and bad_evals > t.early_stopping_patience:
                    stopped_early = True
            if is_eval or done % ckpt_every == 0 or catcher.signum or stopped_early:
                save(done, val)
            if is_eval and window_start is not None:
                window_start = time.perf_counter()  # evaluation time is not training throughput
            if catcher.signum:
                manager.close()
                writer.close()
                run.set_status("interrupted", step=done)
                name = signal.Signals(catcher.signum).name
                raise TrainingInterrupted(
                    f"{name} at step {done}: checkpoint written; resume with: cnn train --resume {run.path}",
                    catcher.signum)
            if stopped_early:
                console.print(f"early stopping: no {t.best_metric} improvement in {bad_evals} evaluations")
                break

    # ---- final evaluation of the best checkpoint ---------------------------------------
    manager.wait()
    best_step = manager.best_step()
    model_tree, _, _ = manager.restore(best_step, _model_tree(state))
    test = evaluate("test", *replicate(mesh, (model_tree["params"], model_tree["batch_stats"])))
    results = {**test, "split": "test", "checkpoint_step": best_step}
    run.write_json("results.json", results)
    writer.write(int(state.step), float(state.step) / spe, "test", test)
    writer.close()
    export_path = None
    if cfg.output.export:
        export_path = export_weights(run.path / f"model.{cfg.output.export}", model_tree, cfg.output.export)
    manager.close()
    wall = wall_before + time.perf_counter() - wall_start
    summary = {
        "run_dir": str(run.path), "steps": int(state.step), "epochs": float(state.step) / spe,
        "best_step": best["step"], "best_epoch": best["epoch"], f"best_{t.best_metric}": best["value"],
        "test": results, "wall_time_s": wall, "compile_time_s": compile_time,
        "images_per_sec": steady["images"] / steady["seconds"] if steady["seconds"] > 0 else None,
        "checkpoints": str(run.checkpoints), "exported": str(export_path) if export_path else None,
        "stopped_early": stopped_early,
    }
    skipped = feed.corrupt_files() if hasattr(feed, "corrupt_files") else []
    if skipped:
        summary["corrupt_files_skipped"] = len(skipped)
        console.print(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}")
    run.set_status("finished", wall_time_s=wall, best_step=best_step, test_accuracy=test["accuracy"],
                   images_per_sec=summary["images_per_sec"], epochs_done=summary["epochs"],
                   best_value=best["value"])
    return summary
