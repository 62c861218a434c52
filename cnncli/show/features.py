"""`cnn show features`: an image's feature maps at chosen layers, low level to high level.

Per layer, the k channels with the largest mean activation over the map are shown, each
panel titled with the layer's resolution and receptive field (cnncli.summary.receptive):
early maps are sharp and local, late ones coarse, each unit seeing most of the image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cnncli.errors import ConfigError
from cnncli.show.figures import features_figure
from cnncli.show.layers import capture_outputs, default_feature_layers, layer_table, resolve
from cnncli.show.subject import Subject, check_memory, prepare_image


def strongest_channels(fmap: np.ndarray, k: int) -> list[int]:
    """Indices of the k channels of [H, W, C] with the largest mean, strongest first (ties: lower index)."""
    strength = fmap.reshape(-1, fmap.shape[-1]).mean(axis=0)
    return [int(c) for c in np.argsort(-strength, kind="stable")[:k]]


def show_features(subject: Subject, image: str | Path, *, layers: list[str] | None = None,
                  top_k: int = 8) -> tuple[Any, dict[str, Any]]:
    """(figure, numbers): the `top_k` strongest feature maps of each layer (default: the first conv, then
    the last pool or block at each resolution)."""
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    rows, info = layer_table(subject.model, subject.input_shape)
    check_memory(subject, rows, "features")
    fitted, x = prepare_image(subject, image)
    resolved = [resolve(subject.model, n) for n in (layers or default_feature_layers(rows))]
    logits, outs = capture_outputs(subject.model, x, [p for _, p, _ in resolved])
    panels = []
    for (name, _, _), out in zip(resolved, outs):
        fmap = np.asarray(out[0], np.float32)
        if fmap.ndim != 3:
            raise ConfigError(f"{name} outputs a vector of {fmap.shape[-1]}, not a feature map; choose a "
                              "conv, pool or block layer")
        channels = strongest_channels(fmap, top_k)
        field = info.get(name)
        panels.append({"layer": name, "output_shape": list(fmap.shape),
                       "receptive_field": field.receptive_field if field else None,
                       "effective_stride": field.effective_stride if field else None,
                       "channels": channels, "channel_means": [float(fmap[..., c].mean()) for c in channels],
                       "maps": [np.round(fmap[..., c], 5).tolist() for c in channels]})
    probs = np.asarray(_softmax(np.asarray(logits[0], np.float64)))
    top = int(np.argmax(probs))
    title = (f"{subject.name} ({subject.source}) on {Path(image).name}: predicted {subject.class_name(top)} "
             f"({probs[top]:.0%}); strongest {top_k} channels per layer")
    fig = features_figure(fitted, panels, title)
    data = {"model": subject.name, "source": subject.source, "image": str(image),
            "input_shape": list(subject.input_shape), "predicted": {"index": top, "class": subject.class_name(top),
                                                                    "probability": float(probs[top])},
            "grid": [len(panels), 1 + max(len(p["channels"]) for p in panels)],
            "figure_inches": [float(v) for v in fig.get_size_inches()], "layers": panels}
    return fig, data


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()
