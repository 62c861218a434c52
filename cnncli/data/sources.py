"""Dataset sources. Each reads local files only (nothing is downloaded) and returns SourceData.

A source's files live in `data.path`, else in `$CNN_DATA_DIR/<source>`. When they are not
there, the error names the directory, the exact files expected and where to obtain them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cnncli.config import DataConfig
from cnncli.data.dataset import SourceData
from cnncli.errors import DataError

DATA_DIR_ENV = "CNN_DATA_DIR"

# (image size, channels, classes) fixed by each source's format; None where the files decide.
_NATIVE = {
    "digits": (8, 1, 10),
    "mnist": (28, 1, 10), "fashion_mnist": (28, 1, 10), "kmnist": (28, 1, 10),
    "cifar10": (32, 3, 10), "cifar100": (32, 3, 100),
}


def expected_shape(cfg: DataConfig) -> tuple[int | None, int | None, int | None]:
    """(image size, channels, classes) that prepare_dataset will produce, known without reading files.

    None for what only the files can tell (a folder's classes, an npz archive's arrays).
    """
    from cnncli.data.pipeline import DEFAULT_IMAGE_SIZE

    size, channels, classes = _NATIVE.get(cfg.source, (None, None, None))
    if cfg.source == "cifar100" and cfg.label == "coarse":
        classes = 20
    elif cfg.source == "synthetic":
        size, channels, classes = cfg.image_size or 32, cfg.channels or 3, cfg.num_classes
    elif cfg.source == "folder":
        channels = 3
    size = cfg.image_size or DEFAULT_IMAGE_SIZE.get(cfg.source) or size
    return size, cfg.channels or channels, classes


def source_location(cfg: DataConfig) -> Path | None:
    """Where the source's files should be: `data.path`, else `$CNN_DATA_DIR/<source>`, else None."""
    if cfg.path:
        return Path(cfg.path).expanduser()
    root = os.environ.get(DATA_DIR_ENV)
    if root:
        return Path(root).expanduser() / cfg.source
    return None


def missing_dataset(source: str, where: Path | None, expected: str, how: str) -> DataError:
    """The error for absent files: where we looked, what we expected there, how to get it."""
    if where is None:
        return DataError(
            f"{source}: no dataset location: set data.path (or {DATA_DIR_ENV}, read as ${DATA_DIR_ENV}/{source}) "
            f"to a folder holding {expected}; {how}")
    return DataError(f"{source}: dataset not found in {where}: expected {expected}; {how} and place them in {where}")


def load_digits() -> SourceData:
    """scikit-learn's bundled 8x8 digits (1,797 images, values 0..16) as uint8 0..255."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # [N, 8, 8, 1]
    labels = bunch.target.astype(np.int32)
    names = [str(int(t)) for t in bunch.target_names]
    return SourceData((images, labels), None, None, names, "scikit-learn digits (8x8 grayscale)")


def load_synthetic(cfg: DataConfig) -> SourceData:
    """Random uint8 images with random labels: for benchmarks and smoke tests."""
    size = cfg.image_size or 32
    channels = cfg.channels or 3
    rng = np.random.default_rng(cfg.split_seed)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
        return x, rng.integers(0, cfg.num_classes, size=n).astype(np.int32)

    names = [f"class_{i}" for i in range(cfg.num_classes)]
    return SourceData(make(cfg.num_train), None, make(cfg.num_test), names, "synthetic random images")


def load_source(cfg: DataConfig) -> SourceData:
    """Load the configured source."""
    if cfg.source == "digits":
        return load_digits()
    if cfg.source == "synthetic":
        return load_synthetic(cfg)
    if cfg.source in ("mnist", "fashion_mnist", "kmnist"):
        from cnncli.data.idx import load_mnist_family

        return load_mnist_family(cfg.source, source_location(cfg))
    if cfg.source in ("cifar10", "cifar100"):
        from cnncli.data.cifar import load_cifar

        return load_cifar(cfg.source, source_location(cfg), label=cfg.label)
    if cfg.source == "npz":
        from cnncli.data.npz import load_npz

        return load_npz(source_location(cfg))
    if cfg.source == "folder":
        from cnncli.data.folder import load_folder

        return load_folder(source_location(cfg), skip_corrupt=cfg.skip_corrupt)
    raise DataError(f"data source {cfg.source!r} is not available in this build")
