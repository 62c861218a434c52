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
from cnncli.show.subject import Subject, check_memory, prepare_image

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


def grad_cams(model: Any, x: Any, path: tuple, target: type, classes: Any = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(maps at the layer's resolution [B, h, w], logits [B, K], classes used [B]) for images x [B, H, W, C].

    `classes[i]` is the class of image i's map (None, or -1 for an image: its predicted class).
    One compiled forward and backward pass for the whole batch: in evaluation mode the images do
    not interact, so the gradient of the sum of their class scores is each image's own gradient.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(model)
    n = int(x.shape[0])
    wanted = jnp.full((n,), -1, jnp.int32) if classes is None else jnp.asarray(classes, jnp.int32).reshape(n)

    def run(st, init, images):
        m = nnx.merge(graphdef, st)
        return nnx.capture(lambda mm, v: mm(v), nnx.Perturbation, nnx.Intermediate, init=init)(m, images)

    @jax.jit
    def compute(st, wanted, images):
        logits, perturbations, values = run(st, None, images)
        chosen = jnp.where(wanted < 0, jnp.argmax(logits, axis=1), wanted)
        score = lambda p: jnp.take_along_axis(run(st, p, images)[0], chosen[:, None], axis=1).sum()  # noqa: E731
        grads = jax.grad(score)(perturbations)
        act = dict(values.flat_state())[(*path, _VALUE)].get_value()
        act = act[-1] if isinstance(act, tuple) else act
        grad = dict(grads.flat_state())[(*path, _PERTURBATION)].get_value()
        if act.ndim != 4:
            raise ConfigError("Grad-CAM needs a layer with a feature map (H x W x C output)")
        a, g = act.astype(jnp.float32), grad.astype(jnp.float32)
        weights = g.mean(axis=(1, 2))
        return jax.nn.relu(jnp.einsum("bhwc,bc->bhw", a, weights)), logits, chosen

    with _perturbed(target):
        cams, logits, chosen = compute(state, wanted, x)
    return np.asarray(cams, np.float64), np.asarray(logits, np.float64), np.asarray(chosen, np.int64)


def grad_cam(model: Any, x: Any, path: tuple, target: type, class_index: int | None
             ) -> tuple[np.ndarray, np.ndarray, int]:
    """(map at the layer's resolution [h, w], logits [K], class used) for one image x [1, H, W, C]."""
    cams, logits, chosen = grad_cams(model, x, path, target, None if class_index is None else [class_index])
    return cams[0], logits[0], int(chosen[0])


def upsample(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a non-negative map (convex weights: the result stays non-negative)."""
    import jax

    out = np.asarray(jax.image.resize(cam.astype(np.float32), size, "linear"), np.float64)
    return np.maximum(out, 0.0)  # rounding only


def show_cams(subject: Subject, images: list[str | Path], *, class_index: int | None = None,
              layer: str | None = None) -> list[tuple[Any, dict[str, Any]]]:
    """[(figure, numbers)] per image: Grad-CAM of its predicted class (or `class_index`), in one batch."""
    import jax.numpy as jnp

    if class_index is not None and not 0 <= class_index < subject.num_classes:
        raise ConfigError(f"--class must be between 0 and {subject.num_classes - 1}, got {class_index}")
    rows, info = layer_table(subject.model, subject.input_shape)
    check_memory(subject, rows, "cam", images=len(images))
    prepared = [prepare_image(subject, image) for image in images]
    name, path, mod = resolve(subject.model, layer or last_feature_layer(rows))
    x = jnp.concatenate([p[1] for p in prepared])
    cams, all_logits, chosen = grad_cams(subject.model, x, path, type(mod),
                                         None if class_index is None else [class_index] * len(images))
    field = info.get(name)
    return [_cam_picture(subject, image, fitted, cam, logits, int(c), name, field)
            for image, (fitted, _), cam, logits, c in zip(images, prepared, cams, all_logits, chosen)]


def _cam_picture(subject: Subject, image: str | Path, fitted: np.ndarray, cam: np.ndarray, logits: np.ndarray,
                 c: int, name: str, field: Any) -> tuple[Any, dict[str, Any]]:
    h, w = subject.input_shape[:2]
    full = upsample(cam, (h, w))
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    top = int(np.argmax(probs))
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


def show_cam(subject: Subject, image: str | Path, *, class_index: int | None = None,
             layer: str | None = None) -> tuple[Any, dict[str, Any]]:
    """(figure, numbers): Grad-CAM of the predicted class (or `class_index`) over the image."""
    return show_cams(subject, [image], class_index=class_index, layer=layer)[0]
