"""The per-layer table, computed by walking a real forward pass.

The forward pass runs under `jax.eval_shape` on an abstract model (no parameter memory, no
compute); every layer reports its kind and output shape (see models/layers.py), and the
kernel, stride and parameter counts are read from the layer objects themselves.

Which outputs count as stored activations (the lecture's "memory" column): every layer
that produces a new tensor -- conv, fc, pool, bn, residual add, lrn -- counts its output
once. ReLU and dropout act element-wise on their input, as the lecture folds ReLU into the
conv row, so they add nothing; an adaptive pooling that is already at its target size
returns its input unchanged and adds nothing either. The input image counts once, as the
lecture's INPUT row. In BatchNorm networks the conv output and the BatchNorm output are
both kept for the backward pass, so both count.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from cnncli.summary.receptive import Geometry, assign_fields

COUNTED_KINDS = ("conv", "fc", "pool", "bn", "add", "lrn")


@dataclasses.dataclass
class LayerRow:
    name: str  # dotted path in the model, e.g. layer2.0.conv1
    type: str  # conv | fc | bn | pool | add | lrn | dropout
    output_shape: list[int]  # per example: [H, W, C] or [F]
    kernel: list[int] | None
    stride: list[int] | None
    padding: list[int] | None
    activations: int  # stored elements this layer adds per example (0 when it does not count, see above)
    params: int  # trainable parameters owned by this layer
    non_trainable: int  # BatchNorm running statistics
    macs: int  # multiply-accumulates per example (conv and fc)
    block: str | None = None  # enclosing residual block, e.g. layer2.0 (None outside blocks)
    receptive_field: int | None = None  # input pixels one output unit sees (summary.receptive)
    effective_stride: int | None = None  # input pixels between neighbouring output units

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _path_name(path: tuple) -> str:
    return ".".join(str(p) for p in path) or "model"


def _param_counts(module: Any) -> tuple[int, int]:
    import jax
    from flax import nnx

    def size(state) -> int:
        return int(sum(math.prod(x.shape) for x in jax.tree.leaves(state)))

    return size(nnx.state(module, nnx.Param)), size(nnx.state(module, nnx.BatchStat))


def _block_of(name: str, kind: str) -> str | None:
    """The residual block a row belongs to: the nearest enclosing module that is an item of a list.

    `layer2.0.conv1` -> `layer2.0`; the block's own add row `layer2.0` -> `layer2.0`; VGG's
    `features.3` is itself a layer in a list, not a block -> None.
    """
    parts = name.split(".")
    if kind == "add":
        return name
    for i in range(len(parts) - 1, 0, -1):
        if parts[i - 1].isdigit() and i - 1 > 0:
            return ".".join(parts[:i])
    return None


def walk_layers(model: Any, input_shape: tuple[int, int, int]) -> list[LayerRow]:
    """One LayerRow per layer call, in forward order (evaluation mode)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from cnncli.models.layers import AdaptiveAvgPool, Conv, GlobalAvgPool, MaxPool, record_layers

    graphdef, state = nnx.split(model)
    rows: list[LayerRow] = []
    geometry: list[Geometry] = []

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
            geo = Geometry("same")
            if isinstance(mod, Conv):
                kernel, stride, padding = list(mod.kernel_size), list(mod.strides), list(mod.pad)
                in_ch = c.input_shape[-1]
                macs = math.prod(out_shape) * kernel[0] * kernel[1] * in_ch // mod.feature_group_count
                dilation = mod.kernel_dilation
                geo = Geometry("local", kernel[0], stride[0], dilation if isinstance(dilation, int) else dilation[0])
            elif c.kind == "fc":
                macs = c.input_shape[-1] * c.output_shape[-1]
                geo = Geometry("global")
            elif isinstance(mod, MaxPool):
                kernel, stride, padding = list(mod.kernel), list(mod.stride), list(mod.pad)
                geo = Geometry("local", kernel[0], stride[0])
            elif isinstance(mod, GlobalAvgPool):
                geo = Geometry("global")
            elif isinstance(mod, AdaptiveAvgPool):
                geo = Geometry("adaptive", output_size=mod.output_size)
            geometry.append(geo)
            identity = isinstance(mod, AdaptiveAvgPool) and c.input_shape == c.output_shape
            counted = c.kind in COUNTED_KINDS and not identity
            name = names.get(id(mod), type(mod).__name__)
            rows.append(LayerRow(name, c.kind, out_shape, kernel, stride, padding,
                                 math.prod(out_shape) if counted else 0, params, non_trainable, macs,
                                 _block_of(name, c.kind)))
        return out

    jax.eval_shape(forward, state, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
    assign_fields(rows, geometry, input_shape)
    return rows


def group_blocks(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Layer dicts (LayerRow.to_dict) with each residual block collapsed into one `block` row.

    A block row sums its layers' activations, parameters and MACs, takes the output shape of
    its last layer (`last_activations`: what that layer stores), and lists its main-path
    convolutions' kernels ("3x3/2 3x3") in `kernel_desc`. Rows outside blocks pass unchanged.
    """
    out: list[dict[str, Any]] = []
    for r in layers:
        if r["block"] is None:
            out.append(dict(r))
            continue
        if not out or out[-1]["type"] != "block" or out[-1]["name"] != r["block"]:
            out.append({"name": r["block"], "type": "block", "output_shape": r["output_shape"], "kernel": None,
                        "stride": None, "padding": None, "activations": 0, "params": 0, "non_trainable": 0,
                        "macs": 0, "block": r["block"], "receptive_field": None, "effective_stride": None, "layers": 0, "kernel_desc": "", "last_activations": 0})
        b = out[-1]
        b["output_shape"] = r["output_shape"]
        if not r["name"].rsplit(".", 1)[-1].startswith(("downsample", "proj")):
            b["receptive_field"], b["effective_stride"] = r.get("receptive_field"), r.get("effective_stride")
        b["last_activations"] = r["activations"]
        for key in ("activations", "params", "non_trainable", "macs"):
            b[key] += r[key]
        b["layers"] += 1
        # the shortcut's projection is not on the main path: its input is the block's input
        if r["type"] == "conv" and not r["name"].rsplit(".", 1)[-1].startswith(("downsample", "proj")):
            k = f"{r['kernel'][0]}x{r['kernel'][1]}" + (f"/{r['stride'][0]}" if r["stride"][0] > 1 else "")
            b["kernel_desc"] = (b["kernel_desc"] + " " + k).strip()
    return out
