"""A NumPy .npz archive: x_train, y_train, x_test, y_test (and optional x_val, y_val, class_names).

Images are uint8 [N, H, W, C] with C 1 or 3, or [N, H, W] grayscale. The archive is opened
with allow_pickle=False, so it cannot carry code.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cnncli.config.schema import MAX_CLASSES
from cnncli.data.dataset import SourceData, check_labels
from cnncli.data.locate import missing_dataset, source_location
from cnncli.errors import DataError

if TYPE_CHECKING:
    from cnncli.config import DataConfig

_REQUIRED = ("x_train", "y_train", "x_test", "y_test")


def _locate(where: Path | None) -> Path:
    expected = "a .npz file with arrays x_train, y_train, x_test, y_test (optional x_val, y_val, class_names)"
    how = "write one with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
    if where is not None and where.is_dir():
        found = sorted(where.glob("*.npz"))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise DataError(f"npz: {where} holds {len(found)} .npz files; set data.path to one of them")
    if where is None or not where.is_file():
        raise missing_dataset("npz", where, expected, how)
    return where


def _images(x: np.ndarray, key: str, path: Path) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]  # [N, H, W] grayscale
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(f"{path}: '{key}' must be [N, H, W] or [N, H, W, C] with C 1 or 3 (channels last), "
                        f"got shape {x.shape}")
    if x.dtype != np.uint8:
        if x.dtype.kind in "iu" and (x.size == 0 or (x.min() >= 0 and x.max() <= 255)):
            return x.astype(np.uint8)
        raise DataError(f"{path}: '{key}' must hold uint8 pixels 0..255, got {x.dtype}"
                        + (" (scale float images with (x * 255).round().astype('uint8'))" if x.dtype.kind == "f"
                           else ""))
    return np.ascontiguousarray(x)


def _class_names(names: np.ndarray, path: Path) -> list[str]:
    """The 'class_names' array as strings: text (numpy str) or UTF-8 bytes, nothing else."""
    if names.dtype.kind not in "US" or names.size == 0:
        raise DataError(f"{path}: 'class_names' must be a non-empty array of strings, got {names.dtype} "
                        f"{names.shape}")
    out = []
    for i, n in enumerate(names.reshape(-1).tolist()):
        if isinstance(n, bytes):
            try:
                n = n.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{path}: 'class_names'[{i}] is not UTF-8 text ({n[:20]!r})") from None
        out.append(n)
    return out


def load_npz(where: Path | None) -> SourceData:
    """Read the archive; class names default to '0'..'K-1' for K = highest label + 1."""
    path = _locate(where)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz archive of plain arrays ({exc})") from None
    missing = [k for k in _REQUIRED if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing arrays {', '.join(missing)} (found {', '.join(sorted(arrays)) or 'none'})")
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise DataError(f"{path}: give both x_val and y_val, or neither")
    splits = {}
    for split in ("train", "val", "test"):
        if f"x_{split}" not in arrays:
            continue
        x = _images(arrays[f"x_{split}"], f"x_{split}", path)
        if min(x.shape[:3]) == 0:
            raise DataError(f"{path}: 'x_{split}' holds no images (shape {x.shape}); every split needs at least one")
        y = arrays[f"y_{split}"]
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{path}: 'y_{split}' must be {len(x)} integer labels, got {y.dtype} {y.shape}")
        splits[split] = (x, check_labels(y, MAX_CLASSES, f"{path} 'y_{split}'").astype(np.int64))
    if "class_names" in arrays:
        names = _class_names(arrays["class_names"], path)
    else:
        names = [str(i) for i in range(max(int(y.max()) for _, y in splits.values()) + 1)]
    for split, (_, y) in splits.items():
        check_labels(y, len(names), f"{path} 'y_{split}' (class_names lists {len(names)} classes)")
    h, w, c = splits["train"][0].shape[1:]
    return SourceData(splits["train"], splits.get("val"), splits["test"], names,
                      f"npz archive {path.name} ({h}x{w}x{c})", path=str(path))


def load_npz_source(cfg: DataConfig) -> SourceData:
    """The `npz` source: the archive at data.path (or the one .npz file in that folder)."""
    return load_npz(source_location(cfg))
