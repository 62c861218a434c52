"""A labelled grid of training images before and after the training augmentation (matplotlib)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnncli.config import DataConfig
from cnncli.data.dataset import Dataset
from cnncli.errors import DataError, one_line


def check_grid_path(out: Path) -> Path:
    """`--grid FILE` as given, refused up front (before any data is read) unless it names an image file
    matplotlib can write: not a directory, with a known format suffix."""
    from matplotlib.backend_bases import FigureCanvasBase

    out = Path(out)
    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    if out.is_dir():
        raise DataError(f"--grid {out} is a directory; give the image file to write, e.g. {out / 'grid.png'}")
    if out.exists() and not out.is_file():
        raise DataError(f"--grid {out} exists and is not a regular file; give the image file to write")
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in formats:
        what = f"an unknown format '.{suffix}'" if suffix else "no format suffix"
        raise DataError(f"--grid {out} has {what}: name it *.png (or {', '.join(f for f in formats if f != 'png')})")
    return out


def sample_images(data: Dataset, indices: np.ndarray, num_workers: int = 0) -> np.ndarray:
    """uint8 [n, H, W, C] training images, decoding them first for a file-backed dataset."""
    if not data.file_backed:
        return data.x_train[indices]
    from cnncli.data.pipeline import host_loader

    return next(iter(host_loader(data, "train", num_workers=num_workers).iterate([indices])))[0]


def augmented(images: np.ndarray, cfg: DataConfig, mean, std, seed: int = 0, size: int | None = None) -> np.ndarray:
    """The training augmentation (with a fixed key), un-normalised back to [0, 1] floats for display."""
    import jax
    import jax.numpy as jnp

    from cnncli.data.augment import augment_train

    m, s = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    x = augment_train(jax.random.key(seed), jnp.asarray(images), cfg.augment, m, s, size)
    return np.clip(np.asarray(x * s + m), 0.0, 1.0)


def save_augmentation_grid(data: Dataset, cfg: DataConfig, out: Path, samples: int = 16, seed: int = 0) -> Path:
    """Write a PNG: `samples` seeded training images, each shown as loaded and as augmented for training."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = min(samples, len(data.y_train))
    if n < 1:
        raise DataError("the training split is empty: nothing to show")
    idx = np.sort(np.random.default_rng(seed).choice(len(data.y_train), n, replace=False))
    before = sample_images(data, idx, cfg.num_workers)
    after = augmented(before, cfg, data.mean, data.std, seed, data.image_shape[0])
    cols = min(8, n)
    pairs = -(-n // cols)
    fig = Figure(figsize=(1.6 * cols, 3.4 * pairs))
    FigureCanvasAgg(fig)
    gray = before.shape[-1] == 1
    for k in range(n):
        r, c = divmod(k, cols)
        name = data.class_names[int(data.y_train[idx[k]])]
        for row, img, tag in ((2 * r, before[k] / 255.0, "loaded"), (2 * r + 1, after[k], "augmented")):
            ax = fig.add_subplot(2 * pairs, cols, row * cols + c + 1)
            ax.imshow(img[..., 0] if gray else img, cmap="gray" if gray else None, vmin=0.0, vmax=1.0,
                      interpolation="nearest")
            ax.set_title(f"{name[:14]}\n{tag}" if tag == "loaded" else tag, fontsize=7)
            ax.axis("off")
    fig.suptitle(f"{data.source}: training images as loaded and after augmentation (seed {seed})", fontsize=9)
    fig.tight_layout()
    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=100)
    except OSError as exc:
        raise DataError(f"cannot write the sample grid to {out}: {one_line(exc)}") from None
    return Path(out)
