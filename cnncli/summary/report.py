"""One model's summary: the walked layers, the totals, the memory answer and XLA's cross-check."""

from __future__ import annotations

import math
from collections.abc import Callable
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


def summarize_model(name: str, *, input_size: int | None = None, in_channels: int | None = None,
                    num_classes: int | None = None, batch_size: int = 1, optimizer: str = "sgd_momentum",
                    memory_budget: int | None = None, compile: bool = False, optimizer_config: Any = None,
                    augment: Any = None, advice: bool = True, devices: int = 1, shard_params: bool = False,
                    **options: Any) -> dict[str, Any]:
    """The summary of a registered model as a JSON-ready dict.

    Args:
      name: a registered model name.
      input_size / in_channels / num_classes: override the family's defaults.
      batch_size: the batch the training memory (and XLA's compilation) is for; with
        `memory_budget` and batch_size None, the largest batch that fits is used.
      optimizer: a key of OPTIMIZER_STATE_COPIES (sgd, sgd_momentum, adam, ...).
      memory_budget: bytes; adds the largest batch that fits and what limits it.
      compile: lower and compile the real training step and report XLA's figures.
      optimizer_config: the OptimizerConfig to compile with (default: built from `optimizer`).
      augment: the AugmentConfig to compile with (default: none).
      advice: rank the lecture's memory advice for this model.
      devices: data-parallel devices the global `batch_size` is split over; the memory figures
        are one device's.
      shard_params: parameters, gradients and optimizer state split over the devices
        (`train.shard_params`) instead of a full copy on each.
      **options: model options (width, dtype, dropout, ...), as create_model takes them.
    """
    from cnncli.models import create_model, get_spec

    spec = get_spec(name)
    if optimizer not in OPTIMIZER_STATE_COPIES:
        raise SummaryError(f"unknown optimizer {optimizer!r}; expected one of {', '.join(OPTIMIZER_STATE_COPIES)}")
    dtype = options.get("dtype") or "float32"
    if dtype not in DTYPE_BYTES:
        raise SummaryError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    h = input_size or spec.default_input[0]
    c = in_channels or spec.default_input[2]
    model = create_model(name, num_classes=num_classes, input_shape=(h, h, c), abstract=True, **options)
    rows = walk_layers(model, model.input_shape)
    layers = [r.to_dict() for r in rows]
    trainable = sum(r.params for r in rows)
    non_trainable = sum(r.non_trainable for r in rows)
    input_activations = h * h * c
    activations = input_activations + sum(r.activations for r in rows)
    total_macs = sum(r.macs for r in rows)
    if devices < 1:
        raise SummaryError(f"--devices must be a positive integer, got {devices}")
    if devices == 1:
        shard_params = False  # one device holds everything either way
    from flax import nnx

    from cnncli.distributed import elements_per_device

    mem = MemoryModel(_elements_per_device(model, nnx.Param, devices, shard_params),
                      _elements_per_device(model, nnx.BatchStat, devices, shard_params), activations, optimizer,
                      compute_dtype=dtype, devices=devices, sharded=shard_params)

    largest = mem.largest_batch(memory_budget) if memory_budget is not None else None
    if batch_size is None:
        batch_size = max(devices, largest) if largest is not None else devices
    if batch_size < 1:
        raise SummaryError(f"--batch-size must be a positive integer, got {batch_size}")
    if batch_size % devices:
        raise SummaryError(f"the batch ({batch_size}) must be divisible by the number of devices ({devices}): "
                           "it is the global batch, split evenly over them")
    memory = mem.breakdown(batch_size)
    memory.update(budget_bytes=memory_budget, largest_batch=largest, limited_by=None,
                  fits=memory["total_bytes"] <= memory_budget if memory_budget is not None else None)
    if memory_budget is not None:
        at = max(largest, devices)
        act = at // devices * mem.bytes_per_image()
        if largest == 0:
            memory["limited_by"] = (f"parameters, gradients and optimizer state alone take {mem.fixed_bytes():,} "
                                    f"bytes, more than the {memory_budget:,} available")
        else:
            memory["limited_by"] = (f"activations: {act / mem.total(at):.0%} of the memory at batch {at} "
                                    f"({mem.bytes_per_image():,} bytes per image)")

    fc_params, _ = _fc_figures(layers, model.num_classes)
    ranked = []
    if advice:
        half = _half_input(name, model.input_shape, model.num_classes, options)
        remat = _remat_activations(layers, input_activations) if "remat" in spec.options else None
        fc_held, fc_replacement = _fc_figures(layers, model.num_classes,
                                              lambda shape: elements_per_device(shape, devices, shard_params))
        ranked = [a.to_dict() for a in rank_advice(
            mem, batch_size, memory_budget, fc_params=fc_held, fc_replacement=fc_replacement,
            half_input_activations=half[1] if half else None, half_input_size=half[0] if half else None,
            remat_activations=remat)]

    xla = None
    if compile:
        from cnncli.summary.xla import compile_train_step

        xla = compile_train_step(model, batch_size=batch_size,
                                 optimizer=optimizer_config or _optimizer_config(optimizer), augment=augment,
                                 devices=devices, shard_params=shard_params)
        analytic = TRAIN_STEP_FORWARDS * 2 * total_macs * (batch_size // devices)
        xla["analytic_flops"] = analytic
        xla["flops_ratio"] = xla["flops"] / analytic if xla["flops"] and analytic else None
        xla["memory_ratio"] = xla["peak_bytes"] / memory["total_bytes"] if xla["peak_bytes"] else None
        xla["devices"] = devices

    return {
        "model": name,
        "input_shape": list(model.input_shape),
        "num_classes": model.num_classes,
        "total_params": trainable + non_trainable,
        "trainable_params": trainable,
        "non_trainable_params": non_trainable,
        "param_dtype": mem.param_dtype,
        "params_bytes": (trainable + non_trainable) * mem.param_bytes,
        "total_macs": total_macs,
        "total_flops": 2 * total_macs,
        "input_activations": input_activations,
        "activations_per_image": activations,
        "activations_bytes_per_image": activations * DTYPE_BYTES[dtype],
        "activations_bytes_per_image_with_backward": mem.bytes_per_image(),
        "fc_params": fc_params,
        "fc_param_share": fc_params / trainable if trainable else 0.0,
        "receptive_field": final_field(layers),
        "layers": layers,
        "memory": memory,
        "advice": ranked,
        "xla": xla,
    }
