"""The experiment config: typed schema, YAML loading, validation and dotted overrides.

Precedence is defaults < YAML file < `--set key=value` overrides. Validation happens
once, here; everything downstream receives a typed `Config`.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnncli.data.catalog import SOURCE_NAMES
from cnncli.errors import ConfigError, did_you_mean


def _choices(*values: str) -> dict:
    return {"choices": values}


@dataclass
class ModelConfig:
    """`model:` section. `num_classes`, `input_size` and `in_channels` follow the data when null."""

    name: str = "resnet20"
    num_classes: int | None = None
    input_size: int | None = None
    in_channels: int | None = None
    dropout: float | None = None  # null = the family's default (0.5 for AlexNet/VGG, 0 otherwise)
    width: float = 1.0  # width multiplier for the number of filters
    shortcut: str | None = field(default=None, metadata=_choices("A", "B"))  # CIFAR ResNets; default A
    zero_init_residual: bool = False
    bn_momentum: float = 0.9  # Flax convention: running = m*running + (1-m)*batch; PyTorch 0.1 == 0.9 here
    bn_epsilon: float = 1e-5
    dtype: str = field(default="float32", metadata=_choices("float32", "bfloat16", "float16"))
    remat: bool = False
    lrn: bool = False  # AlexNet local response normalisation


@dataclass
class AugmentConfig:
    """`data.augment:` training-time augmentation (evaluation uses none of it)."""

    random_crop_padding: int = 0
    flip: bool = False
    random_resized_crop: bool = False
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [0.75, 4.0 / 3.0])


@dataclass
class DataConfig:
    """`data:` section."""

    source: str = field(default="digits", metadata=_choices(*SOURCE_NAMES))  # cnncli.data.catalog's table
    path: str | None = None
    image_size: int | None = None  # resize to this square size; null = the source's size (digits: 32, folder: 224)
    channels: int | None = None  # 1 or 3; null = the source's channels
    val_fraction: float = 0.1  # held out of train when the source has no validation split
    test_fraction: float = 0.2  # held out when the source has no test split (digits)
    split_seed: int = 0
    normalize: bool = True
    mean: list[float] | None = None  # null = computed on the training split
    std: list[float] | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    num_workers: int = 0
    skip_corrupt: bool = False
    label: str = field(default="fine", metadata=_choices("fine", "coarse"))  # CIFAR-100 label set
    # synthetic source only
    num_train: int = 1024
    num_test: int = 256
    num_classes: int = 10


@dataclass
class OptimizerConfig:
    """`optimizer:` section."""

    name: str = field(default="sgd", metadata=_choices("sgd", "adam", "adamw", "rmsprop"))
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0  # L2 added to the gradient (sgd/adam/rmsprop) or decoupled (adamw)
    decay_norm_and_bias: bool = True  # false: no weight decay on BatchNorm and bias parameters
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    decay: float = 0.9  # RMSProp's squared-gradient averaging
    clip_grad_norm: float | None = None


@dataclass
class ScheduleConfig:
    """`schedule:` section. Epoch-valued fields are converted to steps once the data size is known."""

    name: str = field(default="constant", metadata=_choices("constant", "step", "cosine", "polynomial", "plateau"))
    warmup_epochs: float = 0.0
    warmup_steps: int | None = None
    milestones: list[float] = field(default_factory=list)  # epochs (step schedule)
    milestone_steps: list[int] | None = None  # steps; overrides milestones
    gamma: float = 0.1  # step schedule factor
    final_lr: float = 0.0  # cosine / polynomial end value
    power: float = 1.0  # polynomial
    metric: str = field(default="val_loss", metadata=_choices("val_loss", "val_accuracy"))  # plateau
    patience: int = 5  # plateau: evaluations without improvement
    factor: float = 0.1  # plateau
    min_lr: float = 0.0  # plateau
    threshold: float = 1e-4  # plateau: relative improvement that counts


@dataclass
class TrainConfig:
    """`train:` section. Give `epochs` or `steps` (steps wins when both are set)."""

    epochs: float | None = 10
    steps: int | None = None
    batch_size: int = 128
    eval_batch_size: int | None = None
    seed: int = 0
    log_every_steps: int = 50
    eval_every_epochs: float = 1.0
    eval_every_steps: int | None = None
    checkpoint_every_epochs: float = 1.0
    checkpoint_every_steps: int | None = None
    keep_last: int = 2
    keep_best: int = 1
    best_metric: str = field(default="val_accuracy", metadata=_choices("val_accuracy", "val_loss"))
    label_smoothing: float = 0.0
    grad_accum_steps: int = 1
    ema_decay: float | None = None
    on_nonfinite: str = field(default="stop", metadata=_choices("stop", "skip"))
    early_stopping_patience: int | None = None  # evaluations without improvement of best_metric
    eval_test: bool = False  # also evaluate the test split at every evaluation (learning-curve figures)


@dataclass
class OutputConfig:
    """`output:` section."""

    root: str = "runs"
    tensorboard: bool = True
    export: str | None = field(default="safetensors", metadata=_choices("safetensors", "msgpack"))


@dataclass
class Config:
    """A whole experiment."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


# ----------------------------------------------------------------------------- validation


_FLOAT_LITERAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(names) + " or null"
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return {int: "integer", float: "number", str: "string", bool: "true/false"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check `value` against the annotation `tp`; return it converted (int -> float etc.)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError:
                continue
        raise _type_error(value, tp, key, where)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise _type_error(value, tp, key, where)
        return [_coerce(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping of keys, got {value!r}")
        return _build(tp, value, key, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_LITERAL.fullmatch(value.strip()):
            return float(value)  # PyYAML reads `1e-4` (no dot) as a string
    elif tp is str:
        if isinstance(value, str):
            return value
    raise _type_error(value, tp, key, where)


def _type_error(value: Any, tp: Any, key: str, where: str) -> ConfigError:
    return ConfigError(f"{where}: '{key}' must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _build(cls: type, raw: dict, prefix: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            valid = [f"{prefix}.{k}" if prefix else k for k in fields]
            raise ConfigError(f"{where}: unknown key '{path}'{did_you_mean(path, valid)}")
        value = _coerce(value, hints[key], path, where)
        choices = fields[key].metadata.get("choices")
        if choices and value is not None and value not in choices:
            raise ConfigError(
                f"{where}: '{path}' must be one of {', '.join(choices)}; got {value!r}{did_you_mean(str(value), choices)}"
            )
        kwargs[key] = value
    return cls(**kwargs)


def _check_ranges(cfg: Config, where: str) -> None:
    def need(cond: bool, key: str, what: str, value: Any) -> None:
        if not cond:
            raise ConfigError(f"{where}: '{key}' must be {what}, got {value!r}")

    t, o, d, s, m = cfg.train, cfg.optimizer, cfg.data, cfg.schedule, cfg.model
    need(t.batch_size > 0, "train.batch_size", "a positive integer", t.batch_size)
    need(t.epochs is not None or t.steps is not None, "train.epochs", "set (or train.steps)", t.epochs)
    if t.steps is not None:
        need(t.steps > 0, "train.steps", "a positive integer", t.steps)
    elif t.epochs is not None:
        need(t.epochs > 0, "train.epochs", "positive", t.epochs)
    need(t.grad_accum_steps >= 1, "train.grad_accum_steps", ">= 1", t.grad_accum_steps)
    need(t.batch_size % t.grad_accum_steps == 0, "train.batch_size", "divisible by train.grad_accum_steps", t.batch_size)
    need(t.log_every_steps > 0, "train.log_every_steps", "a positive integer", t.log_every_steps)
    need(t.keep_last >= 1, "train.keep_last", ">= 1", t.keep_last)
    need(0 <= t.label_smoothing < 1, "train.label_smoothing", "in [0, 1)", t.label_smoothing)
    if t.ema_decay is not None:
        need(0 < t.ema_decay < 1, "train.ema_decay", "in (0, 1)", t.ema_decay)
    need(o.lr > 0, "optimizer.lr", "positive", o.lr)
    need(o.weight_decay >= 0, "optimizer.weight_decay", ">= 0", o.weight_decay)
    need(0 <= o.momentum < 1, "optimizer.momentum", "in [0, 1)", o.momentum)
    need(0 < d.val_fraction < 1, "data.val_fraction", "in (0, 1)", d.val_fraction)
    need(0 < d.test_fraction < 1, "data.test_fraction", "in (0, 1)", d.test_fraction)
    if d.channels is not None:
        need(d.channels in (1, 3), "data.channels", "1 or 3", d.channels)
    if d.image_size is not None:
        need(d.image_size > 0, "data.image_size", "a positive integer", d.image_size)
    need(d.num_workers >= 0, "data.num_workers", ">= 0", d.num_workers)
    for key, stats in (("data.mean", d.mean), ("data.std", d.std)):
        if stats is not None:
            need(len(stats) in (1, 3), key, "a list of 1 or 3 numbers", stats)
    if d.std is not None:
        need(all(v > 0 for v in d.std), "data.std", "positive", d.std)
    need(m.width > 0, "model.width", "positive", m.width)
    need(0 <= m.bn_momentum < 1, "model.bn_momentum", "in [0, 1) (Flax convention; PyTorch 0.1 == 0.9)", m.bn_momentum)
    if m.dropout is not None:
        need(0 <= m.dropout < 1, "model.dropout", "in [0, 1)", m.dropout)
    if m.num_classes is not None:
        need(m.num_classes >= 1, "model.num_classes", "a positive integer", m.num_classes)
    if s.name == "step":
        need(bool(s.milestones) or bool(s.milestone_steps), "schedule.milestones", "a non-empty list for the step schedule", s.milestones)


# ----------------------------------------------------------------------------- loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split 'a.b=value' into (['a', 'b'], parsed YAML value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optimizer.lr=0.05")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: the key is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply dotted `key=value` overrides to a raw config mapping (validated later)."""
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def read_yaml(path: Path) -> dict:
    """Read a YAML mapping, turning every failure into a one-line ConfigError."""
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"config path is a directory, expected a YAML file: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{line}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model, data, ...)")
    return raw


def config_from_dict(raw: dict, where: str = "config", overrides: list[str] | None = None) -> Config:
    """Validate a raw mapping (plus overrides) into a Config."""
    import copy

    raw = apply_overrides(copy.deepcopy(raw), overrides or [])
    where_full = where + (" (with --set overrides)" if overrides else "")
    cfg = _build(Config, raw, "", where_full)
    _check_ranges(cfg, where_full)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load and validate a YAML experiment file, applying `--set` overrides."""
    path = Path(path)
    return config_from_dict(read_yaml(path), str(path), overrides)
