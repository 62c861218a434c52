"""The pictures of `cnn show`: matplotlib figures on an Agg canvas (no pyplot, no display).

Every figure is a grid of square panels of `PANEL_INCHES`, plus a strip for the title, so
that its pixel size follows from the grid: (cols x PANEL_INCHES, rows x PANEL_INCHES +
TITLE_INCHES) x the dpi it is saved at.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

PANEL_INCHES = 1.4
TITLE_INCHES = 0.5


def grid_shape(n: int, max_cols: int = 8) -> tuple[int, int]:
    """(rows, cols) of a near-square grid for n panels, at most `max_cols` wide."""
    cols = max(1, min(max_cols, math.ceil(math.sqrt(n))))
    return math.ceil(n / cols), cols


def _grid_figure(rows: int, cols: int, title: str, panel: float = PANEL_INCHES):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = cols * panel, rows * panel + TITLE_INCHES
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False,
                        gridspec_kw={"left": 0.02, "right": 0.98, "bottom": 0.02,
                                     "top": 1 - TITLE_INCHES / height, "wspace": 0.15, "hspace": 0.45})
    fig.suptitle(title, fontsize=9, y=1 - 0.1 * TITLE_INCHES / height)
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes


def _show(ax, image: np.ndarray, **kwargs) -> None:
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        kwargs.setdefault("cmap", "gray")
    ax.imshow(image, interpolation="nearest", **kwargs)
    ax.set_axis_on()
    ax.set_xticks([])
    ax.set_yticks([])


def filters_figure(tiles: np.ndarray, title: str) -> Any:
    """Tiles [n, kh, kw, 3 or 1] in [0, 1], one panel each."""
    rows, cols = grid_shape(len(tiles))
    fig, axes = _grid_figure(rows, cols, title, panel=0.8)
    for ax, tile, i in zip(axes.flat, tiles, range(len(tiles))):
        _show(ax, tile, vmin=0.0, vmax=1.0)
        ax.set_title(str(i), fontsize=6, pad=1)
    return fig


def features_figure(image: np.ndarray, layers: list[dict[str, Any]], title: str) -> Any:
    """One row per layer: the input image, then its strongest channels, each titled with the layer's
    resolution and receptive field."""
    cols = 1 + max(len(layer["channels"]) for layer in layers)
    fig, axes = _grid_figure(len(layers), cols, title)
    for row, layer in zip(axes, layers):
        _show(row[0], image)
        row[0].set_title("input", fontsize=7, pad=2)
        h, w = layer["output_shape"][:2]
        rf = layer["receptive_field"]
        for ax, ch, fmap in zip(row[1:], layer["channels"], layer["maps"]):
            _show(ax, np.asarray(fmap), cmap="viridis")
            ax.set_title(f"{layer['layer']} #{ch}\n{h}x{w}, RF {rf}", fontsize=6, pad=2)
    return fig


def cam_figure(image: np.ndarray, cam: np.ndarray, title: str) -> Any:
    """Three panels: the image, the class activation map, the map over the image."""
    fig, axes = _grid_figure(1, 3, title, panel=2.2)
    ax_img, ax_cam, ax_over = axes[0]
    _show(ax_img, image)
    ax_img.set_title("input", fontsize=8)
    _show(ax_cam, cam, cmap="jet", vmin=0.0, vmax=max(float(cam.max()), 1e-12))
    ax_cam.set_title("Grad-CAM", fontsize=8)
    gray = image.mean(axis=-1) if image.ndim == 3 else image
    _show(ax_over, gray, cmap="gray")
    ax_over.imshow(cam, cmap="jet", alpha=0.45, interpolation="bilinear", vmin=0.0,
                   vmax=max(float(cam.max()), 1e-12))
    ax_over.set_title("overlay", fontsize=8)
    return fig
