"""From a source to prepared splits, and from splits to batches.

In-memory datasets live on the device as uint8 arrays; the host only produces index
batches: a seeded permutation per epoch for training (so batch k of a run is a pure
function of (seed, k) and a resumed run sees the same batches), and padded, masked
index batches for evaluation (every example counted exactly once). File-backed datasets
(`folder`) use the same index batches; `cnncli.data.files.FileBatchLoader` turns them into
pixels on the host.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cnncli.config import DataConfig
from cnncli.data.catalog import default_image_size
from cnncli.data.dataset import Dataset, SourceData, check_labels
from cnncli.data.files import FileBatchLoader
from cnncli.data.sources import load_source
from cnncli.errors import DataError

# File-backed mean/std are measured on at most this many decoded training images (a seeded sample).
STATS_SAMPLE = 2000


def _holdout(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split range(n) into (kept, held_out) with round(fraction * n) held out."""
    perm = rng.permutation(n)
    k = int(round(fraction * n))
    if k < 1 or k >= n:
        raise DataError(f"cannot hold out a fraction {fraction} of {n} examples")
    return np.sort(perm[k:]), np.sort(perm[:k])


def resize_images(x: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 NHWC images to size x size (bilinear, antialiased), chunked to bound memory."""
    import jax
    import jax.numpy as jnp

    if x.shape[1:3] == (size, size):
        return x
    out = np.empty((x.shape[0], size, size, x.shape[3]), np.uint8)
    resize = jax.jit(lambda b: jnp.clip(jnp.round(
        jax.image.resize(b.astype(jnp.float32), (b.shape[0], size, size, b.shape[3]), "linear")), 0, 255
    ).astype(jnp.uint8))
    for start in range(0, x.shape[0], 4096):
        out[start : start + 4096] = np.asarray(resize(x[start : start + 4096]))
    return out


def convert_channels(x: np.ndarray, channels: int | None) -> np.ndarray:
    """Grayscale <-> RGB (ITU-R 601 luma for RGB -> gray)."""
    if channels is None or x.shape[-1] == channels:
        return x
    if x.shape[-1] == 1 and channels == 3:
        return np.repeat(x, 3, axis=-1)
    if x.shape[-1] == 3 and channels == 1:
        gray = x.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(np.round(gray), 0, 255).astype(np.uint8)[..., None]
    raise DataError(f"cannot convert {x.shape[-1]}-channel images to {channels} channels")


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units.

    Computed from each channel's histogram of the 256 values: exact, and much faster than
    converting every pixel to float.
    """
    values = np.arange(256, dtype=np.float64) / 255.0
    mean, std = [], []
    for c in range(x.shape[-1]):
        counts = np.bincount(np.ascontiguousarray(x[..., c]).reshape(-1), minlength=256).astype(np.float64)
        n = counts.sum()
        m = counts @ values / n
        var = max(counts @ (values - m) ** 2 / n, 0.0)
        mean.append(float(m))
        std.append(float(np.sqrt(var)) if var > 0 else 1.0)
    return mean, std


def prepare_dataset(cfg: DataConfig, src: SourceData | None = None) -> Dataset:
    """Load the source, hold out the missing splits (seeded), convert size/channels, compute stats."""
    if src is None:
        src = load_source(cfg)
    if src.packed is not None:
        return _prepare_packed(cfg, src)
    x_train, y_train = src.train
    num_classes = len(src.class_names)
    rng = np.random.default_rng(cfg.split_seed)
    split_info: dict = {"split_seed": cfg.split_seed, "source_train_size": int(len(y_train))}
    if src.test is None:
        keep, held = _holdout(len(y_train), cfg.test_fraction, rng)
        split_info["test_indices"] = held.tolist()
        test = (x_train[held], y_train[held])
        x_train, y_train = x_train[keep], y_train[keep]
        base = keep
    else:
        test = src.test
        base = np.arange(len(y_train))
    if src.val is None:
        keep, held = _holdout(len(y_train), cfg.val_fraction, rng)
        split_info["val_indices"] = base[held].tolist()
        val = (x_train[held], y_train[held])
        x_train, y_train = x_train[keep], y_train[keep]
        base = base[keep]
    else:
        val = src.val
    split_info["train_indices"] = base.tolist()
    for name, (_, y) in (("train", (x_train, y_train)), ("val", val), ("test", test)):
        if len(y) == 0:  # an evaluation of nothing would fail only after the run directory exists
            raise DataError(f"{cfg.source} ({src.path or 'built in'}): the {name} split is empty; every split "
                            "needs at least one example")

    size = cfg.image_size or default_image_size(cfg.source)
    common = dict(class_names=list(src.class_names), source=cfg.source, split_info=split_info,
                  description=src.description, path=src.path, notes=list(src.notes))
    if src.file_backed:
        if size is None:
            raise DataError(f"{cfg.source}: image files come in any size; set data.image_size")
        return _prepare_file_backed(cfg, ((x_train, y_train), val, test), size, num_classes, common)
    splits = {}
    for name, (x, y) in (("train", (x_train, y_train)), ("val", val), ("test", test)):
        x = convert_channels(np.asarray(x), cfg.channels)
        if size is not None:
            x = resize_images(x, size)
        splits[name] = (x, check_labels(y, num_classes, f"{cfg.source} {name} split"))
    if len({splits[s][0].shape[1:] for s in splits}) != 1:
        raise DataError("train, val and test images differ in size or channels; set data.image_size")
    mean, std, stats_from = _normalisation(cfg, splits["train"][0].shape[-1], lambda: channel_stats(splits["train"][0]))
    return Dataset(*splits["train"], *splits["val"], *splits["test"], mean=mean, std=std, stats_from=stats_from,
                   **common)


def _normalisation(cfg: DataConfig, channels: int, measure) -> tuple[list[float], list[float], str]:
    """(mean, std, where they came from): configured values win; `measure()` is only called if needed."""
    if not cfg.normalize:
        return [0.0] * channels, [1.0] * channels, "none (data.normalize: false)"
    if cfg.mean is not None and cfg.std is not None:
        measured, how = None, "config"
    else:
        measured, how = measure(), "train"
    mean = _per_channel(cfg.mean, channels, "data.mean") if cfg.mean is not None else measured[0]
    std = _per_channel(cfg.std, channels, "data.std") if cfg.std is not None else measured[1]
    return mean, std, how


def _prepare_file_backed(cfg: DataConfig, parts, size: int, num_classes: int, common: dict) -> Dataset:
    """Splits of file paths; mean/std measured on a seeded sample of decoded training images."""
    channels = cfg.channels or 3
    splits = {}
    for name, (x, y) in zip(("train", "val", "test"), parts):
        splits[name] = (np.asarray(x), check_labels(y, num_classes, f"{cfg.source} {name} split"))
    n = len(splits["train"][1])
    sample = np.sort(np.random.default_rng([cfg.split_seed, 1]).permutation(n)[: min(n, STATS_SAMPLE)])

    def measure():
        return decoded_stats(splits["train"][0], sample, size, channels, cfg.num_workers, cfg.skip_corrupt)

    mean, std, how = _normalisation(cfg, channels, measure)
    if how == "train" and len(sample) < n:
        how = f"train (seeded sample of {len(sample)} images)"
    return Dataset(*splits["train"], *splits["val"], *splits["test"], mean=mean, std=std, stats_from=how,
                   decoded_shape=(size, size, channels), **common)


def _prepare_packed(cfg: DataConfig, src: SourceData) -> Dataset:
    """A pack's splits as stored (its split assignment is the one made when packing), trained at
    data.image_size or the size it was packed for; mean/std as measured when packing."""
    store = src.packed
    m = store.manifest
    channels = store.channels
    if cfg.channels is not None and cfg.channels != channels:
        raise DataError(f"packed: {src.path} stores {channels}-channel images but data.channels is {cfg.channels}; "
                        f"pack the dataset again with data.channels: {cfg.channels}")
    size = cfg.image_size or m.get("image_size") or store.side
    num_classes = len(src.class_names)
    splits = {name: (x, check_labels(y, num_classes, f"packed {name} split"))
              for name, (x, y) in zip(("train", "val", "test"), (src.train, src.val, src.test))}
    mean, std, how = _normalisation(cfg, channels, lambda: (m["mean"], m["std"]))
    if how == "train":
        how = f"train, measured when packing ({m['stats_from']})"
    return Dataset(*splits["train"], *splits["val"], *splits["test"], class_names=list(src.class_names),
                   mean=mean, std=std, source=cfg.source, split_info=dict(m["split_info"]),
                   description=src.description, path=src.path, notes=list(src.notes),
                   decoded_shape=(size, size, channels), stats_from=how, packed=store,
                   stored_shape=(store.side, store.side, channels))


def host_loader(data: Dataset, split: str, *, num_workers: int = 0, skip_corrupt: bool = False,
                prefetch: int = 2) -> FileBatchLoader:
    """The loader that turns index batches of a file-backed split into uint8 batches of `data.batch_shape`:
    the pack's records for `packed`, image files decoded to `image_shape` otherwise."""
    if data.packed is not None:
        from cnncli.data.packed import PackedBatchLoader

        return PackedBatchLoader(data.packed, split, num_workers=num_workers, prefetch=prefetch)
    x, y = data.split(split)
    size, _, channels = data.image_shape
    return FileBatchLoader(x, y, image_size=size, channels=channels, num_workers=num_workers, prefetch=prefetch,
                           skip_corrupt=skip_corrupt)


def decoded_stats(paths: np.ndarray, indices: np.ndarray, size: int, channels: int, num_workers: int = 0,
                  skip_corrupt: bool = False, batch_size: int = 64) -> tuple[list[float], list[float]]:
    """Per-channel mean/std (in [0, 1] units) of the decoded images `paths[indices]`, accumulated in float64.

    Files that fail to decode are left out of the statistics when `skip_corrupt` is set.
    """
    loader = FileBatchLoader(paths, np.zeros(len(paths), np.int32), image_size=size, channels=channels,
                             num_workers=num_workers, skip_corrupt=skip_corrupt)
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    total, total_sq, count = np.zeros(channels), np.zeros(channels), 0
    seen_corrupt = 0
    for idx, (images, _) in zip(batches, loader.iterate(batches)):
        if len(loader.corrupt_files) > seen_corrupt:  # their rows are black: leave them out
            bad = set(loader.corrupt_files[seen_corrupt:])
            seen_corrupt = len(loader.corrupt_files)
            images = images[[str(paths[i]) not in bad for i in idx]]
        flat = images.reshape(-1, channels).astype(np.float64) / 255.0
        total += flat.sum(axis=0)
        total_sq += (flat * flat).sum(axis=0)
        count += flat.shape[0]
    if count == 0:
        raise DataError("no training image could be decoded to measure the pixel mean/std")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    std = np.where(std > 0, std, 1.0)
    return [float(v) for v in mean], [float(v) for v in std]


def _per_channel(values: list[float], channels: int, key: str) -> list[float]:
    if len(values) == channels:
        return list(values)
    if len(values) == 1:
        return list(values) * channels
    raise DataError(f"'{key}' has {len(values)} values but the images have {channels} channels")


class TrainIndexStream:
    """Global index batches for training: permutation per epoch from (seed, epoch); last partial batch dropped."""

    def __init__(self, num_examples: int, batch_size: int, seed: int):
        if num_examples < batch_size:
            raise DataError(f"the training split has {num_examples} examples, fewer than train.batch_size={batch_size}")
        self.n, self.batch_size, self.seed = num_examples, batch_size, seed
        self.steps_per_epoch = num_examples // batch_size
        self._epoch, self._perm = -1, None

    def batch(self, step: int) -> np.ndarray:
        """Indices of the batch used at global step `step` (0-based)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n).astype(np.int32)
            self._epoch = epoch
        return self._perm[i * self.batch_size : (i + 1) * self.batch_size]

    def batches(self, start: int, stop: int) -> TrainBatches:
        """The batches of steps start..stop-1 as a lazy sequence (what FileBatchLoader workers read)."""
        return TrainBatches(TrainIndexStream(self.n, self.batch_size, self.seed), start, stop)


class TrainBatches(Sequence):
    """Random-access view of a TrainIndexStream over a step range; small to pickle into worker processes."""

    def __init__(self, stream: TrainIndexStream, start: int, stop: int):
        self.stream, self.start, self.stop = stream, start, max(start, stop)

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> np.ndarray:
        if isinstance(i, slice):
            raise TypeError("TrainBatches does not slice; index one step at a time")
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.stream.batch(self.start + i)


def eval_index_batches(num_examples: int, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(indices, mask) batches covering every example once; the last one padded with index 0, mask False."""
    batches = []
    for b in range(math.ceil(num_examples / batch_size)):
        idx = np.arange(b * batch_size, min((b + 1) * batch_size, num_examples), dtype=np.int32)
        mask = np.ones(batch_size, bool)
        if len(idx) < batch_size:
            mask[len(idx) :] = False
            idx = np.concatenate([idx, np.zeros(batch_size - len(idx), np.int32)])
        batches.append((idx, mask))
    return batches
