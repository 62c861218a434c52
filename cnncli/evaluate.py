"""`cnn eval`: restore trained models and measure them on a split of their data.

`evaluate_models` is `cnn eval`: one model or an ensemble (mean of softmax probabilities),
optionally with test-time augmentation, reported with per-class metrics and the confusion
matrix (see cnncli.scores). The batched, masked evaluation itself is
`cnncli.train.evaluator.Evaluator`, the same one training uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.config import Config, model_options, resolve_data_shape
from cnncli.errors import CheckpointError, CnnError, ConfigError
from cnncli.train.evaluator import Evaluator, file_eval_batches


@dataclasses.dataclass
class LoadedModel:
    """A model restored from a run's checkpoint, ready to evaluate."""

    config: Config
    parts: Any
    params: Any
    batch_stats: Any
    step: int
    meta: dict
    class_names: list[str]
    mean: list[float]
    std: list[float]
    run_path: Path


def load_checkpoint_model(path: str | Path, which: str = "best", overrides: list[str] | None = None) -> LoadedModel:
    """Restore the model of a run directory (or one checkpoint step directory) into a fresh model."""
    from cnncli.checkpoint import CheckpointManager, find_checkpoint_dir
    from cnncli.config import load_config
    from cnncli.rundir import RunDir

    ckpt_dir, step = find_checkpoint_dir(path)
    run = RunDir.open(ckpt_dir.parent)
    cfg = load_config(run.config, overrides)
    manager = CheckpointManager(ckpt_dir, best_metric=cfg.train.best_metric, read_only=True)
    try:
        step = step if step is not None else _chosen_step(manager, which, ckpt_dir)
        parts, restored, meta = _restore_model(manager, cfg, step, ckpt_dir)
    finally:
        manager.close()
    data_info = run.read_json("data.json") or {}
    class_names = data_info.get("class_names") or meta.get("class_names") or []
    return LoadedModel(cfg, parts, restored["params"], restored["batch_stats"], step, meta,
                       list(class_names), data_info.get("mean"), data_info.get("std"), run.path)


def _chosen_step(manager, which: str, ckpt_dir: Path) -> int:
    """The step `--checkpoint best|latest|STEP` names."""
    if which == "best":
        step = manager.best_step()
        broken = [s for s in manager.incomplete_steps() if step is None or s != step]
        if broken:  # the best may have been one of them: say which checkpoints were not considered
            import sys

            sys.stderr.write(f"warning: {ckpt_dir} has incomplete checkpoint(s) at step(s) "
                             f"{', '.join(map(str, broken))}; the best is chosen among {manager.steps()}\n")
    elif which == "latest":
        step = manager.latest_step()
    else:
        try:
            step = int(which)
        except ValueError:
            raise CheckpointError(f"--checkpoint must be best, latest or a step number, got {which!r}") from None
        if step not in manager.steps():
            raise CheckpointError(f"{ckpt_dir} has no checkpoint for step {step}; it has {manager.steps()}")
    if step is None:
        raise CheckpointError(f"{ckpt_dir} holds no complete checkpoint")
    return step


def _restore_model(manager, cfg: Config, step: int, ckpt_dir: Path) -> tuple[Any, dict, dict]:
    """(ModelParts, {params, batch_stats, ...}, meta) of one checkpoint step, checked against the config."""
    from cnncli.models import create_model
    from cnncli.train.state import split_model

    meta = manager.restore_meta(step)
    if manager.state(step).unverified:
        import sys

        from cnncli.checkpoint import UNVERIFIED

        sys.stderr.write(f"warning: checkpoint {ckpt_dir / str(step)} is unverified ({UNVERIFIED})\n")
    m = cfg.model
    identity = meta.get("model", {})
    model = create_model(m.name, num_classes=m.num_classes, input_shape=(m.input_size, m.input_size, m.in_channels),
                         abstract=True, check_input=False, **model_options(cfg.model))
    expected = {"name": m.name, "num_classes": m.num_classes, "input_shape": list(model.input_shape)}
    found = {k: identity.get(k) for k in expected}
    if identity and found != expected:
        raise CheckpointError(f"checkpoint {ckpt_dir / str(step)} holds {found}, but the config asks for {expected}")
    parts, params, batch_stats = split_model(model)
    target = {"params": params, "batch_stats": batch_stats}
    if meta.get("has_ema", False):
        target["ema_params"] = params
    restored, _, meta = manager.restore(step, target)
    return parts, restored, meta




@dataclasses.dataclass
class MemberResult:
    """One evaluated model: its report and its log-probabilities on the split."""

    report: dict[str, Any]
    log_probs: np.ndarray  # [N, K] float64
    labels: np.ndarray  # [N]
    class_names: list[str]


class _EvalContext:
    """What the models of one `cnn eval` share: the mesh, prepared datasets and compiled evaluators."""

    def __init__(self):
        from cnncli.distributed import make_mesh

        self.mesh = make_mesh()
        self._data: dict[str, Any] = {}
        self._evaluators: dict[str, Evaluator] = {}

    def dataset(self, data_cfg):
        from cnncli.data.pipeline import prepare_dataset

        key = json.dumps(dataclasses.asdict(data_cfg), sort_keys=True)
        if key not in self._data:
            self._data[key] = prepare_dataset(data_cfg)
        return self._data[key]

    def evaluator(self, loaded: LoadedModel, mean, std, batch_size: int) -> Evaluator:
        # Models of one architecture share a graph: compile their evaluation once.
        key = json.dumps([dataclasses.asdict(loaded.config.model), list(mean), list(std), batch_size])
        if key not in self._evaluators:
            self._evaluators[key] = Evaluator(loaded.parts, num_classes=loaded.config.model.num_classes, mean=mean,
                                              std=std, mesh=self.mesh, batch_size=batch_size,
                                              input_size=loaded.config.model.input_size)
        return self._evaluators[key]


def _class_names(loaded: LoadedModel, data_names: list[str], num_classes: int) -> list[str]:
    names = list(loaded.class_names or data_names)
    return names + [f"class_{i}" for i in range(len(names), num_classes)]


def evaluate_member(path: str | Path, *, split: str = "test", which: str = "best", batch_size: int | None = None,
                    overrides: list[str] | None = None, tta: str | None = None, data_path: str | Path | None = None,
                    context: _EvalContext | None = None, load=None) -> MemberResult:
    """Evaluate one checkpoint on a split of its run's dataset (`data_path` replaces data.path).

    Without TTA, loss/accuracy/top-5 are the Evaluator's (the numbers training wrote to
    results.json); with `tta="flip"` every number comes from the mean of the softmax over
    the image and its horizontal mirror. `load(path, which, overrides) -> LoadedModel` replaces
    restoring a run's checkpoint (e.g. an imported weights directory).
    """
    import jax.numpy as jnp

    from cnncli.distributed import replicate
    from cnncli.errors import DataError
    from cnncli.scores import class_breakdown, log_softmax, mean_probabilities, score_log_probs

    ctx = context or _EvalContext()
    loaded = (load or load_checkpoint_model)(path, which, overrides)
    cfg = loaded.config
    if data_path is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(data_path)))
    cfg = resolve_data_shape(cfg)
    data = ctx.dataset(cfg.data)
    x, y = data.split(split)
    m = cfg.model
    if tuple(data.image_shape) != (m.input_size, m.input_size, m.in_channels):
        raise DataError(f"the {split} images of {path} are {'x'.join(map(str, data.image_shape))} but the model "
                        f"expects {m.input_size}x{m.input_size}x{m.in_channels}")
    if loaded.class_names and data.class_names != loaded.class_names:
        raise DataError(f"the data of {path} has the classes {data.class_names}, but the model was trained on "
                        f"{loaded.class_names}")
    if len(y) == 0:
        raise DataError(f"the {split} split of {path} is empty")
    names = _class_names(loaded, data.class_names, m.num_classes)
    bs = split_batch_size(batch_size or cfg.train.eval_batch_size or cfg.train.batch_size, len(y),
                          ctx.mesh.devices.size)
    ev = ctx.evaluator(loaded, loaded.mean or data.mean, loaded.std or data.std, bs)
    params, stats = replicate(ctx.mesh, (loaded.params, loaded.batch_stats))
    if data.file_backed:  # image files: decoded batch by batch on the host
        def views(mirror: bool):
            return ev.run_batches(params, stats, _decoded_batches(ctx.mesh, data, split, cfg.data, bs, mirror),
                                  with_logits=True)
    else:  # in memory: on the device once, as during training
        dev_y = replicate(ctx.mesh, jnp.asarray(y))

        def views(mirror: bool):
            dev_x = replicate(ctx.mesh, jnp.asarray(np.ascontiguousarray(x[:, :, ::-1]) if mirror else x))
            return ev.run(params, stats, dev_x, dev_y, len(y), with_logits=True)

    with out_of_memory_named(f"evaluating {path} at batch size {bs}", "lower --batch-size"):
        metrics, logits = views(False)
        mirrored = views(True)[1] if tta is not None else None
    log_probs = log_softmax(logits)
    if tta is None:
        report = {**metrics, **class_breakdown(np.argmax(logits, axis=1), y, names)}
    else:
        log_probs = mean_probabilities([log_probs, log_softmax(mirrored)])
        report = score_log_probs(log_probs, y, names)
    report.update(split=split, checkpoint_step=loaded.step, run=str(loaded.run_path), path=str(path), tta=tta)
    return MemberResult(report, log_probs, np.asarray(y), names)


def split_batch_size(requested: int, num_examples: int, devices: int) -> int:
    """The evaluation batch: at most the split itself (rounded up to a multiple of the device count), so a
    huge --batch-size costs no more memory than one batch of the whole split."""
    return min(requested, -(-num_examples // devices) * devices)


@contextlib.contextmanager
def out_of_memory_named(what: str, advice: str):
    """XLA's out-of-memory failure (RESOURCE_EXHAUSTED, a long traceback) as one line saying what and how."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - jaxlib's XlaRuntimeError; its type moves between versions
        text = str(exc)
        if "RESOURCE_EXHAUSTED" not in text and "Out of memory" not in text:
            raise
        first = next((line for line in text.splitlines() if line.strip()), "")[:200]
        raise CnnError(f"out of memory {what}: {advice} ({first})") from None


def _decoded_batches(mesh, data, split: str, data_cfg, batch_size: int, mirror: bool):
    """(images, labels, mask) on the mesh for a file-backed split: padded, masked last batch."""
    from cnncli.data.pipeline import host_loader

    loader = host_loader(data, split, num_workers=data_cfg.num_workers, skip_corrupt=data_cfg.skip_corrupt)
    return file_eval_batches(mesh, loader, len(data.split(split)[1]), batch_size, mirror=mirror)


def evaluate_run(path: str | Path, *, split: str = "test", which: str = "best", batch_size: int | None = None,
                 overrides: list[str] | None = None, tta: str | None = None,
                 data_path: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a run's checkpoint on one split of its dataset; the dict matches results.json
    (plus per-class metrics and the confusion matrix)."""
    return evaluate_member(path, split=split, which=which, batch_size=batch_size, overrides=overrides, tta=tta,
                           data_path=data_path).report


def combine_members(members: list[MemberResult]) -> dict[str, Any]:
    """The ensemble report: mean of the members' softmax probabilities, scored; members' reports; gain.

    `gain` compares the ensemble with the best member (highest accuracy, then lowest loss):
    positive accuracy gain and negative error/loss gain mean the ensemble is better.
    """
    from cnncli.errors import DataError
    from cnncli.scores import mean_probabilities, score_log_probs

    first = members[0]
    for other in members[1:]:
        where = f"{first.report['path']} and {other.report['path']}"
        if other.class_names != first.class_names:
            raise DataError(f"ensemble members {where} have different classes")
        if not np.array_equal(other.labels, first.labels):
            raise DataError(f"ensemble members {where} see different {first.report['split']} examples "
                            "(check their data configs and data.split_seed)")
    ensemble = score_log_probs(mean_probabilities([m.log_probs for m in members]), first.labels, first.class_names)
    ensemble.update(split=first.report["split"], tta=first.report["tta"], num_members=len(members))
    best = max(members, key=lambda m: (m.report["accuracy"], -m.report["loss"])).report
    gain = {"best_member": best["path"],
            **{k: ensemble[k] - best[k] for k in ("accuracy", "top5_accuracy", "error", "top5_error", "loss")}}
    return {**ensemble, "members": [m.report for m in members], "ensemble": ensemble, "gain": gain}


def evaluate_models(paths: list[str | Path], *, split: str = "test", which: str = "best",
                    batch_size: int | None = None, overrides: list[str] | None = None, tta: str | None = None,
                    data_path: str | Path | None = None, load=None) -> dict[str, Any]:
    """`cnn eval`: one path gives that model's report; several give the ensemble's report
    with `members`, `ensemble` and `gain` (see `combine_members`). `load` as in `evaluate_member`."""
    if not paths:
        raise ConfigError("give at least one run directory or checkpoint to evaluate")
    context = _EvalContext()
    members = [evaluate_member(p, split=split, which=which, batch_size=batch_size, overrides=overrides, tta=tta,
                               data_path=data_path, context=context, load=load) for p in paths]
    if len(members) == 1:
        return members[0].report
    return combine_members(members)
