"""Receptive field and effective stride (jump) of every layer, from the layers' real geometry.

A unit of a layer sees a square of `receptive_field` input pixels, and neighbouring units
are `effective_stride` input pixels apart. Through a layer of kernel k, stride s and
dilation d (effective kernel d*(k-1)+1):

    rf_out = rf_in + (d*(k-1)) * jump_in        jump_out = jump_in * s

Padding shifts where the field sits on the input but not its size (near the border part of
the field lies on padding, which is why a field may exceed the input). Figures are along
the height axis; every model here is square.

Residual blocks follow the deepest path, the block's own convolutions: a shortcut's layers
(names starting `downsample` or `proj`, as summary.walk.group_blocks) start from the
block's input, and the block's add takes the larger of the two fields. A global pooling or
the first dense layer after a feature map covers the whole map (kernel = its side).
Adaptive average pooling that resizes uses its widest bin as the kernel and the rounded
size ratio as the stride (exact when the sizes divide).
"""

from __future__ import annotations

import dataclasses
from typing import Any

SHORTCUT_PREFIXES = ("downsample", "proj")


@dataclasses.dataclass(frozen=True)
class Field:
    size: int  # receptive field side, input pixels
    jump: int  # distance between neighbouring units, input pixels

    def through(self, kernel: int, stride: int = 1, dilation: int = 1) -> Field:
        return Field(self.size + dilation * (kernel - 1) * self.jump, self.jump * stride)


@dataclasses.dataclass
class Geometry:
    """What a layer does to the field: `local` (kernel/stride/dilation), `global` or `same`."""

    kind: str  # local | global | same | adaptive
    kernel: int = 1
    stride: int = 1
    dilation: int = 1
    output_size: int = 0  # adaptive pooling's target side


def adaptive_kernel_stride(size_in: int, size_out: int) -> tuple[int, int]:
    """(widest bin, stride) of torchvision's adaptive bins [floor(i*n/o), ceil((i+1)*n/o))."""
    widest = max(-((-(i + 1) * size_in) // size_out) - (i * size_in) // size_out for i in range(size_out))
    return widest, max(1, round(size_in / size_out))


def _is_shortcut(name: str) -> bool:
    return name.rsplit(".", 1)[-1].startswith(SHORTCUT_PREFIXES)


def assign_fields(rows: list[Any], geometry: list[Geometry], input_shape: tuple[int, ...]) -> None:
    """Set `receptive_field` and `effective_stride` on each LayerRow (forward order, same length lists)."""
    cur = Field(1, 1)
    side = input_shape[0]  # side of the newest feature map
    block, block_in, shortcut = None, cur, None
    is_global = False
    for row, g in zip(rows, geometry):
        if row.block is not None and row.block != block:
            block, block_in, shortcut = row.block, cur, None
        elif row.block is None:
            block = None
        if _is_shortcut(row.name) and row.block is not None:
            shortcut = _apply(shortcut or block_in, g)
            row.receptive_field, row.effective_stride = shortcut.size, shortcut.jump
            continue
        if row.type == "add":
            other = shortcut or block_in
            cur = Field(max(cur.size, other.size), cur.jump)
            shortcut = None
        elif g.kind == "global" and not is_global:
            cur = cur.through(side, side)
            is_global = True
        elif g.kind == "adaptive" and not is_global and side != g.output_size:
            cur = cur.through(*adaptive_kernel_stride(side, g.output_size))
        elif g.kind == "local":
            cur = cur.through(g.kernel, g.stride, g.dilation)
        if len(row.output_shape) == 3:
            side = row.output_shape[0]
        row.receptive_field, row.effective_stride = cur.size, cur.jump


def _apply(field: Field, g: Geometry) -> Field:
    return field.through(g.kernel, g.stride, g.dilation) if g.kind == "local" else field


def final_field(layers: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last feature map's field: {layer, receptive_field, effective_stride}, or None without one."""
    maps = [r for r in layers if len(r["output_shape"]) == 3 and r.get("receptive_field") is not None]
    if not maps:
        return None
    r = maps[-1]
    return {"layer": r["name"], "receptive_field": r["receptive_field"], "effective_stride": r["effective_stride"]}
