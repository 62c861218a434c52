"""The config's typed schema: one frozen dataclass per section, each numeric field with its range."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from cnncli.data.catalog import SOURCE_NAMES


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
MAX_RATE = 1e30  # learning rates and decays: anything float32 holds (a diverging rate is a legitimate experiment)


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
    # FSDP-style: split each large parameter / optimizer-state array over the devices instead of copying it
    shard_params: bool = False
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
