"""An ImageFolder tree: path/train/<class>/*.jpg, path/val/<class>/... and optionally path/test/.

The source is file-backed: it returns file paths, not pixels; `cnncli.data.files` decodes
them batch by batch. Class names are the train sub-folder names, sorted. Every file's header
is opened once here, so unreadable files are found before training starts (with
`skip_corrupt` they are dropped and counted; otherwise the first one is an error).
"""

from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cnncli import regular_file
from cnncli.data.dataset import SourceData
from cnncli.data.locate import missing_dataset, source_location
from cnncli.errors import DataError

if TYPE_CHECKING:
    from cnncli.config import DataConfig

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_LAYOUT = "train/<class>/*.jpg|jpeg|png|bmp|webp and val/<class>/... (test/<class>/... optional)"


class _Large(str):
    """An image mode, from a file larger than PIL's decompression-bomb warning limit."""


def _probe(path: Path) -> str | Exception:
    """The image mode from the file's header (a `_Large` one past PIL's decompression-bomb warning
    limit: reported once in the scan's notes, not as PIL's raw warning), or the exception opening it raised."""
    from PIL import Image

    try:
        with regular_file.open_binary(path, DataError) as fh, Image.open(fh) as im:
            w, h = im.size
            limit = Image.MAX_IMAGE_PIXELS
            return _Large(im.mode) if limit is not None and w * h > limit else im.mode
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        return exc


def _scan_split(root: Path, split: str) -> tuple[dict[str, list[Path]], collections.Counter]:
    """{class: sorted image files} for one split folder, plus counts of ignored file extensions."""
    ignored: collections.Counter = collections.Counter()
    classes: dict[str, list[Path]] = {}
    stray = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            stray.append(entry.name)
            continue
        files = []
        for f in sorted(entry.rglob("*")):
            if f.name.startswith(".") or f.is_dir():
                continue
            if not f.is_file():  # a FIFO, socket or device (or a broken link): never opened
                ignored["(not a regular file)"] += 1
                continue
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(f)
            else:
                ignored[f.suffix.lower() or "(no extension)"] += 1
        if not files:
            raise DataError(f"folder: class folder {entry} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        classes[entry.name] = files
    if not classes:
        raise DataError(f"folder: {root} has no class sub-folders; expected {split}/<class>/<image files>"
                        + (f" (found files {', '.join(stray[:3])} directly in it)" if stray else ""))
    ignored.update(["(file outside a class folder)"] * len(stray))
    return classes, ignored


def load_folder(directory: Path | None, skip_corrupt: bool = False, threads: int = 8) -> SourceData:
    """Scan the tree into per-split arrays of file paths and int32 labels."""
    if directory is None or not (directory / "train").is_dir():
        raise missing_dataset("folder", directory, f"an ImageFolder tree: {_LAYOUT}",
                              "arrange your images one sub-folder per class")
    scanned = {}
    ignored: collections.Counter = collections.Counter()
    for split in ("train", "val", "test"):
        if (directory / split).is_dir():
            scanned[split], skipped = _scan_split(directory / split, split)
            ignored.update(skipped)
    class_names = sorted(scanned["train"])
    for split in ("val", "test"):
        if split in scanned and sorted(scanned[split]) != class_names:
            missing = sorted(set(class_names) - set(scanned[split]))
            extra = sorted(set(scanned[split]) - set(class_names))
            raise DataError(f"folder: the classes of {directory / split} differ from those of {directory / 'train'}"
                            + (f"; missing: {', '.join(missing)}" if missing else "")
                            + (f"; not in train: {', '.join(extra)}" if extra else ""))

    every = [f for split in scanned.values() for files in split.values() for f in files]
    import warnings

    from PIL import Image

    # header reads are I/O bound; PIL's raw decompression-bomb warning gives way to one note (filters are
    # process-wide, so set here, around the threads)
    with warnings.catch_warnings(), ThreadPoolExecutor(threads) as pool:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        probes = dict(zip(every, pool.map(_probe, every)))
    bad = [f for f, p in probes.items() if isinstance(p, Exception)]
    if bad and not skip_corrupt:
        raise DataError(f"{bad[0]}: cannot open image ({probes[bad[0]]}); fix or remove it, or set "
                        f"data.skip_corrupt: true to skip unreadable images ({len(bad)} found)")
    bad_set = set(bad)

    splits = {}
    for split, classes in scanned.items():
        paths, labels = [], []
        for label, name in enumerate(class_names):
            kept = [str(f) for f in classes[name] if f not in bad_set]
            if not kept:
                raise DataError(f"folder: every image in {directory / split / name} is unreadable")
            paths += kept
            labels += [label] * len(kept)
        splits[split] = (np.asarray(paths), np.asarray(labels, np.int32))

    notes = []
    if bad:
        notes.append(f"skipped {len(bad)} unreadable image(s) (data.skip_corrupt): "
                     + ", ".join(str(f) for f in bad[:5]) + (", ..." if len(bad) > 5 else ""))
    if ignored:
        notes.append("ignored files that are not images (" + ", ".join(IMAGE_EXTENSIONS) + "): "
                     + ", ".join(f"{n} {kind}" for kind, n in sorted(ignored.items())))
    large = [f for f, p in probes.items() if isinstance(p, _Large)]
    if large:
        notes.append(f"{len(large)} image(s) exceed PIL's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,} "
                     "pixels and are decoded anyway (check they are genuine): "
                     + ", ".join(str(f) for f in large[:3]) + (", ..." if len(large) > 3 else ""))
    modes = collections.Counter(str(p) for p in probes.values() if isinstance(p, str))
    if len(modes) > 1:
        notes.append("mixed image modes (" + ", ".join(f"{m}: {n}" for m, n in sorted(modes.items()))
                     + ") are converted to the configured channels")
    return SourceData(splits["train"], splits.get("val"), splits.get("test"), class_names,
                      f"image folder ({len(every) - len(bad)} files)", path=str(directory), notes=notes)


def load_folder_source(cfg: DataConfig) -> SourceData:
    """The `folder` source: the ImageFolder tree at its configured location."""
    return load_folder(source_location(cfg), skip_corrupt=cfg.skip_corrupt)
