"""`cnn data pack`: a config's dataset written once into a pack (`cnncli.data.packed` reads it).

Every split as the config prepares it (its split assignment, class names), each image stored as
a `side` x `side` square: the centre square of an image file (what the `folder` source trains
on, at a higher resolution), or an in-memory source's images at their prepared size.

Writing is atomic and resumable. Everything goes into `DIR.tmp-<key>` next to DIR, where the key
is a hash of what is being packed; shards of SHARD_IMAGES images are written to a temporary
name, renamed, then recorded by a small sidecar; an interrupted pack rerun with the same config
keeps the shards already recorded. The manifest is written last, the sidecars removed, and the
directory renamed to DIR: a directory named DIR is always a whole pack.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cnncli.atomic import atomic_path, leftover_temps, write_text_atomic
from cnncli.data.packed import FORMAT, MANIFEST, SPLITS, VERSION, WRITER_OPTIONS, file_crc32
from cnncli.data.pipeline import prepare_dataset
from cnncli.errors import DataError

if TYPE_CHECKING:
    from cnncli.config import DataConfig
    from cnncli.data.dataset import Dataset

SHARD_IMAGES = 1024  # images per ArrayRecord file: the unit of resumption
DECODE_BATCH = 64

Progress = Callable[[str, int, int], None]  # (split, images done, images in the split)


def _encode(image: np.ndarray, image_format: str, quality: int) -> bytes:
    if image_format == "raw":
        return image.tobytes()
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


class _Images:
    """The stored squares of one split, batch by batch, with the rows that could not be decoded left out."""

    def __init__(self, data: Dataset, split: str, side: int, workers: int, skip_corrupt: bool):
        self.x, self.y = data.split(split)
        self.files = data.file_backed
        self.dropped: list[str] = []  # files the scan could open but not decode (data.skip_corrupt)
        if self.files:
            from cnncli.data.files import FileBatchLoader

            self.loader = FileBatchLoader(self.x, self.y, image_size=side, channels=data.image_shape[2],
                                          num_workers=workers, skip_corrupt=skip_corrupt)

    def batches(self, rows: list[np.ndarray]):
        """For each index vector: (uint8 images, int32 labels) of its decodable rows, in order."""
        if not self.files:
            for idx in rows:
                yield self.x[idx], self.y[idx]
            return
        seen = 0
        for idx, (images, labels) in zip(rows, self.loader.iterate(rows)):
            keep = np.ones(len(idx), bool)
            if len(self.loader.corrupt_files) > seen:
                bad = set(self.loader.corrupt_files[seen:])
                seen = len(self.loader.corrupt_files)
                keep = np.array([str(self.x[i]) not in bad for i in idx])
                self.dropped += sorted(bad)
            yield images[keep], labels[keep]


def _pack_split(stage: Path, split: str, images: _Images, n: int, fmt: str, quality: int,
                progress: Progress | None) -> None:
    """Every shard of one split not yet recorded in `stage`."""
    from array_record.python.array_record_module import ArrayRecordWriter

    shards = [np.arange(s, min(s + SHARD_IMAGES, n)) for s in range(0, n, SHARD_IMAGES)]
    todo = [k for k in range(len(shards)) if not (stage / f"{split}-{k:05d}.json").is_file()]
    done = sum(len(shards[k]) for k in range(len(shards)) if k not in todo)
    if progress:
        progress(split, done, n)
    rows = [shards[k][i : i + DECODE_BATCH] for k in todo for i in range(0, len(shards[k]), DECODE_BATCH)]
    batches = images.batches(rows)
    for k in todo:
        name = f"{split}-{k:05d}.array_record"
        labels, hist, dropped = [], np.zeros((0,), np.int64), len(images.dropped)
        with atomic_path(stage / name) as tmp:
            writer = ArrayRecordWriter(str(tmp), WRITER_OPTIONS)
            for _ in range(-(-len(shards[k]) // DECODE_BATCH)):
                x, y = next(batches)
                for image in x:
                    writer.write(_encode(np.ascontiguousarray(image), fmt, quality))
                labels += [int(v) for v in y]
                if split == "train":  # per-channel histograms: the exact mean/std of the stored pixels
                    h = np.stack([np.bincount(x[..., c].reshape(-1), minlength=256) for c in range(x.shape[-1])])
                    hist = h if hist.size == 0 else hist + h
                done += len(y)
                if progress:
                    progress(split, done, n)
            writer.close()
        write_text_atomic(stage / f"{split}-{k:05d}.json", json.dumps({
            "file": name, "count": len(labels), "bytes": (stage / name).stat().st_size,
            "crc32": file_crc32(stage / name), "labels": labels, "hist": hist.tolist(),
            "dropped": images.dropped[dropped:]}))


def _stats(hist: np.ndarray) -> tuple[list[float], list[float]]:
    values = np.arange(256) / 255.0
    mean, std = [], []
    for counts in hist.astype(np.float64):
        m = counts @ values / counts.sum()
        v = max(counts @ (values - m) ** 2 / counts.sum(), 0.0)
        mean.append(float(m))
        std.append(float(np.sqrt(v)) if v > 0 else 1.0)
    return mean, std


def _finish(stage: Path, head: dict, splits: dict[str, int]) -> dict:
    """Labels files and the manifest from the sidecars; the sidecars removed once the manifest is down."""
    manifest = dict(head, splits={})
    sidecars = []
    hist = None
    for split, n in splits.items():
        shards = []
        for k in range(-(-n // SHARD_IMAGES)):
            sidecars.append(stage / f"{split}-{k:05d}.json")
            shards.append(json.loads(sidecars[-1].read_text()))
        labels = np.asarray([v for s in shards for v in s["labels"]], np.int32)
        if split == "train":
            hist = sum(np.asarray(s["hist"], np.int64) for s in shards if s["hist"])
        np.save(stage / f"{split}-labels.npy", labels)
        lab = f"{split}-labels.npy"
        manifest["splits"][split] = {
            "count": int(len(labels)),
            "shards": [{k: s[k] for k in ("file", "count", "bytes", "crc32")} for s in shards],
            "labels": {"file": lab, "bytes": (stage / lab).stat().st_size, "crc32": file_crc32(stage / lab)}}
        if len(labels) == 0:
            raise DataError(f"pack: no image of the {split} split could be decoded")
    dropped = [f for p in sidecars for f in json.loads(p.read_text()).get("dropped", [])]
    if dropped:
        manifest["notes"] = [*manifest["notes"], f"left out {len(dropped)} image(s) that could not be decoded "
                             "(data.skip_corrupt): " + ", ".join(dropped[:5]) + (", ..." if len(dropped) > 5 else "")]
    manifest["mean"], manifest["std"] = _stats(hist)
    manifest["stats_from"] = f"all {manifest['splits']['train']['count']} training images as stored"
    write_text_atomic(stage / MANIFEST, json.dumps(manifest))
    for p in sidecars:
        p.unlink()
    return manifest


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):
        return False


def _busy_stage(out: Path) -> Path | None:
    """A staging folder of `out` that another packer holds (its lock taken), or None."""
    import fcntl

    for stage in sorted(out.parent.glob(f"{out.name}.tmp-*")):
        try:
            with open(stage / ".lock", "a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return stage
        except OSError:
            continue
    return None


def _content_digest(data) -> bytes:
    """A digest of what each split holds: file names with their size and mtime, or the arrays; the labels."""
    from cnncli.data.dataset import is_path_array

    digest = hashlib.sha256()
    for split in SPLITS:
        x, y = data.split(split)
        digest.update(split.encode() + np.ascontiguousarray(y).tobytes())
        if is_path_array(x):
            for path in x:
                try:
                    st = os.stat(path)
                    digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                except OSError:
                    digest.update(f"{path}\0missing\n".encode())
        else:
            digest.update(np.ascontiguousarray(x).tobytes())
    return digest.digest()


def pack_dataset(cfg: DataConfig, out: Path, *, side: int = 256, image_format: str = "raw", quality: int = 90,
                 workers: int | None = None, progress: Progress | None = None) -> dict:
    """Write the dataset of the (shape-resolved) `data:` config `cfg` as a pack at `out`; its manifest."""
    import fcntl

    if cfg.source == "packed":
        raise DataError("data.source is already packed: pack the config of the original dataset")
    if out.exists() or out.is_symlink():
        raise DataError(f"{out} exists; choose a new output directory (a pack is never written over)")
    if not out.parent.is_dir():
        raise DataError(f"{out.parent} is not a directory")
    if cfg.path and _inside(out, Path(cfg.path).expanduser()):
        raise DataError(f"{out} is inside the dataset it packs ({cfg.path}): write the pack elsewhere")
    busy = _busy_stage(out)
    if busy is not None:
        raise DataError(f"another `cnn data pack` is writing {busy} (a pack into {out}): wait for it, or stop it")
    # the mean/std are measured on the stored pixels below, not on a decoded sample here
    data = prepare_dataset(dataclasses.replace(cfg, mean=[0.0], std=[1.0]))
    channels = data.image_shape[2]
    if not data.file_backed:
        side = data.image_shape[0]  # in-memory sources: stored as prepared
    head = {"format": FORMAT, "version": VERSION, "source": cfg.source, "path": data.path,
            "description": data.description, "class_names": list(data.class_names), "image_size": data.image_shape[0],
            "side": side, "channels": channels, "image_format": image_format,
            "quality": quality if image_format == "jpeg" else None, "split_info": data.split_info,
            "notes": list(data.notes)}
    sizes = data.sizes()
    # The stage resumes only the same settings over the same images: the key covers every file's
    # name, size and mtime (or the decoded arrays) and every label, so a folder changed between an
    # interrupted pack and its rerun starts a new stage rather than mixing its old and new listings.
    key = hashlib.sha256(json.dumps([head, sizes], sort_keys=True).encode() + _content_digest(data)).hexdigest()[:12]
    stage = out.with_name(f"{out.name}.tmp-{key}")
    stage.mkdir(exist_ok=True)
    lock = open(stage / ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise DataError(f"another `cnn data pack` is writing {stage}") from None
    try:
        for leftover in leftover_temps(stage):  # a shard's temporary from a pack killed outright
            leftover.unlink()
        if not (stage / MANIFEST).is_file():
            nworkers = cfg.num_workers if workers is None else workers
            try:
                for split in SPLITS:
                    images = _Images(data, split, side, nworkers, cfg.skip_corrupt)
                    _pack_split(stage, split, images, sizes[split], image_format, quality, progress)
            except DataError:
                if not list(stage.glob("*.json")):  # nothing recorded to resume from: leave no trace
                    shutil.rmtree(stage)
                raise
            _finish(stage, head, sizes)
        (stage / ".lock").unlink()
        os.replace(stage, out)
    finally:
        lock.close()
    return json.loads((out / MANIFEST).read_text())
