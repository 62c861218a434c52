"""`cnn show filters`: a conv layer's kernels as pictures.

The first conv layer's kernels of an RGB model are shown in colour, one tile per output
filter ([kh, kw, 3]); a grayscale model's in gray. A deeper layer has one kernel slice per
input channel; each filter is shown as the mean over its input channels (gray). Every tile
is normalised on its own to [0, 1] (min to max), as the classic pictures of learned edge
and colour detectors are: the colours show each filter's pattern, not its scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnncli.errors import ConfigError
from cnncli.show.figures import filters_figure, grid_shape
from cnncli.show.layers import layer_table, resolve
from cnncli.show.subject import Subject


def normalise_tiles(kernel: np.ndarray) -> tuple[np.ndarray, str]:
    """Kernel [kh, kw, in, out] -> (tiles [out, kh, kw, 3 or 1] each in [0, 1], mode rgb | gray | mean)."""
    in_ch = kernel.shape[2]
    if in_ch == 3:
        tiles, mode = kernel, "rgb"
    elif in_ch == 1:
        tiles, mode = kernel, "gray"
    else:
        tiles, mode = kernel.mean(axis=2, keepdims=True), "mean"
    tiles = np.moveaxis(tiles, -1, 0).astype(np.float64)  # [out, kh, kw, c]
    low = tiles.min(axis=(1, 2, 3), keepdims=True)
    span = tiles.max(axis=(1, 2, 3), keepdims=True) - low
    flat = span == 0
    return np.where(flat, 0.5, (tiles - low) / np.where(flat, 1.0, span)), mode


def show_filters(subject: Subject, *, layer: str | None = None, limit: int = 64) -> tuple[Any, dict[str, Any]]:
    """(figure, numbers): the kernels of `layer` (default: the first conv layer), at most `limit` filters."""
    from cnncli.models.layers import Conv

    if limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    if layer is None:
        rows, _ = layer_table(subject.model, subject.input_shape)
        layer = next(r["name"] for r in rows if r["type"] == "conv")
    name, _, mod = resolve(subject.model, layer)
    if not isinstance(mod, Conv):
        raise ConfigError(f"{name} is a {type(mod).__name__}, not a conv layer; filters belong to conv layers")
    kernel = np.asarray(mod.kernel.value, np.float32)
    tiles, mode = normalise_tiles(kernel)
    shown = tiles[:limit]
    grid = grid_shape(len(shown))
    how = {"rgb": "RGB", "gray": "gray", "mean": "mean over input channels"}[mode]
    title = (f"{subject.name} ({subject.source}) {name}: {len(shown)} of {kernel.shape[3]} filters "
             f"{kernel.shape[0]}x{kernel.shape[1]}x{kernel.shape[2]}, {how}, each normalised")
    fig = filters_figure(shown, title)
    data = {"model": subject.name, "source": subject.source, "layer": name, "kernel_shape": list(kernel.shape),
            "mode": mode, "shown": len(shown), "grid": list(grid),
            "figure_inches": [float(v) for v in fig.get_size_inches()],
            "filters": [{"index": i, "min": float(np.min(kernel[..., i])), "max": float(np.max(kernel[..., i])),
                         "tile": np.round(t, 4).tolist()} for i, t in enumerate(shown)]}
    return fig, data
