"""Datasets: per split, uint8 NHWC images (in memory) or image file paths (file-backed), and int32 labels."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from cnncli.errors import DataError


@dataclasses.dataclass
class SourceData:
    """What a source loader returns: whatever splits the source ships, unprocessed.

    Images are uint8 [N, H, W, C] (all the same size) or, for file sources, a 1-D string
    array of file paths; labels are int32 [N]. `val`/`test` are None when the source has none.
    `path` is where the files were read from; `notes` are things the user should hear about
    (skipped corrupt files, ignored files).
    """

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray] | None
    test: tuple[np.ndarray, np.ndarray] | None
    class_names: list[str]
    description: str = ""
    path: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    packed: Any = None  # `packed` source: the opened cnncli.data.packed.PackedStore; splits hold row numbers

    @property
    def file_backed(self) -> bool:
        return self.packed is not None or is_path_array(self.train[0])


@dataclasses.dataclass
class Dataset:
    """Prepared splits at the model's input size and channels, plus normalisation stats.

    In-memory: x_* are uint8 [N, H, W, C]. File-backed (`file_backed`): x_* are 1-D string
    arrays of image paths, decoded to `image_shape` by `cnncli.data.files.FileBatchLoader`.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    mean: list[float]  # per channel, in [0, 1] pixel units
    std: list[float]
    source: str
    split_info: dict  # how the splits were made (seed, held-out indices), saved in the run dir
    description: str = ""
    path: str | None = None  # where the source was read from (None: embedded or generated)
    notes: list[str] = dataclasses.field(default_factory=list)
    decoded_shape: tuple[int, int, int] | None = None  # file-backed only: (size, size, channels)
    stats_from: str = "train"  # how mean/std were obtained: "train", "sample of N", "config", "none"
    packed: Any = None  # `packed` source: the PackedStore whose records x_* number
    stored_shape: tuple[int, int, int] | None = None  # `packed`: the batches' (side, side, channels)

    @property
    def file_backed(self) -> bool:
        """True when the splits are loaded batch by batch on the host (image files, or a pack's records)
        rather than held as pixels."""
        return self.packed is not None or is_path_array(self.x_train)

    @property
    def batch_shape(self) -> tuple[int, int, int]:
        """The (H, W, C) of the uint8 batches the step receives: a pack's stored side, which the step
        crops/resizes to `image_shape` on the device; otherwise `image_shape` itself."""
        return tuple(int(v) for v in self.stored_shape) if self.stored_shape else self.image_shape

    @property
    def image_shape(self) -> tuple[int, int, int]:
        if self.decoded_shape is not None:
            return tuple(int(v) for v in self.decoded_shape)  # type: ignore[return-value]
        return tuple(int(v) for v in self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split {name!r}: expected train, val or test")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}

    def class_counts(self, name: str) -> list[int]:
        """Examples per class in one split."""
        return np.bincount(self.split(name)[1], minlength=self.num_classes).tolist()


def is_path_array(x: np.ndarray) -> bool:
    """A split that holds file paths (strings) rather than decoded pixels."""
    return isinstance(x, np.ndarray) and x.ndim == 1 and x.dtype.kind in ("U", "S", "O")


def check_labels(y, num_classes: int, where: str) -> np.ndarray:
    """Labels as int32, refusing anything but integers in [0, num_classes).

    Floats are refused even when integral (3.0): a float label file is a sign of the wrong
    file or column, and truncating 3.7 to class 3 would train on wrong labels without a word.
    The range is checked before the cast, so a huge integer cannot wrap into range.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{where}: labels must be a 1-D array, got shape {y.shape}")
    if y.dtype.kind not in "iu":
        raise DataError(f"{where}: labels must be integers, got {_kind_name(y)}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{where}: labels must lie in [0, {num_classes - 1}], found {int(y.min())}..{int(y.max())}")
    return y.astype(np.int32)


def _kind_name(y: np.ndarray) -> str:
    """What a non-integer label array holds, in words, with an example value."""
    kinds = {"f": "floats", "b": "booleans", "U": "strings", "S": "byte strings", "O": "Python objects",
             "c": "complex numbers"}
    what = kinds.get(y.dtype.kind, str(y.dtype))
    if not y.size or y.dtype.kind not in "fUS":
        return what
    first = y.reshape(-1)[0].item()
    return f"{what} (e.g. {first:g})" if y.dtype.kind == "f" else f"{what} (e.g. {first!r})"
