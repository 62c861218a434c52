"""What `cnn bench` times: the request, the Config it stands for, and the batches the step is fed."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from cnncli.config import Config
from cnncli.errors import ConfigError

DTYPES = ("float32", "bfloat16")
DATA_CHOICES = ("synthetic", "config")


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


def _check_request(req: BenchRequest) -> None:
    if req.dtype is not None and req.dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {req.dtype!r}")
    if req.data not in DATA_CHOICES:
        raise ConfigError(f"--data must be one of {', '.join(DATA_CHOICES)}, got {req.data!r}")
    for flag, value in (("--batch-size", req.batch_size), ("--input-size", req.input_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be a positive integer, got {value}")
    if req.steps < 1:
        raise ConfigError(f"--steps must be a positive integer, got {req.steps}")


def resolve_config(req: BenchRequest) -> Config:
    """Validate the request and build the Config it times (the file's, or a bare model's)."""
    from cnncli.config import config_from_dict, read_yaml

    _check_request(req)
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


@dataclasses.dataclass
class Workload:
    """The step's inputs: a batch source, the data's shape and normalisation."""

    image_shape: tuple[int, int, int]
    num_classes: int
    mean: list[float]
    std: list[float]
    dataset: Any = None  # a prepared Dataset for --data config


def workload(cfg: Config, data: str) -> Workload:
    """The config's own dataset (--data config) or a synthetic batch of the model's input shape."""
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
        return Workload(ds.image_shape, max(cfg.model.num_classes or 0, ds.num_classes), ds.mean, ds.std, ds)
    size = cfg.model.input_size or cfg.data.image_size or spec.default_input[0]
    channels = cfg.model.in_channels or cfg.data.channels or spec.default_input[2]
    classes = cfg.model.num_classes or (cfg.data.num_classes if cfg.data.source == "synthetic"
                                        else spec.default_classes)
    return Workload((size, size, channels), classes, [0.5] * channels, [0.25] * channels)


def batches(cfg: Config, work: Workload, mesh, step_fn):
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
