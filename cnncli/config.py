"""The experiment config: typed schema, YAML loading, validation and dotted overrides.

Precedence is defaults < YAML file < `--set key=value` overrides. Validation happens
once, here; everything downstream receives a typed, frozen `Config`. The fields that
follow the data (the model's input size, channels and class count) are filled by
`resolve_data_shape` / `resolve_model_shape`, which return new values: nothing mutates
a config after it is built.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnncli.data.catalog import SOURCE_NAMES
from cnncli.errors import ConfigError, did_you_mean


def _choices(*values: Any) -> dict:
    return {"choices": values}


# Bounds shared by several keys. Step counters are int32 on the device; jax keys take 32 bits of a
# seed (2**32 would repeat seed 0); an image side of 1e6 would allocate petabytes.
MAX_STEPS = 10**9
MAX_EPOCHS = 100_000
MAX_SEED = 2**32 - 1
MAX_IMAGE_SIDE = 4096
MAX_BATCH = 2**20
MAX_CLASSES = 1_000_000
MAX_COUNT = 1_000_000  # patience, checkpoints kept, synthetic examples
MAX_RATE = 1_000.0  # learning rates and decays: far above any that trains, far below float32's overflow


@dataclass(frozen=True)
class Range:
    """The values a numeric key (or each item of a numeric list) accepts; always finite."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    lengths: tuple[int, ...] | None = None  # list keys: the allowed lengths
    increasing: bool = False  # list keys: items in non-decreasing order
    note: str = ""

    def admits(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def __str__(self) -> str:
        n = _number_text
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{n(self.lo)}, {n(self.hi)}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {n(self.lo)}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {n(self.hi)}"
        return "any value"


def _number_text(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _range(*, ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
           **extra: Any) -> dict:
    """Field metadata: the key's valid range (e.g. `_range(gt=0, le=1)` is (0, 1])."""
    lo, hi = (gt if gt is not None else ge), (lt if lt is not None else le)
    return {"range": Range(lo, hi, gt is not None, lt is not None, **extra)}


_UNIT = _range(ge=0, lt=1)  # momenta, decays, dropout: [0, 1)


@dataclass(frozen=True)
class ModelConfig:
    """`model:` section. `num_classes`, `input_size` and `in_channels` follow the data when null."""

    name: str = "resnet20"
    num_classes: int | None = field(default=None, metadata=_range(ge=1, le=MAX_CLASSES))
    input_size: int | None = field(default=None, metadata=_range(ge=1, le=MAX_IMAGE_SIDE))
    in_channels: int | None = field(default=None, metadata=_choices(1, 3))
    # null = the family's default (0.5 for AlexNet/VGG, 0 otherwise)
    dropout: float | None = field(default=None, metadata=_UNIT)
    # width multiplier for the number of filters
    width: float = field(default=1.0, metadata=_range(gt=0, le=64))
    shortcut: str | None = field(default=None, metadata=_choices("A", "B"))  # CIFAR ResNets; default A
    zero_init_residual: bool = False
    # Flax convention: running = m*running + (1-m)*batch; PyTorch 0.1 == 0.9 here
    bn_momentum: float = field(default=0.9, metadata=_range(ge=0, lt=1, note="Flax convention; PyTorch 0.1 == 0.9"))
    bn_epsilon: float = field(default=1e-5, metadata=_range(gt=0, le=1))
    dtype: str = field(default="float32", metadata=_choices("float32", "bfloat16", "float16"))
    remat: bool = False
    lrn: bool = False  # AlexNet local response normalisation
    # fine-tuning: a weights directory (`cnn weights import`) or a run to start from; a head whose class
    # count differs is re-initialised
    init_from: str | None = None


@dataclass(frozen=True)
class AugmentConfig:
    """`data.augment:` training-time augmentation (evaluation uses none of it)."""

    random_crop_padding: int = field(default=0, metadata=_range(ge=0, le=MAX_IMAGE_SIDE))
    flip: bool = False
    random_resized_crop: bool = False
    # (min, max) area fraction and aspect ratio of the crop
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0],
                               metadata=_range(gt=0, le=1, lengths=(2,), increasing=True))
    ratio: list[float] = field(default_factory=lambda: [0.75, 4.0 / 3.0],
                               metadata=_range(gt=0, le=100, lengths=(2,), increasing=True))


@dataclass(frozen=True)
class DataConfig:
    """`data:` section."""

    source: str = field(default="digits", metadata=_choices(*SOURCE_NAMES))  # cnncli.data.catalog's table
    path: str | None = None
    # resize to this square size; null = the source's size (digits: 32, folder: 224)
    image_size: int | None = field(default=None, metadata=_range(ge=1, le=MAX_IMAGE_SIDE))
    # 1 or 3; null = the source's channels
    channels: int | None = field(default=None, metadata=_choices(1, 3))
    # held out of train when the source has no validation split
    val_fraction: float = field(default=0.1, metadata=_range(gt=0, lt=1))
    # held out when the source has no test split (digits)
    test_fraction: float = field(default=0.2, metadata=_range(gt=0, lt=1))
    split_seed: int = field(default=0, metadata=_range(ge=0, le=MAX_SEED))
    normalize: bool = True
    # null = computed on the training split
    mean: list[float] | None = field(default=None, metadata=_range(lengths=(1, 3)))
    std: list[float] | None = field(default=None, metadata=_range(gt=0, lengths=(1, 3)))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    num_workers: int = field(default=0, metadata=_range(ge=0, le=1024))
    skip_corrupt: bool = False
    label: str = field(default="fine", metadata=_choices("fine", "coarse"))  # CIFAR-100 label set
    # synthetic source only
    num_train: int = field(default=1024, metadata=_range(ge=1, le=MAX_COUNT))
    num_test: int = field(default=256, metadata=_range(ge=1, le=MAX_COUNT))
    num_classes: int = field(default=10, metadata=_range(ge=1, le=MAX_CLASSES))


@dataclass(frozen=True)
class OptimizerConfig:
    """`optimizer:` section."""

    name: str = field(default="sgd", metadata=_choices("sgd", "adam", "adamw", "rmsprop"))
    lr: float = field(default=0.1, metadata=_range(gt=0, le=MAX_RATE))
    momentum: float = field(default=0.9, metadata=_UNIT)
    nesterov: bool = False
    # L2 added to the gradient (sgd/adam/rmsprop) or decoupled (adamw)
    weight_decay: float = field(default=0.0, metadata=_range(ge=0, le=MAX_RATE))
    decay_norm_and_bias: bool = True  # false: no weight decay on BatchNorm and bias parameters
    b1: float = field(default=0.9, metadata=_UNIT)
    b2: float = field(default=0.999, metadata=_UNIT)
    eps: float = field(default=1e-8, metadata=_range(gt=0, le=1))
    decay: float = field(default=0.9, metadata=_UNIT)  # RMSProp's squared-gradient averaging
    clip_grad_norm: float | None = field(default=None, metadata=_range(gt=0))


@dataclass(frozen=True)
class ScheduleConfig:
    """`schedule:` section. Epoch-valued fields are converted to steps once the data size is known."""

    name: str = field(default="constant", metadata=_choices("constant", "step", "cosine", "polynomial", "plateau"))
    warmup_epochs: float = field(default=0.0, metadata=_range(ge=0, le=MAX_EPOCHS))
    warmup_steps: int | None = field(default=None, metadata=_range(ge=0, le=MAX_STEPS))
    # epochs (step schedule)
    milestones: list[float] = field(default_factory=list, metadata=_range(ge=0, le=MAX_EPOCHS))
    # steps; overrides milestones
    milestone_steps: list[int] | None = field(default=None, metadata=_range(ge=0, le=MAX_STEPS))
    gamma: float = field(default=0.1, metadata=_range(gt=0))  # step schedule factor
    final_lr: float = field(default=0.0, metadata=_range(ge=0, le=MAX_RATE))  # cosine / polynomial end value
    power: float = field(default=1.0, metadata=_range(gt=0))  # polynomial
    metric: str = field(default="val_loss", metadata=_choices("val_loss", "val_accuracy"))  # plateau
    # plateau: evaluations without improvement
    patience: int = field(default=5, metadata=_range(ge=0, le=MAX_COUNT))
    factor: float = field(default=0.1, metadata=_range(gt=0, lt=1))  # plateau
    min_lr: float = field(default=0.0, metadata=_range(ge=0, le=MAX_RATE))  # plateau
    # plateau: relative improvement that counts
    threshold: float = field(default=1e-4, metadata=_range(ge=0, lt=1))


@dataclass(frozen=True)
class TrainConfig:
    """`train:` section. Give `epochs` or `steps` (steps wins when both are set)."""

    epochs: float | None = field(default=10, metadata=_range(gt=0, le=MAX_EPOCHS))
    steps: int | None = field(default=None, metadata=_range(ge=1, le=MAX_STEPS))
    batch_size: int = field(default=128, metadata=_range(ge=1, le=MAX_BATCH))
    eval_batch_size: int | None = field(default=None, metadata=_range(ge=1, le=MAX_BATCH))
    seed: int = field(default=0, metadata=_range(ge=0, le=MAX_SEED))
    log_every_steps: int = field(default=50, metadata=_range(ge=1, le=MAX_STEPS))
    eval_every_epochs: float = field(default=1.0, metadata=_range(gt=0, le=MAX_EPOCHS))
    eval_every_steps: int | None = field(default=None, metadata=_range(ge=1, le=MAX_STEPS))
    checkpoint_every_epochs: float = field(default=1.0, metadata=_range(gt=0, le=MAX_EPOCHS))
    checkpoint_every_steps: int | None = field(default=None, metadata=_range(ge=1, le=MAX_STEPS))
    keep_last: int = field(default=2, metadata=_range(ge=1, le=MAX_COUNT))
    # >= 1: with 0 the best checkpoint is deleted and the final test evaluation would use another one
    keep_best: int = field(default=1, metadata=_range(ge=1, le=MAX_COUNT))
    best_metric: str = field(default="val_accuracy", metadata=_choices("val_accuracy", "val_loss"))
    label_smoothing: float = field(default=0.0, metadata=_UNIT)
    grad_accum_steps: int = field(default=1, metadata=_range(ge=1, le=MAX_BATCH))
    ema_decay: float | None = field(default=None, metadata=_range(gt=0, lt=1))
    on_nonfinite: str = field(default="stop", metadata=_choices("stop", "skip"))
    # evaluations without improvement of best_metric
    early_stopping_patience: int | None = field(default=None, metadata=_range(ge=0, le=MAX_COUNT))
    eval_test: bool = False  # also evaluate the test split at every evaluation (learning-curve figures)
    # fine-tuning: parameter groups to freeze (shell patterns over dotted module paths; "!p" unfreezes)
    freeze: list[str] = field(default_factory=list)
    # null: frozen for the whole run; else unfrozen after this many epochs
    freeze_epochs: float | None = field(default=None, metadata=_range(ge=0, le=MAX_EPOCHS))


@dataclass(frozen=True)
class OutputConfig:
    """`output:` section."""

    root: str = "runs"
    tensorboard: bool = True
    export: str | None = field(default="safetensors", metadata=_choices("safetensors", "msgpack"))


@dataclass(frozen=True)
class DistributedConfig:
    """`distributed:` section: how the processes of a multi-host run meet (cnncli.distributed).

    The process id is per process: give it with --process-id or JAX_PROCESS_ID, never here."""

    coordinator: str | None = None  # HOST:PORT of process 0
    num_processes: int | None = field(default=None, metadata=_range(ge=1, le=MAX_COUNT))
    auto: bool = False  # let jax.distributed detect SLURM / Open MPI / TPU pods
    initialization_timeout: int = field(default=300, metadata=_range(ge=1, le=86_400, note="seconds"))
    heartbeat_timeout: int = field(default=100, metadata=_range(ge=1, le=86_400, note="seconds"))
    shutdown_timeout: int = field(default=300, metadata=_range(ge=1, le=86_400, note="seconds"))


@dataclass(frozen=True)
class Config:
    """A whole experiment."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


# ----------------------------------------------------------------------------- validation


_FLOAT_LITERAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxdict, _SHOWN.maxstring, _SHOWN.maxother = 2, 4, 3, 60, 60


def _show(value: Any, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters: a message never prints an unbounded value."""
    try:
        text = _SHOWN.repr(value)
    except ValueError:  # an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
            raise ConfigError(f"{where}: '{key}' must be a mapping of keys, got {_show(value)}")
        return _build(tp, value, key, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:  # exact, not 1e30
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, int) and abs(value) >= 2**1000:  # float() would overflow; the range refuses inf
                return math.inf if value > 0 else -math.inf
            return float(value)
        if isinstance(value, str) and _FLOAT_LITERAL.fullmatch(value.strip()):
            return float(value)  # PyYAML reads `1e-4` (no dot) as a string
    elif tp is str:
        if isinstance(value, str):
            return value
    raise _type_error(value, tp, key, where)


def _type_error(value: Any, tp: Any, key: str, where: str) -> ConfigError:
    return ConfigError(f"{where}: '{key}' must be {_type_name(tp)}, got {_show(value)} ({type(value).__name__})")


def _build(cls: type, raw: dict, prefix: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            valid = [f"{prefix}.{k}" if prefix else k for k in fields]
            raise ConfigError(f"{where}: unknown key '{_clip(path)}'{did_you_mean(path[:100], valid)}")
        kwargs[key] = _coerce(value, hints[key], path, where)
    return cls(**kwargs)


def _check_values(section: Any, prefix: str, where: str) -> None:
    """Check every key of a built section (defaults included) against its declared choices and range."""
    for f in dataclasses.fields(section):
        value, path = getattr(section, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            _check_values(value, path + ".", where)
        elif value is not None:
            _check_field(f, value, path, where)


def _check_field(f: dataclasses.Field, value: Any, path: str, where: str) -> None:
    choices, rng = f.metadata.get("choices"), f.metadata.get("range")
    if choices and value not in choices:
        names = [str(c) for c in choices]
        raise ConfigError(f"{where}: '{path}' must be one of {', '.join(names)}; got {_show(value)}"
                          f"{did_you_mean(str(value)[:100], names)}")
    if rng is None:
        return
    note = f" ({rng.note})" if rng.note else ""
    items = value if isinstance(value, list) else [value]
    for i, v in enumerate(items):
        if not rng.admits(v):
            key = f"{path}[{i}]" if isinstance(value, list) else path
            kind = "an integer " if isinstance(v, int) else "a finite number " if not math.isfinite(v) else ""
            raise ConfigError(f"{where}: '{key}' must be {kind}{rng}{note}, got {_show(v)}")
    if rng.lengths is not None and len(items) not in rng.lengths:
        count = " or ".join(str(n) for n in rng.lengths)
        raise ConfigError(f"{where}: '{path}' must be a list of {count} numbers, got {_show(value)}")
    if rng.increasing and any(a > b for a, b in zip(items, items[1:])):
        raise ConfigError(f"{where}: '{path}' must be {len(items)} numbers in increasing order (min, max), "
                          f"got {_show(value)}")


def _check_ranges(cfg: Config, where: str) -> None:
    """The declared per-key ranges, then the rules that involve several keys."""
    _check_values(cfg, "", where)

    def need(cond: bool, key: str, what: str, value: Any) -> None:
        if not cond:
            raise ConfigError(f"{where}: '{key}' must be {what}, got {_show(value)}")

    t, s = cfg.train, cfg.schedule
    need(t.epochs is not None or t.steps is not None, "train.epochs", "set (or train.steps)", t.epochs)
    need(t.batch_size % t.grad_accum_steps == 0, "train.batch_size", "divisible by train.grad_accum_steps", t.batch_size)
    if s.name == "step":
        need(bool(s.milestones) or bool(s.milestone_steps), "schedule.milestones", "a non-empty list for the step schedule", s.milestones)


# ----------------------------------------------------------------------------- loading


MAX_CONFIG_BYTES = 1 << 20  # a config is a few kB
MAX_YAML_VALUES = 100_000  # values after expanding aliases: refuses "billion laughs" documents


class YamlRefused(Exception):
    """A YAML document the config loader will not build (duplicate keys, alias bombs, deep nesting)."""


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys and integers too long to convert."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._checked: set[int] = set()

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # Called once per mapping before `<<` merges are spliced in: the explicit keys are all here.
        if id(node) not in self._checked:
            self._checked.add(id(node))
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                if key in seen:
                    raise YamlRefused(f"duplicate key {_show(key)} at lines {seen[key]} and {line}")
                seen[key] = line
        super().flatten_mapping(node)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            raise YamlRefused(f"integer too long at line {node.start_mark.line + 1}") from None


_ConfigLoader.add_constructor("tag:yaml.org,2002:int", _ConfigLoader.construct_yaml_int)


def _expanded_size(root: yaml.Node) -> int:
    """The number of values `root` holds once aliases are expanded; refuses cycles and alias bombs."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        if isinstance(node, yaml.ScalarNode):
            return 1
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise YamlRefused(f"a YAML alias at line {node.start_mark.line + 1} is recursive (contains itself)")
        open_nodes.add(id(node))
        children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_YAML_VALUES:
                raise YamlRefused(f"YAML aliases expand to more than {MAX_YAML_VALUES:,} values; "
                                  "a config needs a few hundred")
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    return size(root)


def parse_yaml(text: str | bytes) -> Any:
    """One YAML document, loaded safely and bounded. Raises yaml.YAMLError or YamlRefused."""
    loader = _ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    except RecursionError:
        raise YamlRefused("the YAML is nested too deeply") from None
    finally:
        loader.dispose()


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split 'a.b=value' into (['a', 'b'], parsed YAML value)."""
    shown = _show(text)
    if "=" not in text:
        raise ConfigError(f"--set {shown}: expected KEY=VALUE, e.g. --set optimizer.lr=0.05")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {shown}: the key is empty")
    try:
        value = parse_yaml(raw) if raw.strip() else None
    except YamlRefused as exc:
        raise ConfigError(f"--set {shown}: {exc}") from None
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
                raise ConfigError(f"--set {_show(text)}: '{_clip(part)}' is not a section")
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
        with path.open("rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; a config file is a few kB")
        raw = parse_yaml(data)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{line}: {_clip(problem, 200)}") from None
    except YamlRefused as exc:
        raise ConfigError(f"{path}: {exc}") from None
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


# ----------------------------------------------------------------------------- resolution against the data


def model_options(m: ModelConfig) -> dict[str, Any]:
    """The `create_model` options of a model section (everything but name, classes and input shape)."""
    skip = {"name", "num_classes", "input_size", "in_channels", "init_from"}
    return {f.name: getattr(m, f.name) for f in dataclasses.fields(m) if f.name not in skip}


def resolve_data_shape(cfg: Config) -> Config:
    """A config whose data conversion follows the model's fixed input size / channels, if any."""
    m, d = cfg.model, cfg.data
    if m.input_size is not None and d.image_size is not None and d.image_size != m.input_size:
        raise ConfigError(f"model.input_size={m.input_size} contradicts data.image_size={d.image_size}")
    if m.in_channels is not None and d.channels is not None and d.channels != m.in_channels:
        raise ConfigError(f"model.in_channels={m.in_channels} contradicts data.channels={d.channels}")
    data = dataclasses.replace(d, image_size=d.image_size if m.input_size is None else m.input_size,
                               channels=d.channels if m.in_channels is None else m.in_channels)
    return dataclasses.replace(cfg, data=data)


def resolve_model_shape(cfg: Config, image_shape: tuple[int, int, int], num_classes: int) -> Config:
    """A config whose model section holds the prepared data's input size, channels and class count."""
    h, w, c = image_shape
    if h != w:
        raise ConfigError(f"images are {h}x{w}; set data.image_size to train on square inputs")
    m = cfg.model
    if m.num_classes is not None and m.num_classes < num_classes:
        raise ConfigError(f"model.num_classes={m.num_classes} but the dataset has {num_classes} classes")
    model = dataclasses.replace(m, num_classes=num_classes if m.num_classes is None else m.num_classes,
                                input_size=h, in_channels=c)
    data = dataclasses.replace(cfg.data, image_size=h, channels=c)  # resolving a resolved config changes nothing
    return dataclasses.replace(cfg, model=model, data=data)
