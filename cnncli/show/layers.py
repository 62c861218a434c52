"""Naming a model's layers, reading their outputs and their receptive fields.

A layer is named by its dotted path in the model, as `cnn summarize --expand` prints it:
`conv1`, `layer2.1.conv2`, `features.4`, or a residual block `layer2.1`. A list of blocks
(a ResNet stage, `layer2`; VGG's `features`) stands for its last item, whose output is the
stage's output. Outputs are each module's `__call__` result, captured with flax's
`nnx.capture(..., method_outputs=nnx.Intermediate)` during one evaluation forward pass: a
conv's output is taken before the BatchNorm and ReLU that follow it in the model, a
block's after its closing ReLU.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cnncli.errors import ConfigError, did_you_mean


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    name: str  # the module's dotted path (a stage resolved to its last block)
    output_shape: tuple[int, ...]  # per example
    receptive_field: int | None
    effective_stride: int | None


def _path_name(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def modules_by_name(model: Any) -> dict[str, tuple[tuple, Any]]:
    """{dotted name: (path, module)} of every submodule (the model itself excluded)."""
    from flax import nnx

    return {_path_name(p): (tuple(p), m) for p, m in nnx.iter_modules(model) if p}


def resolve(model: Any, name: str) -> tuple[str, tuple, Any]:
    """(dotted name, path, module) for a layer name; a list of modules resolves to its last item."""
    from flax import nnx

    mods = modules_by_name(model)
    if name not in mods:
        raise ConfigError(f"{model.model_name} has no layer {name!r}{did_you_mean(name, mods)}; "
                          "`cnn summarize MODEL --expand` lists the layer names")
    path, mod = mods[name]
    while isinstance(mod, nnx.List) and len(mod):
        path, mod = (*path, len(mod) - 1), mod[len(mod) - 1]
    return _path_name(path), path, mod


def layer_table(model: Any, input_shape: tuple[int, int, int]) -> tuple[list[dict[str, Any]], dict[str, LayerInfo]]:
    """(walked layer rows in forward order, LayerInfo by name for every row and residual block)."""
    from cnncli.summary import group_blocks, walk_layers

    rows = [r.to_dict() for r in walk_layers(model, input_shape)]
    info = {}
    for r in [*rows, *(b for b in group_blocks(rows) if b["type"] == "block")]:
        info[r["name"]] = LayerInfo(r["name"], tuple(r["output_shape"]), r["receptive_field"], r["effective_stride"])
    return rows, info


def _spatial(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows that make a feature map on the main path: shortcut branches and adaptive pooling (a
    resampling to the dense layers' grid, no kernel of its own) left out."""
    out = []
    for r in rows:
        shortcut = r["name"].rsplit(".", 1)[-1].startswith(("downsample", "proj"))
        adaptive = r["type"] == "pool" and r["kernel"] is None
        if len(r["output_shape"]) == 3 and not shortcut and not adaptive and r["type"] in ("conv", "pool", "add", "bn"):
            out.append(r)
    return out


def default_feature_layers(rows: list[dict[str, Any]]) -> list[str]:
    """The first conv, then at each resolution its last pool or residual block: low to high level."""
    from cnncli.summary import group_blocks

    spatial = _spatial(rows)
    first = next((r["name"] for r in spatial if r["type"] == "conv"), None)
    chosen: dict[int, str] = {}
    for r in group_blocks(spatial):  # a block row has its block's output shape
        if r["type"] in ("pool", "block"):
            chosen[r["output_shape"][0]] = r["name"]
    names = [first] if first else []
    return names + [n for n in chosen.values() if n not in names]


def last_feature_layer(rows: list[dict[str, Any]]) -> str:
    """The last conv stage's output: the last feature map before global pooling or the dense layers."""
    spatial = _spatial(rows)
    if not spatial:
        raise ConfigError("the model has no feature map to look at")
    last = spatial[-1]
    return last["block"] or last["name"]


def capture_outputs(model: Any, x: Any, paths: list[tuple]) -> tuple[Any, list[Any]]:
    """(logits, [output array of each module path]) of one forward pass."""
    from flax import nnx

    logits, inter = nnx.capture(lambda m, v: m(v), nnx.Intermediate, method_outputs=nnx.Intermediate)(model, x)
    found = {tuple(k[:-1]): v.get_value() for k, v in inter.flat_state() if k and k[-1] == "__call__"}
    outs = []
    for p in paths:
        if p not in found:
            raise ConfigError(f"layer {_path_name(p)} is not called in the forward pass")
        value = found[p]
        outs.append(value[-1] if isinstance(value, tuple) else value)
    return logits, outs
