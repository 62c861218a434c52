"""The `packed` source: a dataset written once by `cnn data pack` into ArrayRecord files, read by Grain.

A pack is a directory:

    manifest.json                 written last: format, stored side, channels, classes, splits, checksums
    <split>-NNNNN.array_record    one record per image (group_size 1, uncompressed: random access)
    <split>-labels.npy            int32 labels of the split, in record order

Every image is stored as the same `side` x `side` square (the centre square, as the `folder`
source sees it), `raw` (the uint8 pixels) or `jpeg` (encoded at the pack's quality). The host
only reads (raw) or decodes (jpeg) a record; the training step crops, resizes and flips on the
device (`cnncli.data.augment`), from the stored side to the model's input size.

Opening a pack checks every file against the manifest's size and CRC-32, so damage done after
packing is found before training starts, not in the middle of an epoch. The CRC-32 reads every
byte, so a file that passed it is remembered in cnn's cache (`packs/`, one small JSON per pack and
machine: the manifest's SHA-256 and each file's size, inode, device, mtime and ctime) and not
read again while none of these change; on a local POSIX file system any write to a file changes
its ctime, which no user tool can set back. Not caught once remembered: bytes changed beneath the
file system (bit rot, a raw device write), or a mount that makes ctimes up (some FUSE mounts).
Without a cache (none can be named, or it cannot be written) every open reads every file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import socket
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnncli.atomic import write_text_atomic
from cnncli.data.dataset import SourceData
from cnncli.data.files import FileBatchLoader
from cnncli.data.locate import missing_dataset, source_location
from cnncli import regular_file
from cnncli.errors import DataError
from cnncli.native.cache import cache_dir

if TYPE_CHECKING:
    from cnncli.config import DataConfig

MANIFEST = "manifest.json"
FORMAT = "cnn-pack"
VERSION = 1
SPLITS = ("train", "val", "test")
WRITER_OPTIONS = "group_size:1,uncompressed"  # one record per chunk: each image is read alone
MAX_SIDE = 4096  # the config's largest image side (cnncli.config.schema.MAX_IMAGE_SIDE)
_CLOCK_SLACK_NS = 2_000_000_000  # files changed this recently are not remembered as checked


def file_crc32(path: Path, chunk: int = 1 << 22) -> int:
    """CRC-32 of a file's bytes (zlib releases the GIL on large buffers: threads check files in parallel)."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


@dataclasses.dataclass(frozen=True)
class PackedStore:
    """An opened, verified pack: where it is and what its manifest says."""

    root: Path
    manifest: dict

    @property
    def side(self) -> int:
        return int(self.manifest["side"])

    @property
    def channels(self) -> int:
        return int(self.manifest["channels"])

    @property
    def image_format(self) -> str:
        return self.manifest["image_format"]

    def shard_paths(self, split: str) -> list[str]:
        return [str(self.root / s["file"]) for s in self.manifest["splits"][split]["shards"]]

    def labels(self, split: str) -> np.ndarray:
        return np.load(self.root / self.manifest["splits"][split]["labels"]["file"]).astype(np.int32)


def open_pack(root: Path, *, verify: bool = True) -> PackedStore:
    """The pack at `root`, its files checked against the manifest (sizes always, CRC-32 when `verify`)."""
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        staging = sorted(root.parent.glob(f"{root.name}.tmp-*")) if root.parent.is_dir() else []
        hint = (f"; {staging[0]} is an unfinished pack: rerun `cnn data pack` with the same config to finish it"
                if staging else "; write one with `cnn data pack CONFIG -o DIR`")
        what = f"{root} is not a pack (no {MANIFEST})" if root.exists() else f"no pack at {root}"
        raise DataError(f"packed: {what}{hint}")
    try:
        manifest_bytes = manifest_path.read_bytes()
        manifest = json.loads(manifest_bytes)
    except (OSError, ValueError, RecursionError) as exc:
        raise DataError(f"packed: cannot read {manifest_path} ({str(exc)[:200]})") from None
    if (not isinstance(manifest, dict) or manifest.get("format") != FORMAT
            or not _is_int(manifest.get("version"), VERSION, VERSION)):
        raise DataError(f"packed: {manifest_path} is not a {FORMAT} version {VERSION} manifest")
    problem = _manifest_problem(manifest)
    if problem is not None:
        raise DataError(f"packed: {manifest_path}: {problem}; the pack is damaged: pack it again")
    files = [(s["file"], s["bytes"], s["crc32"]) for split in manifest["splits"].values()
             for s in [*split["shards"], split["labels"]]]
    for name, size, _ in files:
        p = root / name
        if not p.is_file() or p.stat().st_size != size:
            raise DataError(f"packed: {p} is missing or not the size the manifest records ({size:,} bytes); "
                            "the pack is damaged: pack it again")
    if verify:
        _verify_checksums(root, hashlib.sha256(manifest_bytes).hexdigest(), files)
    return PackedStore(root, manifest)


def _is_int(v: Any, low: int, high: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _is_file_entry(e: Any) -> bool:
    return (isinstance(e, dict) and isinstance(e.get("file"), str) and e["file"] == Path(e["file"]).name
            and e["file"] not in ("", ".", "..") and "\0" not in e["file"] and _is_int(e.get("bytes"), 0, 2 ** 62)
            and _is_int(e.get("crc32"), 0, 2 ** 32 - 1))


def _manifest_problem(m: dict) -> str | None:
    """What in a manifest is not what `cnn data pack` writes (the first such field), or None."""
    channels = m.get("channels")
    if not _is_int(channels, 1, 3) or channels == 2:
        return f"channels is {channels!r}, not 1 or 3"
    if not _is_int(m.get("side"), 1, MAX_SIDE):
        return f"side is {m.get('side')!r}, not a size in pixels (1 to {MAX_SIDE})"
    if m.get("image_size") is not None and not _is_int(m.get("image_size"), 1, MAX_SIDE):
        return f"image_size is {m.get('image_size')!r}, not a size in pixels"
    if m.get("image_format") not in ("raw", "jpeg"):
        return f"image_format is {m.get('image_format')!r}, not raw or jpeg"
    names = m.get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return "class_names is not a non-empty list of names"
    for key in ("source", "stats_from"):
        if not isinstance(m.get(key), str):
            return f"{key} is {m.get(key)!r}, not text"
    if "description" not in m or (m["description"] is not None and not isinstance(m["description"], str)):
        return "description is missing or not text"
    if not isinstance(m.get("notes", []), list) or not all(isinstance(n, str) for n in m.get("notes", [])):
        return "notes is not a list of text"
    if not isinstance(m.get("split_info"), dict):
        return "split_info is not a mapping"
    for key in ("mean", "std"):
        v = m.get(key)
        if (not isinstance(v, list) or len(v) != channels
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
                or (key == "std" and min(v) <= 0)):
            return f"{key} is {v!r}, not {channels} finite value(s){' above 0' if key == 'std' else ''}"
    splits = m.get("splits")
    if not isinstance(splits, dict) or sorted(splits) != sorted(SPLITS):
        return f"splits does not hold exactly {', '.join(SPLITS)}"
    for name, split in splits.items():
        if (not isinstance(split, dict) or not _is_int(split.get("count"), 1, 2 ** 40)
                or not isinstance(split.get("shards"), list) or not split["shards"]
                or not all(_is_file_entry(e) and _is_int(e.get("count"), 0, 2 ** 40) for e in split["shards"])
                or not _is_file_entry(split.get("labels"))):
            return f"the {name} split's entry is not a count with shard and labels files"
        if sum(e["count"] for e in split["shards"]) != split["count"]:
            return f"the {name} split's shards do not add up to its count ({split['count']})"
    return None


def _file_key(path: Path) -> list[int]:
    """What any change to a file's bytes changes: size, inode, device, mtime and ctime (ns)."""
    st = path.stat()
    return [st.st_size, st.st_ino, st.st_dev, st.st_mtime_ns, st.st_ctime_ns]


def _seal_path(root: Path) -> Path | None:
    """This machine's seal of the pack at `root` (a cache folder shared by several machines, a home on
    NFS, holds one per machine: inodes and ctimes are each machine's view)."""
    folder = cache_dir("packs")
    if folder is None:
        return None
    key = f"{socket.gethostname()}\0{root.resolve()}"
    return folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def _read_seal(seal: Path | None, manifest_sha: str) -> dict:
    """{file name: key} of the files that passed their CRC-32 as they are now; {} when none did."""
    try:
        data = json.loads(regular_file.read_text(seal, DataError)) if seal is not None and seal.exists() else {}
    except (OSError, ValueError, DataError):  # not there, not a regular file, not JSON: no seal
        return {}
    if not isinstance(data, dict) or data.get("manifest_sha256") != manifest_sha or not isinstance(
            data.get("files"), dict):
        return {}
    return data["files"]


def _write_seal(seal: Path | None, root: Path, manifest_sha: str, keys: dict) -> None:
    """Remember that every file passed as it is now; this machine's seals of packs that are gone are removed.
    A cache that cannot be written costs the next open a full check, never an error."""
    if seal is None:
        return
    try:
        seal.parent.mkdir(parents=True, exist_ok=True)
        host = socket.gethostname()
        for other in seal.parent.glob("*.json"):
            if other != seal:
                try:
                    data = json.loads(regular_file.read_text(other, DataError))
                    if data["host"] == host and not (Path(data["root"]) / MANIFEST).is_file():
                        other.unlink()
                except (OSError, ValueError, KeyError, TypeError, DataError):  # never a FIFO's open: no wait
                    other.unlink(missing_ok=True)
        write_text_atomic(seal, json.dumps({"host": host, "root": str(root.resolve()), "manifest_sha256": manifest_sha,
                                            "files": keys}))
    except OSError:
        pass


def _verify_checksums(root: Path, manifest_sha: str, files: list[tuple[str, int, int]]) -> None:
    """Every file's CRC-32 against the manifest, except those unchanged since they last passed."""
    seal = _seal_path(root)
    passed = _read_seal(seal, manifest_sha)
    started = time.time_ns()
    keys = {name: _file_key(root / name) for name, _, _ in files}
    todo = [f for f in files if passed.get(f[0]) != keys[f[0]]]
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        crcs = list(pool.map(lambda f: file_crc32(root / f[0]), todo))
    for (name, _, expected), crc in zip(todo, crcs):
        if crc != expected:
            raise DataError(f"packed: {root / name} fails its checksum (CRC-32 {crc:08x}, manifest "
                            f"{expected:08x}); the pack is damaged: pack it again")
    if todo:
        # Remembered: the files whose key held while they were read and whose last change is older
        # than the file system's clock resolution could hide (a write in the same tick as the
        # reading would leave the key as it was): a newer file is simply read again next time.
        settled = started - _CLOCK_SLACK_NS
        sealed = {name: key for name, key in keys.items()
                  if key[4] < settled and _file_key(root / name) == key}
        if sealed:
            _write_seal(seal, root, manifest_sha, sealed)


def load_packed_source(cfg: DataConfig) -> SourceData:
    """The `packed` source: every split of the pack at `data.path`, as stored (no split is held out again)."""
    root = source_location(cfg)
    if root is None:
        raise missing_dataset("packed", root, f"a directory written by `cnn data pack` ({MANIFEST} and "
                              "*.array_record files)", "write it with `cnn data pack CONFIG -o DIR`")
    store = open_pack(root)
    m = store.manifest
    splits = {}
    for split in SPLITS:
        labels = _checked_labels(store, split)
        splits[split] = (np.arange(len(labels), dtype=np.int64), labels)
    desc = (f"pack of {m['description'] or m['source']} ({m['image_format']}, {store.side}x{store.side}x"
            f"{store.channels} stored)")
    return SourceData(splits["train"], splits["val"], splits["test"], list(m["class_names"]), desc,
                      path=str(root), notes=list(m.get("notes", [])), packed=store)


def _checked_labels(store: PackedStore, split: str) -> np.ndarray:
    """A split's labels, checked against the manifest (count, classes), and its first record against the
    stored shape: a pack whose parts disagree is refused here, before any run directory, not mid-epoch."""
    entry = store.manifest["splits"][split]
    where = store.root / entry["labels"]["file"]
    try:
        raw = np.load(where, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"packed: cannot read {where} ({str(exc)[:200]}); the pack is damaged: pack it again") from None
    n = len(store.manifest["class_names"])
    if raw.ndim != 1 or raw.dtype.kind not in "iu" or len(raw) != entry["count"] or (
            len(raw) and (raw.min() < 0 or raw.max() >= n)):
        raise DataError(f"packed: {where} does not hold {entry['count']} labels from 0 to {n - 1} as the manifest "
                        "says; the pack is damaged: pack it again")
    first = _RecordDecoder(store, split, raw.astype(np.int32))
    try:
        first(np.zeros(1, np.int64))
    except Exception as exc:  # noqa: BLE001 - a record that is not a stored image, whatever the decoder says
        raise DataError(f"packed: the first {split} record of {store.root} is not a {store.side}x{store.side}x"
                        f"{store.channels} {store.image_format} image ({str(exc)[:150]}); the pack is damaged: "
                        "pack it again") from None
    return raw.astype(np.int32)


class _RecordDecoder:
    """index vector -> (uint8 [B, side, side, C], int32 labels, no corrupt rows): reads records of one split."""

    def __init__(self, store: PackedStore, split: str, labels: np.ndarray):
        from grain.sources import ArrayRecordDataSource

        self.source = ArrayRecordDataSource(store.shard_paths(split))
        self.shape = (store.side, store.side, store.channels)
        self.jpeg = store.image_format == "jpeg"
        self.labels = labels

    def __call__(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = np.asarray(idx)
        out = np.empty((len(idx), *self.shape), np.uint8)
        for row, i in enumerate(idx):
            record = self.source[int(i)]
            if self.jpeg:
                decode_jpeg_into(record, out[row])
            else:
                out[row] = np.frombuffer(record, np.uint8).reshape(self.shape)
        return out, self.labels[idx], np.zeros(0, np.int64)


def decode_jpeg_into(record: bytes, out: np.ndarray) -> None:
    """A stored JPEG square decoded into `out` ([side, side, C])."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(record)) as im:
        arr = np.asarray(im)
    out[...] = arr[..., None] if arr.ndim == 2 else arr


class PackedBatchLoader(FileBatchLoader):
    """FileBatchLoader's Grain driver (workers, order, prefetch) over a pack's records instead of files.

    Its workers are threads of this process, not processes: a raw record is read and copied with
    the GIL released, and a worker process would hand every batch over through a fresh block of
    shared memory, which costs more than reading it (measured: 370 against 140 us per 256x256 image).
    """

    threads_not_processes = True

    def __init__(self, store: PackedStore, split: str, *, num_workers: int = 0, prefetch: int = 2):
        if num_workers < 0 or prefetch < 0:
            raise DataError(f"need num_workers >= 0 and prefetch >= 0, got {num_workers}, {prefetch}")
        self.paths = None  # nothing is ever corrupt: the pack was checked when opened
        self.num_workers, self.prefetch = num_workers, prefetch
        self.corrupt_files: list[str] = []
        self._decode = _RecordDecoder(store, split, store.labels(split))
