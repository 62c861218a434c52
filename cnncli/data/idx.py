"""The IDX format (MNIST, Fashion-MNIST, KMNIST), raw or gzip-compressed.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values in row-major order.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cnncli.data.dataset import SourceData, check_labels
from cnncli.data.locate import missing_dataset, source_location
from cnncli.errors import DataError

if TYPE_CHECKING:
    from cnncli.config import DataConfig

_IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

_FILES = {  # split -> (images, labels), named as distributed
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
    # KMNIST's classmap: the hiragana o, ki, su, tsu, na, ha, ma, ya, re, wo (romanised so any font shows them)
    "kmnist": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
}

_WHERE_TO_GET = {
    "mnist": "download the four IDX files from the MNIST site (yann.lecun.com/exdb/mnist or a mirror)",
    "fashion_mnist": "download the four IDX files from github.com/zalandoresearch/fashion-mnist (data/fashion)",
    "kmnist": "download the four IDX files (*-ubyte.gz) from github.com/rois-codh/kmnist",
}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (raw, or gzip when the name ends in .gz) into a numpy array."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header truncated: {ndim} dimensions need a {header}-byte header, the file "
                        f"holds {len(raw)} bytes")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(dims) * dtype.itemsize  # Python ints: a hostile header cannot wrap around
    if len(raw) - header != expected:
        raise DataError(f"{path}: the IDX header promises shape {tuple(dims)} ({expected} bytes) but the file holds "
                        f"{len(raw) - header} bytes (truncated or corrupt)")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims)


def find_idx_file(directory: Path, stem: str) -> Path | None:
    """The file for `stem`, accepting .gz and the common '.idx' spelling (train-images.idx3-ubyte)."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def load_mnist_family(source: str, directory: Path | None) -> SourceData:
    """MNIST, Fashion-MNIST or KMNIST from the four IDX files in `directory`."""
    expected = ", ".join(n for pair in _FILES.values() for n in pair) + " (raw or .gz)"
    if directory is None or not directory.is_dir():
        raise missing_dataset(source, directory, expected, _WHERE_TO_GET[source])
    splits = {}
    for split, stems in _FILES.items():
        paths = [find_idx_file(directory, s) for s in stems]
        missing = [s for s, p in zip(stems, paths) if p is None]
        if missing:
            raise missing_dataset(source, directory, expected + f" (missing: {', '.join(missing)})",
                                  _WHERE_TO_GET[source])
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(f"{paths[0]}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
        if min(images.shape) == 0:
            raise DataError(f"{paths[0]}: holds no pixels: its header gives {images.shape[0]} images of "
                            f"{images.shape[1]}x{images.shape[2]}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(f"{paths[1]}: expected {len(images)} labels to match {paths[0].name}, got shape "
                            f"{labels.shape}")
        labels = check_labels(labels, len(_CLASS_NAMES[source]), f"{paths[1]} (IDX type {labels.dtype.name})")
        splits[split] = (np.ascontiguousarray(images[..., None]), labels)
    h, w = splits["train"][0].shape[1:3]
    return SourceData(splits["train"], None, splits["test"], list(_CLASS_NAMES[source]),
                      f"{source} IDX files ({h}x{w} grayscale)", path=str(directory))


def load_idx_source(cfg: DataConfig) -> SourceData:
    """The `mnist`, `fashion_mnist` or `kmnist` source, from its configured location."""
    return load_mnist_family(cfg.source, source_location(cfg))
