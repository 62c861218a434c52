"""`cnn summarize`: the per-layer table and totals, computed by walking a real forward pass.

The forward pass runs under `jax.eval_shape` on an abstract model (no parameter memory, no
compute); every layer reports its kind and output shape (see models/layers.py), and the
kernel, stride and parameter counts are read from the layer objects themselves.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


@dataclasses.dataclass
class LayerRow:
    name: str  # dotted path in the model, e.g. layer2.0.conv1
    type: str  # conv | fc | bn | pool | add | lrn | dropout
    output_shape: list[int]  # per example: [H, W, C] or [F]
    kernel: list[int] | None
    stride: list[int] | None
    padding: list[int] | None
    activations: int  # elements of the output, per example
    params: int  # trainable parameters owned by this layer
    non_trainable: int  # BatchNorm running statistics
    macs: int  # multiply-accumulates per example (conv and fc)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _path_name(path: tuple) -> str:
    return ".".join(str(p) for p in path) or "model"


def _param_counts(module: Any) -> tuple[int, int]:
    from flax import nnx

    def size(state) -> int:
        import jax

        return int(sum(math.prod(x.shape) for x in jax.tree.leaves(state)))

    return size(nnx.state(module, nnx.Param)), size(nnx.state(module, nnx.BatchStat))


def walk_layers(model: Any, input_shape: tuple[int, int, int]) -> list[LayerRow]:
    """One LayerRow per layer call, in forward order (evaluation mode)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from cnncli.models.layers import Conv, MaxPool, record_layers

    graphdef, state = nnx.split(model)
    rows: list[LayerRow] = []

    def forward(state, x):
        m = nnx.merge(graphdef, state, copy=True)
        m.eval()
        names = {id(mod): _path_name(path) for path, mod in nnx.iter_graph(m) if isinstance(mod, nnx.Module)}
        with record_layers() as calls:
            out = m(x)
        for c in calls:
            mod = c.module
            out_shape = list(c.output_shape[1:])
            params, non_trainable = _param_counts(mod) if c.kind in ("conv", "fc", "bn") else (0, 0)
            kernel = stride = padding = None
            macs = 0
            if isinstance(mod, Conv):
                kernel, stride, padding = list(mod.kernel_size), list(mod.strides), list(mod.pad)
                in_ch = c.input_shape[-1]
                macs = math.prod(out_shape) * kernel[0] * kernel[1] * in_ch // mod.feature_group_count
            elif c.kind == "fc":
                macs = c.input_shape[-1] * c.output_shape[-1]
            elif isinstance(mod, MaxPool):
                kernel, stride, padding = list(mod.kernel), list(mod.stride), list(mod.pad)
            rows.append(LayerRow(names.get(id(mod), type(mod).__name__), c.kind, out_shape, kernel, stride,
                                 padding, math.prod(out_shape), params, non_trainable, macs))
        return out

    jax.eval_shape(forward, state, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
    return rows


def summarize_model(name: str, *, input_size: int | None = None, in_channels: int | None = None,
                    num_classes: int | None = None, **options: Any) -> dict[str, Any]:
    """The summary of a registered model as a JSON-ready dict."""
    from cnncli.models import create_model, get_spec

    spec = get_spec(name)
    h = input_size or spec.default_input[0]
    c = in_channels or spec.default_input[2]
    model = create_model(name, num_classes=num_classes, input_shape=(h, h, c), abstract=True, **options)
    rows = walk_layers(model, model.input_shape)
    trainable, non_trainable = _param_counts(model)
    total_macs = sum(r.macs for r in rows)
    return {
        "model": name,
        "input_shape": list(model.input_shape),
        "num_classes": model.num_classes,
        "total_params": trainable + non_trainable,
        "trainable_params": trainable,
        "non_trainable_params": non_trainable,
        "total_macs": total_macs,
        "total_flops": 2 * total_macs,
        "activations_per_image": sum(r.activations for r in rows if r.type in ("conv", "fc", "pool")),
        "layers": [r.to_dict() for r in rows],
    }
