"""Loading a source: the table entry's loader (`cnncli.data.catalog`), plus the two sources that
need no files: scikit-learn's embedded digits and synthetic random images.

Every source reads local files only (nothing is downloaded) and returns SourceData.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import numpy as np

from cnncli.config import DataConfig
from cnncli.data.catalog import expected_shape, get_source
from cnncli.data.dataset import SourceData

__all__ = ["expected_shape", "load_digits", "load_source", "load_synthetic"]


def _digits_table() -> np.ndarray:
    """scikit-learn's digits as its [1797, 65] table (64 pixel values 0..16, then the label).

    Read straight from the CSV file scikit-learn ships (`sklearn/datasets/data/digits.csv.gz`),
    without importing scikit-learn: that import (SciPy with it) was 0.9 s of the quickstart's
    time to its first step. Where the file is not where that layout puts it, scikit-learn's own
    `load_digits` reads it."""
    import gzip

    spec = importlib.util.find_spec("sklearn")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as f:
                return np.loadtxt(f, delimiter=",")
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    return np.concatenate([bunch.data, bunch.target[:, None]], axis=1)


def load_digits(cfg: DataConfig | None = None) -> SourceData:
    """scikit-learn's bundled 8x8 digits (1,797 images, values 0..16) as uint8 0..255."""
    table = _digits_table()
    images = np.round(table[:, :64].reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)[..., None]  # [N, 8, 8, 1]
    labels = table[:, 64].astype(np.int32)
    names = [str(i) for i in range(10)]
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
