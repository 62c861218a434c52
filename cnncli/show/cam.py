"""`cnn show cam`: Grad-CAM (Selvaraju et al. 2017) -- where the model looked for a class.

For the last conv stage's output A (default; any feature-map layer with --layer) and the
class score y_c (the logit), each channel's weight is the spatial mean of dy_c/dA_k, and
the map is ReLU(sum_k weight_k A_k): non-negative, at the layer's resolution, then
upsampled to the image (bilinear, which keeps it non-negative).

The gradient with respect to an intermediate output uses flax's perturbations: while the
map is computed, the chosen module's class adds `Module.perturb` (a zero-valued variable
added to its output) and `Module.sow` of the output to its `__call__`; `nnx.capture` with
`init=` then makes the perturbation an input that `jax.grad` differentiates. The class is
restored afterwards.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.errors import ConfigError
from cnncli.show.figures import cam_figure
from cnncli.show.layers import last_feature_layer, layer_table, resolve
from cnncli.show.subject import Subject, prepare_image

_VALUE, _PERTURBATION = "show_value", "show_perturbation"  # distinct: captures share one key space


@contextlib.contextmanager
def _perturbed(cls: type):
    """Make every instance of `cls` sow and perturb its output while the block runs."""
    from flax import nnx

    own = "__call__" in cls.__dict__
    original = cls.__call__

    def call(self, *args, **kwargs):
        y = original(self, *args, **kwargs)
        self.sow(nnx.Intermediate, _VALUE, y)
        return self.perturb(_PERTURBATION, y)

    cls.__call__ = call
    try:
        yield
    finally:
        if own:
            cls.__call__ = original
        else:
            del cls.__call__


def grad_cam(model: Any, x: Any, path: tuple, target: type, class_index: int | None
             ) -> tuple[np.ndarray, np.ndarray, int]:
    """(map at the layer's resolution [h, w], logits [K], class used) for one image x [1, H, W, C]."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(model)

    def run(init):
        m = nnx.merge(graphdef, state)
        return nnx.capture(lambda mm, v: mm(v), nnx.Perturbation, nnx.Intermediate, init=init)(m, x)

    with _perturbed(target):
        logits, perturbations, values = run(None)
        logits = np.asarray(logits[0], np.float64)
        c = int(np.argmax(logits)) if class_index is None else class_index
        grads = jax.grad(lambda p: run(p)[0][0, c])(perturbations)
    act = dict(values.flat_state())[(*path, _VALUE)].get_value()
    act = act[-1] if isinstance(act, tuple) else act
    grad = dict(grads.flat_state())[(*path, _PERTURBATION)].get_value()
    a, g = jnp.asarray(act[0], jnp.float32), jnp.asarray(grad[0], jnp.float32)
    if a.ndim != 3:
        raise ConfigError("Grad-CAM needs a layer with a feature map (H x W x C output)")
    weights = g.mean(axis=(0, 1))
    cam = jax.nn.relu(jnp.einsum("hwc,c->hw", a, weights))
    return np.asarray(cam, np.float64), logits, c


def upsample(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a non-negative map (convex weights: the result stays non-negative)."""
    import jax

    out = np.asarray(jax.image.resize(cam.astype(np.float32), size, "linear"), np.float64)
    return np.maximum(out, 0.0)  # rounding only


def show_cam(subject: Subject, image: str | Path, *, class_index: int | None = None,
             layer: str | None = None) -> tuple[Any, dict[str, Any]]:
    """(figure, numbers): Grad-CAM of the predicted class (or `class_index`) over the image."""
    if class_index is not None and not 0 <= class_index < subject.num_classes:
        raise ConfigError(f"--class must be between 0 and {subject.num_classes - 1}, got {class_index}")
    fitted, x = prepare_image(subject, image)
    rows, info = layer_table(subject.model, subject.input_shape)
    name, path, mod = resolve(subject.model, layer or last_feature_layer(rows))
    cam, logits, c = grad_cam(subject.model, x, path, type(mod), class_index)
    h, w = subject.input_shape[:2]
    full = upsample(cam, (h, w))
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    top = int(np.argmax(probs))
    field = info.get(name)
    title = (f"{subject.name} ({subject.source}) on {Path(image).name}: Grad-CAM of {subject.class_name(c)} "
             f"(p={probs[c]:.2f}; predicted {subject.class_name(top)})\nat {name} "
             f"{cam.shape[0]}x{cam.shape[1]}" + (f", RF {field.receptive_field}" if field else ""))
    fig = cam_figure(fitted, full, title)
    data = {"model": subject.name, "source": subject.source, "image": str(image), "layer": name,
            "layer_resolution": list(cam.shape), "receptive_field": field.receptive_field if field else None,
            "class": {"index": c, "class": subject.class_name(c), "probability": float(probs[c])},
            "predicted": {"index": top, "class": subject.class_name(top), "probability": float(probs[top])},
            "grid": [1, 3], "figure_inches": [float(v) for v in fig.get_size_inches()],
            "cam_max": float(full.max()), "cam_layer": np.round(cam, 6).tolist(), "cam": np.round(full, 6).tolist()}
    return fig, data
