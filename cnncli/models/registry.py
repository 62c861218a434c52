"""The model registry: `create_model(name, ...)`, `list_models(pattern)`.

Every model takes NHWC float input and returns float32 logits [N, num_classes] (float64 where its layers
were made to compute in float64, as some tests do).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable
from typing import Any

from cnncli.config import ModelConfig, model_options
from cnncli.errors import ModelError, did_you_mean


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    default_input: tuple[int, int, int]  # H, W, C
    default_classes: int
    build: Callable[..., Any]  # build(num_classes, in_channels, opts, rngs) -> nnx.Module
    options: tuple[str, ...]  # family-specific options beyond the common ones
    description: str


# The options every family accepts, with their defaults: one definition, the config's model section.
COMMON_OPTIONS: dict[str, Any] = model_options(ModelConfig())

_REGISTRY: dict[str, ModelSpec] = {}


def _register(spec: ModelSpec) -> None:
    _REGISTRY[spec.name] = spec


def _populate() -> None:
    from cnncli.models.alexnet import AlexNet, alexnet_torchvision
    from cnncli.models.cifar_resnet import CifarResNet
    from cnncli.models.resnet import BasicBlock, Bottleneck, ResNet
    from cnncli.models.vgg import CONFIGS, VGG

    _register(ModelSpec("alexnet", "alexnet", (227, 227, 3), 1000,
                        lambda k, c, o, r: AlexNet(k, c, o, rngs=r), ("dropout", "lrn"),
                        "AlexNet, single tower (Krizhevsky et al. 2012)"))
    _register(ModelSpec("alexnet_tv", "alexnet", (224, 224, 3), 1000,
                        lambda k, c, o, r: alexnet_torchvision(k, c, o, rngs=r), ("dropout",),
                        "torchvision's AlexNet, for its weights: 64-192-384-256-256 filters, conv1 pad 2, no LRN"))
    for name, cfg in CONFIGS.items():
        letter = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}[name]
        for suffix, use_bn in (("", False), ("_bn", True)):
            _register(ModelSpec(name + suffix, "vgg", (224, 224, 3), 1000,
                                lambda k, c, o, r, cfg=cfg, b=use_bn: VGG(cfg, b, k, c, o, rngs=r), ("dropout",),
                                f"VGG configuration {letter}{' with BatchNorm' if use_bn else ''}"))
    for name, block, layers in (
        ("resnet18", BasicBlock, [2, 2, 2, 2]),
        ("resnet34", BasicBlock, [3, 4, 6, 3]),
        ("resnet50", Bottleneck, [3, 4, 6, 3]),
        ("resnet101", Bottleneck, [3, 4, 23, 3]),
        ("resnet152", Bottleneck, [3, 8, 36, 3]),
    ):
        _register(ModelSpec(name, "resnet", (224, 224, 3), 1000,
                            lambda k, c, o, r, b=block, ls=layers: ResNet(b, ls, k, c, o, rngs=r),
                            ("zero_init_residual", "remat"),
                            f"ImageNet ResNet-{name[6:]} ({block.__name__.lower()} blocks, v1.5)"))
    for depth in (20, 32, 44, 56, 110):
        _register(ModelSpec(f"resnet{depth}", "cifar_resnet", (32, 32, 3), 10,
                            lambda k, c, o, r, d=depth: CifarResNet(d, k, c, o["shortcut"] or "A", o, rngs=r),
                            ("zero_init_residual", "remat", "shortcut"),
                            f"CIFAR ResNet-{depth} (6n+2, option-A shortcuts)"))
        _register(ModelSpec(f"plain{depth}", "cifar_plain", (32, 32, 3), 10,
                            lambda k, c, o, r, d=depth: CifarResNet(d, k, c, None, o, rngs=r),
                            ("remat",),
                            f"plain twin of CIFAR ResNet-{depth} (no shortcuts)"))


def _registry() -> dict[str, ModelSpec]:
    if not _REGISTRY:
        _populate()
    return _REGISTRY


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, in registry order."""
    return [n for n in _registry() if fnmatch.fnmatch(n, pattern)]


def get_spec(name: str) -> ModelSpec:
    """The ModelSpec for `name`, or a ModelError suggesting close names."""
    reg = _registry()
    if name not in reg:
        shown = name if len(name) <= 60 else name[:57] + "..."
        hint = did_you_mean(name, reg) if len(name) <= 60 else ""
        raise ModelError(f"unknown model {shown!r}{hint}; `cnn models` lists them all")
    return reg[name]


def resolve_options(spec: ModelSpec, options: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults, reject unknown options and options that do not apply to the family."""
    import jax.numpy as jnp

    opts = dict(COMMON_OPTIONS)
    for key, value in options.items():
        if key not in COMMON_OPTIONS:
            raise ModelError(f"unknown model option {key!r}{did_you_mean(key, COMMON_OPTIONS)}")
        family_only = {"shortcut", "lrn", "zero_init_residual", "remat", "dropout"}
        if key in family_only and value not in (None, False) and key not in spec.options:
            raise ModelError(f"model option {key!r} does not apply to {spec.name} ({spec.family})")
        opts[key] = value
    if opts["shortcut"] not in (None, "A", "B"):
        raise ModelError(f"model option 'shortcut' must be 'A' or 'B', got {opts['shortcut']!r}")
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
    if opts["dtype"] not in dtypes:
        raise ModelError(f"model option 'dtype' must be one of {', '.join(dtypes)}, got {opts['dtype']!r}")
    opts["dtype"] = dtypes[opts["dtype"]]
    return opts


def _forward_shapes_ok(model: Any, input_shape: tuple[int, int, int]) -> bool:
    """Trace a forward pass (no compute); False when some layer's output is empty or the trace fails."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from cnncli.models.layers import record_layers

    graphdef, state = nnx.split(model)
    calls = []

    def forward(state, x):
        m = nnx.merge(graphdef, state, copy=True)
        m.eval()
        with record_layers() as rec:
            out = m(x)
        calls.extend(rec)
        return out

    try:
        jax.eval_shape(forward, state, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
    except (TypeError, ValueError, ZeroDivisionError):
        return False
    return all(all(d > 0 for d in c.output_shape) and _strides_fit(c) for c in calls)


def _strides_fit(call) -> bool:
    """A layer that downsamples by a stride s sees at least s pixels per side: on a smaller map (1x1 into a
    stride-2 convolution) its window lies mostly on padding and the stride has nothing to skip."""
    stride = getattr(call.module, "strides", None) or getattr(call.module, "stride", None)
    if call.kind not in ("conv", "pool") or stride is None or len(call.input_shape) != 4:
        return True
    stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
    return all(n >= s for n, s in zip(call.input_shape[1:3], stride))


def minimum_input_size(name: str, in_channels: int = 3) -> int:
    """Smallest square input the architecture accepts (found by tracing, not from a table)."""
    spec = get_spec(name)
    model = _build(spec, 10, in_channels, resolve_options(spec, {}), seed=0, abstract=True)
    lo, hi = 1, 1024
    while lo < hi:
        mid = (lo + hi) // 2
        if _forward_shapes_ok(model, (mid, mid, in_channels)):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _build(spec: ModelSpec, num_classes: int, in_channels: int, opts: dict, seed: int, abstract: bool) -> Any:
    from flax import nnx

    if abstract:
        return nnx.eval_shape(lambda: spec.build(num_classes, in_channels, opts, nnx.Rngs(seed)))
    return spec.build(num_classes, in_channels, opts, nnx.Rngs(seed))


def create_model(name: str, *, num_classes: int | None = None, input_shape: tuple[int, int, int] | None = None,
                 seed: int = 0, abstract: bool = False, check_input: bool = True, **options: Any) -> Any:
    """Build a registered model.

    Args:
      name: a registered name (`list_models()`).
      num_classes: output classes (default: the family's, 1000 or 10).
      input_shape: (H, W, C) the model will see (default: the family's).
      seed: parameter initialisation seed.
      abstract: build with `nnx.eval_shape` (shapes only, no memory) -- for counting and summaries.
      check_input: trace a forward pass and raise a ModelError naming the minimum size if the
        input is too small.
      **options: dropout, width, zero_init_residual, bn_momentum, bn_epsilon, dtype, remat,
        shortcut ('A' / 'B', CIFAR ResNets), lrn (AlexNet).

    The model carries `model_name`, `num_classes` and `input_shape` attributes.
    """
    spec = get_spec(name)
    opts = resolve_options(spec, options)
    num_classes = spec.default_classes if num_classes is None else int(num_classes)
    input_shape = spec.default_input if input_shape is None else tuple(int(v) for v in input_shape)
    if num_classes < 1:
        raise ModelError(f"num_classes must be positive, got {num_classes}")
    if len(input_shape) != 3 or input_shape[2] < 1:
        raise ModelError(f"input_shape must be (height, width, channels), got {input_shape}")
    if min(input_shape[:2]) < 1:
        low = minimum_input_size(name, input_shape[2])
        raise ModelError(f"input {input_shape[0]}x{input_shape[1]} is too small for {name}: the minimum is {low}x{low}")
    model = _build(spec, num_classes, input_shape[2], opts, seed, abstract)
    if check_input and not _forward_shapes_ok(model, input_shape):
        low = minimum_input_size(name, input_shape[2])
        raise ModelError(
            f"input {input_shape[0]}x{input_shape[1]} is too small for {name}: the minimum is {low}x{low}"
        )
    model.model_name = name
    model.num_classes = num_classes
    model.input_shape = input_shape
    return model
