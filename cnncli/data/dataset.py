"""In-memory datasets: uint8 NHWC images and int32 labels per split."""

from __future__ import annotations

import dataclasses

import numpy as np

from cnncli.errors import DataError


@dataclasses.dataclass
class SourceData:
    """What a source loader returns: whatever splits the source ships, unprocessed.

    Images are uint8 [N, H, W, C] (all the same size) or, for file sources, a list of
    file paths; labels are int32 [N]. `val`/`test` are None when the source has none.
    """

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray] | None
    test: tuple[np.ndarray, np.ndarray] | None
    class_names: list[str]
    description: str = ""


@dataclasses.dataclass
class Dataset:
    """Prepared splits at the model's input size and channels, plus normalisation stats."""

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

    @property
    def image_shape(self) -> tuple[int, int, int]:
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


def check_labels(y: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """Labels as int32, refusing values outside [0, num_classes)."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{where}: labels must be a 1-D array, got shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{where}: labels must lie in [0, {num_classes - 1}], found {int(y.min())}..{int(y.max())}")
    return y.astype(np.int32)
