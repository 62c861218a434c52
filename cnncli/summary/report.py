"""One model's summary: the walked layers, the totals, the memory answer and XLA's cross-check."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

from cnncli.summary.memory import DTYPE_BYTES, OPTIMIZER_STATE_COPIES, MemoryModel, SummaryError, rank_advice
from cnncli.summary.receptive import final_field
from cnncli.summary.walk import group_blocks, walk_layers

# A training step costs about three forward passes: the forward, the gradient with respect to
# each layer's input and the gradient with respect to its weights.
TRAIN_STEP_FORWARDS = 3


def _fc_figures(layers: list[dict[str, Any]], num_classes: int,
                per_device: Callable[[tuple[int, ...]], int] = lambda shape: math.prod(shape)) -> tuple[int, int]:
    """(trainable params of the FC layers, params of the one classifier global pooling would leave),
    counted as `per_device(shape)` counts each kernel and bias (all elements by default)."""
    fc = [r for r in layers if r["type"] == "fc"]
    first = next(i for i, r in enumerate(layers) if r["type"] == "fc") if fc else None
    if first is None:
        return 0, 0
    spatial = [r for r in layers[:first] if len(r["output_shape"]) == 3]
    channels = spatial[-1]["output_shape"][-1] if spatial else layers[first]["output_shape"][-1]

    def dense(fan_in: int, fan_out: int) -> int:
        return per_device((fan_in, fan_out)) + per_device((fan_out,))

    held = 0
    for r in fc:
        out = r["output_shape"][-1]
        held += dense((r["params"] - out) // out, out) if r["params"] else 0
    return held, dense(channels, num_classes)


def _elements_per_device(model: Any, kind: Any, devices: int, shard: bool) -> int:
    """Elements of `model`'s `kind` variables (nnx.Param, nnx.BatchStat) that one device holds."""
    import jax
    from flax import nnx

    from cnncli.distributed import elements_per_device

    return sum(elements_per_device(tuple(leaf.shape), devices, shard)
               for leaf in jax.tree.leaves(nnx.state(model, kind)))


def _remat_activations(layers: list[dict[str, Any]], input_activations: int) -> int | None:
    """Activations per image kept when every residual block is recomputed in the backward pass.

    Outside blocks every output is kept; of a block only its output (the next block's input)
    is kept, and the largest block's internals exist once, while it is being recomputed.
    """
    blocks = [b for b in group_blocks(layers) if b["type"] == "block"]
    if not blocks:
        return None
    outside = sum(r["activations"] for r in layers if r["block"] is None)
    kept = sum(b["last_activations"] for b in blocks)
    return input_activations + outside + kept + max(b["activations"] for b in blocks)


def _optimizer_config(optimizer: str):
    """The OptimizerConfig that trains with `optimizer` (a key of OPTIMIZER_STATE_COPIES)."""
    from cnncli.config import OptimizerConfig

    if optimizer == "sgd":
        return OptimizerConfig(name="sgd", momentum=0.0)
    if optimizer == "sgd_momentum":
        return OptimizerConfig(name="sgd", momentum=0.9)
    if optimizer in ("rmsprop", "rmsprop_momentum"):
        return OptimizerConfig(name="rmsprop", momentum=0.9 if optimizer == "rmsprop_momentum" else 0.0)
    return OptimizerConfig(name=optimizer)


def _half_input(name: str, input_shape: tuple[int, int, int], num_classes: int, options: dict) -> tuple[int, int] | None:
    """(side, activations per image) at half the input side, or None if the model cannot take it."""
    from cnncli.errors import ModelError
    from cnncli.models import create_model

    h, w, c = input_shape
    side = h // 2
    if side < 1 or h != w:
        return None
    try:
        model = create_model(name, num_classes=num_classes, input_shape=(side, side, c), abstract=True, **options)
    except ModelError:
        return None
    return side, side * side * c + sum(r.activations for r in walk_layers(model, (side, side, c)))


@dataclasses.dataclass(frozen=True)
class SummaryOptions:
    """What to summarize a registered model for: its shape, the training step it is sized for, the extra work.

    input_size / in_channels / num_classes override the family's defaults; `model_options` are
    create_model's options (width, dtype, dropout, ...). `batch_size` is the global batch the
    training memory (and XLA's compilation) is for; None with a `memory_budget` (bytes) takes the
    largest batch that fits, None without one a batch of one per device. `optimizer` is a key of
    OPTIMIZER_STATE_COPIES; `optimizer_config` and `augment` the OptimizerConfig and AugmentConfig to
    compile with (default: built from `optimizer`, no augmentation). `devices` data-parallel devices
    split the global batch, the memory figures being one device's; `shard_params` splits parameters,
    gradients and optimizer state over them (`train.shard_params`) instead of a full copy on each.
    `compile` lowers and compiles the real training step for XLA's figures; `advice` ranks the
    lecture's memory advice for this model.
    """

    input_size: int | None = None
    in_channels: int | None = None
    num_classes: int | None = None
    model_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    batch_size: int | None = 1
    optimizer: str = "sgd_momentum"
    optimizer_config: Any = None
    augment: Any = None
    devices: int = 1
    shard_params: bool = False
    memory_budget: int | None = None
    compile: bool = False
    advice: bool = True


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """One model's summary; `as_dict()` is its JSON form (`cnn summarize --format json`).

    `layers` are the walked rows' dicts (cnncli.summary.walk.LayerRow.to_dict), `memory` the
    MemoryModel's breakdown with the budget's answer, `advice` the ranked Advice dicts and `xla`
    compile_train_step's figures with the analytic comparison (None without `compile`).
    """

    model: str
    input_shape: tuple[int, int, int]
    num_classes: int
    trainable_params: int
    non_trainable_params: int
    param_dtype: str
    compute_dtype: str
    total_macs: int
    input_activations: int
    activations_per_image: int  # elements, the input's included
    activations_bytes_per_image_with_backward: int
    fc_params: int
    receptive_field: dict[str, Any] | None
    layers: tuple[dict[str, Any], ...]
    memory: dict[str, Any]
    advice: tuple[dict[str, Any], ...] = ()
    xla: dict[str, Any] | None = None

    @property
    def total_params(self) -> int:
        return self.trainable_params + self.non_trainable_params

    @property
    def total_flops(self) -> int:
        return 2 * self.total_macs

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready dict (a deep copy): these keys, in this order."""
        return copy.deepcopy({
            "model": self.model,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "non_trainable_params": self.non_trainable_params,
            "param_dtype": self.param_dtype,
            "params_bytes": self.total_params * DTYPE_BYTES[self.param_dtype],
            "total_macs": self.total_macs,
            "total_flops": self.total_flops,
            "input_activations": self.input_activations,
            "activations_per_image": self.activations_per_image,
            "activations_bytes_per_image": self.activations_per_image * DTYPE_BYTES[self.compute_dtype],
            "activations_bytes_per_image_with_backward": self.activations_bytes_per_image_with_backward,
            "fc_params": self.fc_params,
            "fc_param_share": self.fc_params / self.trainable_params if self.trainable_params else 0.0,
            "receptive_field": self.receptive_field,
            "layers": list(self.layers),
            "memory": self.memory,
            "advice": list(self.advice),
            "xla": self.xla,
        })


def _checked_dtype(opts: SummaryOptions) -> str:
    """The compute dtype, once the optimizer and dtype are known ones."""
    if opts.optimizer not in OPTIMIZER_STATE_COPIES:
        raise SummaryError(f"unknown optimizer {opts.optimizer!r}; expected one of {', '.join(OPTIMIZER_STATE_COPIES)}")
    dtype = opts.model_options.get("dtype") or "float32"
    if dtype not in DTYPE_BYTES:
        raise SummaryError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    return dtype


def _memory_model(model: Any, activations: int, dtype: str, opts: SummaryOptions) -> MemoryModel:
    """One device's training-memory formula for `model` (shard_params means nothing on one device)."""
    from flax import nnx

    if opts.devices < 1:
        raise SummaryError(f"--devices must be a positive integer, got {opts.devices}")
    shard = opts.shard_params and opts.devices > 1
    return MemoryModel(_elements_per_device(model, nnx.Param, opts.devices, shard),
                       _elements_per_device(model, nnx.BatchStat, opts.devices, shard), activations, opts.optimizer,
                       compute_dtype=dtype, devices=opts.devices, sharded=shard)


def _batch_and_memory(mem: MemoryModel, opts: SummaryOptions) -> tuple[int, dict[str, Any]]:
    """(the global batch, the JSON `memory` block): the breakdown at that batch and the budget's answer."""
    budget, devices = opts.memory_budget, opts.devices
    largest = mem.largest_batch(budget) if budget is not None else None
    batch = opts.batch_size
    if batch is None:
        batch = max(devices, largest) if largest is not None else devices
    if batch < 1:
        raise SummaryError(f"--batch-size must be a positive integer, got {batch}")
    if batch % devices:
        raise SummaryError(f"the batch ({batch}) must be divisible by the number of devices ({devices}): "
                           "it is the global batch, split evenly over them")
    memory = mem.breakdown(batch)
    memory.update(budget_bytes=budget, largest_batch=largest, limited_by=None,
                  fits=memory["total_bytes"] <= budget if budget is not None else None)
    if budget is not None:
        at = max(largest, devices)
        act = at // devices * mem.bytes_per_image()
        if largest == 0:
            memory["limited_by"] = (f"parameters, gradients and optimizer state alone take {mem.fixed_bytes():,} "
                                    f"bytes, more than the {budget:,} available")
        else:
            memory["limited_by"] = (f"activations: {act / mem.total(at):.0%} of the memory at batch {at} "
                                    f"({mem.bytes_per_image():,} bytes per image)")
    return batch, memory


def _ranked_advice(name: str, model: Any, layers: list[dict[str, Any]], mem: MemoryModel, batch: int,
                   opts: SummaryOptions) -> list[dict[str, Any]]:
    """The lecture's memory advice for this model at this batch, ranked by bytes saved."""
    from cnncli.distributed import elements_per_device
    from cnncli.models import get_spec

    h, w, c = model.input_shape
    half = _half_input(name, model.input_shape, model.num_classes, dict(opts.model_options))
    remat = _remat_activations(layers, h * w * c) if "remat" in get_spec(name).options else None
    fc_held, fc_replacement = _fc_figures(layers, model.num_classes,
                                          lambda shape: elements_per_device(shape, mem.devices, mem.sharded))
    return [a.to_dict() for a in rank_advice(
        mem, batch, opts.memory_budget, fc_params=fc_held, fc_replacement=fc_replacement,
        half_input_activations=half[1] if half else None, half_input_size=half[0] if half else None,
        remat_activations=remat)]


def _xla_figures(model: Any, mem: MemoryModel, batch: int, total_macs: int, total_bytes: int,
                 opts: SummaryOptions) -> dict[str, Any]:
    """XLA's figures for the compiled training step, beside the analytic FLOPs and memory."""
    from cnncli.summary.xla import compile_train_step

    xla = compile_train_step(model, batch_size=batch,
                             optimizer=opts.optimizer_config or _optimizer_config(opts.optimizer),
                             augment=opts.augment, devices=opts.devices, shard_params=mem.sharded)
    analytic = TRAIN_STEP_FORWARDS * 2 * total_macs * (batch // opts.devices)
    xla["analytic_flops"] = analytic
    xla["flops_ratio"] = xla["flops"] / analytic if xla["flops"] and analytic else None
    xla["memory_ratio"] = xla["peak_bytes"] / total_bytes if xla["peak_bytes"] else None
    xla["devices"] = opts.devices
    return xla


def summarize_model(name: str, opts: SummaryOptions = SummaryOptions()) -> ModelSummary:
    """The summary of the registered model `name`, as `opts` asks (see SummaryOptions)."""
    from cnncli.models import create_model, get_spec

    spec = get_spec(name)
    dtype = _checked_dtype(opts)
    h = opts.input_size or spec.default_input[0]
    c = opts.in_channels or spec.default_input[2]
    model = create_model(name, num_classes=opts.num_classes, input_shape=(h, h, c), abstract=True,
                         **opts.model_options)
    rows = walk_layers(model, model.input_shape)
    layers = [r.to_dict() for r in rows]
    trainable, total_macs = sum(r.params for r in rows), sum(r.macs for r in rows)
    activations = h * h * c + sum(r.activations for r in rows)
    mem = _memory_model(model, activations, dtype, opts)
    batch, memory = _batch_and_memory(mem, opts)
    return ModelSummary(
        model=name, input_shape=tuple(model.input_shape), num_classes=model.num_classes,
        trainable_params=trainable, non_trainable_params=sum(r.non_trainable for r in rows),
        param_dtype=mem.param_dtype, compute_dtype=dtype, total_macs=total_macs, input_activations=h * h * c,
        activations_per_image=activations, activations_bytes_per_image_with_backward=mem.bytes_per_image(),
        fc_params=_fc_figures(layers, model.num_classes)[0], receptive_field=final_field(layers),
        layers=tuple(layers), memory=memory,
        advice=tuple(_ranked_advice(name, model, layers, mem, batch, opts)) if opts.advice else (),
        xla=_xla_figures(model, mem, batch, total_macs, memory["total_bytes"], opts) if opts.compile else None)
