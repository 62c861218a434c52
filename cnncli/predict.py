"""`cnn predict`: classify image files with a trained model.

An image goes through what the eval pipeline does to a dataset image. For a model trained
on in-memory arrays (digits, MNIST, CIFAR, npz): decoded with PIL, converted to the model's
channels (cnncli.data.pipeline.convert_channels), resized so that its shorter side is the
model's input size (bilinear, antialiased, as cnncli.data.pipeline.resize_images) and
centre-cropped. For a model trained on an image folder (or a pack of one): cnncli.data.files.decode_image,
the folder loader's own decoding. Either way the uint8 result goes through the same compiled
evaluation step (uint8 -> /255 -> (x - mean) / std with data.json's stats).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.errors import ConfigError, DataError

# Up to this many times the crop's pixels, an image is resized whole and then cropped.
FULL_RESIZE_CROPS = 16


def fit_to_input(pixels: np.ndarray, size: int, channels: int) -> np.ndarray:
    """uint8 [H, W, C] -> [size, size, channels]: channel conversion, shorter side resized to `size`,
    centre crop.

    An image of extreme aspect ratio is not resized whole (1x20000 at 32 would be 32x640000 pixels;
    300000x1, 9.6 million rows, and XLA's resize weights grow with both sides): past FULL_RESIZE_CROPS
    crops' worth of pixels, only the crop is computed, by `jax.image.scale_and_translate` with the full
    resize's scale and the crop's offset as translation (the same pixels up to float rounding, +-1 in
    a few). Below it, `jax.image.resize` as the eval pipeline's resize_images, bit for bit."""
    import jax
    import jax.numpy as jnp

    from cnncli.data.pipeline import convert_channels

    x = convert_channels(pixels, channels)
    h, w = x.shape[:2]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    if (new_h, new_w) == (h, w):
        return np.ascontiguousarray(x[top : top + size, left : left + size])
    if new_h * new_w <= FULL_RESIZE_CROPS * size * size:
        resized = jax.image.resize(jnp.asarray(x, jnp.float32), (new_h, new_w, x.shape[2]), "linear")
        x = np.asarray(jnp.clip(jnp.round(resized), 0, 255).astype(jnp.uint8))
        return np.ascontiguousarray(x[top : top + size, left : left + size])
    crop = jax.image.scale_and_translate(
        jnp.asarray(x, jnp.float32), (size, size, x.shape[2]), (0, 1),
        jnp.asarray([new_h / h, new_w / w], jnp.float32), jnp.asarray([-top, -left], jnp.float32), "linear")
    return np.asarray(jnp.clip(jnp.round(crop), 0, 255).astype(jnp.uint8))


def prepare_images(images: Sequence[str | Path], size: int, channels: int, *, folder: bool,
                   pixels: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """uint8 [N, size, size, channels]: image files as a model of that input sees them.

    A model trained on an image folder gets exactly its loader's decoding; any other gets
    `fit_to_input` of the decoded file (channel conversion, shorter side resized, centre crop);
    `pixels` are the files already decoded by `read_image`, if the caller has them.
    """
    from cnncli.data.files import decode_image, read_image

    if folder:
        return np.stack([decode_image(str(f), size, channels) for f in images])
    if pixels is None:
        pixels = [read_image(f) for f in images]
    return np.stack([fit_to_input(p, size, channels) for p in pixels])


def predict_images(path: str | Path, images: Sequence[str | Path], *, top_k: int = 5, which: str = "best",
                   overrides: list[str] | None = None, tta: str | None = None,
                   batch_size: int | None = None, load=None) -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each image file:
    [{file, predictions: [{class, index, probability}, ...]}, ...] in the order given.

    `load(path, which, overrides) -> LoadedModel` replaces restoring a run's checkpoint, as in
    `cnncli.evaluate.evaluate_member`."""
    import jax.numpy as jnp

    from cnncli.distributed import make_mesh, replicate
    from cnncli.evaluate import load_checkpoint_model
    from cnncli.train.evaluator import Evaluator
    from cnncli.scores import log_softmax, mean_probabilities

    if not images:
        raise ConfigError("give at least one image file to classify")
    from cnncli import regular_file
    from cnncli.data.files import read_image

    for p in images:  # a FIFO would block the decoder's open forever, a device never end
        regular_file.check(p, DataError, "image")
    pixels = [read_image(p) for p in images]  # fail on a bad file before loading the model
    loaded = (load or load_checkpoint_model)(path, which, overrides)
    m = loaded.config.model
    if loaded.mean is None or loaded.std is None:
        raise DataError(f"{loaded.run_path / 'data.json'} is missing or has no mean/std; "
                        "cannot normalise images as in training")
    x = prepare_images(images, m.input_size, m.in_channels, folder=loaded.config.data.source in ("folder", "packed"),
                       pixels=pixels)
    mesh = make_mesh()
    n_dev = mesh.devices.size
    limit = batch_size or loaded.config.train.eval_batch_size or loaded.config.train.batch_size
    bs = -(-min(len(x), limit) // n_dev) * n_dev  # no more padding than the device count needs
    ev = Evaluator(loaded.parts, num_classes=m.num_classes, mean=loaded.mean, std=loaded.std, mesh=mesh,
                   batch_size=bs)
    params, stats = replicate(mesh, (loaded.params, loaded.batch_stats))
    views = [x] if tta is None else [x, np.ascontiguousarray(x[:, :, ::-1])]
    log_probs = mean_probabilities(
        [log_softmax(ev.logits(params, stats, replicate(mesh, jnp.asarray(v)), len(v))) for v in views])
    probs = np.exp(log_probs)
    names = list(loaded.class_names) + [f"class_{i}" for i in range(len(loaded.class_names), m.num_classes)]
    k = min(top_k, m.num_classes)
    out = []
    for file, p in zip(images, probs):
        order = np.argsort(-p, kind="stable")[:k]
        out.append({"file": str(file), "predictions": [
            {"class": names[i], "index": int(i), "probability": float(p[i])} for i in order]})
    return out
