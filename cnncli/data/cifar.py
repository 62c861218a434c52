"""CIFAR-10 and CIFAR-100, from either the binary or the Python distribution.

Binary records are a label byte (CIFAR-100: coarse then fine) followed by 3,072 pixel bytes:
the 32x32 red plane, then green, then blue, each row-major. The Python distribution pickles
dicts whose 'data' holds the same 3,072 bytes per row; it is read with a restricted
unpickler (`cnncli.data.safe_pickle`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cnncli.data.dataset import SourceData, check_labels
from cnncli.data.locate import missing_dataset, source_location
from cnncli.data.safe_pickle import load_pickle, plain_keys
from cnncli.errors import DataError, one_line

if TYPE_CHECKING:
    from cnncli.config import DataConfig

_PIXELS = 3 * 32 * 32
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# Per source and format: the folder name the archive extracts to, the train and test files, the names file.
_LAYOUT = {
    ("cifar10", "binary"): ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"],
                            "batches.meta.txt"),
    ("cifar10", "python"): ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                            "batches.meta"),
    ("cifar100", "binary"): ("cifar-100-binary", ["train.bin"], ["test.bin"], "fine_label_names.txt"),
    ("cifar100", "python"): ("cifar-100-python", ["train"], ["test"], "meta"),
}
_ARCHIVES = {"cifar10": ("cifar-10-binary.tar.gz", "cifar-10-python.tar.gz"),
             "cifar100": ("cifar-100-binary.tar.gz", "cifar-100-python.tar.gz")}


def _find(source: str, directory: Path) -> tuple[str, Path] | None:
    """(format, folder) of the first complete distribution in `directory` or its extracted sub-folder."""
    for fmt in ("binary", "python"):  # binary first: it needs no unpickling
        sub, train, test, _ = _LAYOUT[(source, fmt)]
        for folder in (directory, directory / sub):
            if all((folder / f).is_file() for f in train + test):
                return fmt, folder
    return None


def _expected(source: str) -> str:
    parts = []
    for fmt in ("binary", "python"):
        sub, train, test, names = _LAYOUT[(source, fmt)]
        parts.append(f"{', '.join(train + test)} ({fmt}, optionally inside {sub}/)")
    return " or ".join(parts)


def read_binary(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Records of a CIFAR binary file -> (uint8 [N, 32, 32, 3], uint8 [N, label_bytes])."""
    try:
        raw = np.frombuffer(path.read_bytes(), np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    record = label_bytes + _PIXELS
    if raw.size == 0 or raw.size % record:
        raise DataError(f"{path}: {raw.size} bytes is not a whole number of {record}-byte CIFAR records "
                        "(truncated, or the other CIFAR variant)")
    rows = raw.reshape(-1, record)
    images = rows[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), rows[:, :label_bytes]


def _read_names(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {one_line(exc)}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: the class names are not UTF-8 text (byte {exc.start}: "
                        f"{exc.object[exc.start:exc.start + 1].hex()})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _rows_to_images(data, path: Path) -> np.ndarray:
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        shape = getattr(data, "shape", type(data).__name__)
        raise DataError(f"{path}: 'data' must be a uint8 array of shape [N, {_PIXELS}], got {shape}")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _read_python(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = plain_keys(load_pickle(path))
    if not isinstance(batch, dict) or "data" not in batch or label_key not in batch:
        found = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{path}: expected a dict with 'data' and '{label_key}', found {found}")
    images = _rows_to_images(batch["data"], path)
    try:
        labels = np.asarray(batch[label_key])
    except (ValueError, TypeError):  # ragged nested lists
        raise DataError(f"{path}: '{label_key}' must be a list of {len(images)} integers") from None
    if labels.shape != (len(images),):
        raise DataError(f"{path}: '{label_key}' has shape {labels.shape}, expected ({len(images)},)")
    return images, labels


def _python_names(path: Path, key: str) -> list[str] | None:
    if not path.is_file():
        return None
    meta = plain_keys(load_pickle(path, encoding="bytes"))  # Python 2 str -> bytes, decoded strictly below
    names = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(names, list):
        raise DataError(f"{path}: expected a dict with a list '{key}'")
    out = []
    for i, n in enumerate(names):
        if isinstance(n, bytes):
            try:
                n = n.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{path}: '{key}'[{i}] is not UTF-8 text ({n[:20]!r})") from None
        if not isinstance(n, str):
            raise DataError(f"{path}: '{key}'[{i}] must be a string, got {type(n).__name__}")
        out.append(n)
    return out


def load_cifar(source: str, directory: Path | None, label: str = "fine") -> SourceData:
    """CIFAR-10 or CIFAR-100 (`label`: 'fine' 100 classes or 'coarse' 20 superclasses)."""
    binary_tar, python_tar = _ARCHIVES[source]
    how = (f"download {binary_tar} or {python_tar} from www.cs.toronto.edu/~kriz/cifar.html, extract it")
    found = _find(source, directory) if directory is not None and directory.is_dir() else None
    if found is None:
        raise missing_dataset(source, directory, _expected(source), how)
    fmt, folder = found
    _, train_files, test_files, names_file = _LAYOUT[(source, fmt)]
    coarse = source == "cifar100" and label == "coarse"
    num_classes = 10 if source == "cifar10" else (20 if coarse else 100)

    def read(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = []
        for name in files:
            if fmt == "binary":
                images, labels = read_binary(folder / name, 1 if source == "cifar10" else 2)
                labels = labels[:, 0 if source == "cifar10" or coarse else 1]
                where = str(folder / name) + ("" if source == "cifar10" else f" ({label} label bytes)")
            else:
                key = "labels" if source == "cifar10" else ("coarse_labels" if coarse else "fine_labels")
                images, labels = _read_python(folder / name, key)
                where = f"{folder / name} '{key}'"
            parts.append((images, check_labels(labels, num_classes, where)))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    if fmt == "binary":
        names_path = folder / ("coarse_label_names.txt" if coarse else names_file)
        names = _read_names(names_path)
    else:
        names_path = folder / names_file
        names = _python_names(names_path, "label_names" if source == "cifar10" else
                              ("coarse_label_names" if coarse else "fine_label_names"))
    if names is None:
        names = CIFAR10_NAMES if source == "cifar10" else [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise DataError(f"{names_path}: lists {len(names)} class names, expected {num_classes}")
    what = f"{source} {fmt}" + (f" ({label} labels)" if source == "cifar100" else "")
    return SourceData(read(train_files), None, read(test_files), names, what + " (32x32 RGB)", path=str(folder))


def load_cifar_source(cfg: DataConfig) -> SourceData:
    """The `cifar10` or `cifar100` source (with data.label's label set), from its configured location."""
    return load_cifar(cfg.source, source_location(cfg), label=cfg.label)
