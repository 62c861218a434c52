"""Loading a source: the table entry's loader (`cnncli.data.catalog`), plus the two sources that
need no files: scikit-learn's embedded digits and synthetic random images.

Every source reads local files only (nothing is downloaded) and returns SourceData.
"""

from __future__ import annotations

import importlib

import numpy as np

from cnncli.config import DataConfig
from cnncli.data.catalog import expected_shape, get_source
from cnncli.data.dataset import SourceData

__all__ = ["expected_shape", "load_digits", "load_source", "load_synthetic"]


def load_digits(cfg: DataConfig | None = None) -> SourceData:
    """scikit-learn's bundled 8x8 digits (1,797 images, values 0..16) as uint8 0..255."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # [N, 8, 8, 1]
    labels = bunch.target.astype(np.int32)
    names = [str(int(t)) for t in bunch.target_names]
    return SourceData((images, labels), None, None, names, "scikit-learn digits (8x8 grayscale)")


def load_synthetic(cfg: DataConfig) -> SourceData:
    """Random uint8 images with random labels: for benchmarks and smoke tests."""
    size, channels, num_classes = expected_shape(cfg)
    rng = np.random.default_rng(cfg.split_seed)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
        return x, rng.integers(0, num_classes, size=n).astype(np.int32)

    names = [f"class_{i}" for i in range(num_classes)]
    return SourceData(make(cfg.num_train), None, make(cfg.num_test), names, "synthetic random images")


def load_source(cfg: DataConfig) -> SourceData:
    """Load the configured source with its table entry's loader."""
    module, _, function = get_source(cfg.source).loader.partition(":")
    return getattr(importlib.import_module(module), function)(cfg)
