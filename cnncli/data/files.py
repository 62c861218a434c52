"""Decoding image files into fixed-size uint8 batches on the host, ahead of the training step.

Only decoding and resizing happen here; random augmentation stays on the device
(`cnncli.data.augment`) for every source. With `num_workers > 0` whole batches are decoded
in Grain worker processes (each worker takes every num_workers-th batch and Grain
interleaves them back in order), so the output never depends on the number of workers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import numpy as np

from cnncli.errors import DataError

# A plain iterable of index batches (not a sequence) is consumed in windows of about this
# many images, each decoded by a fresh Grain pipeline; pass a sequence to avoid the restarts.
WINDOW_IMAGES = 1 << 18


# PIL modes read as one channel when the caller does not say how many it wants
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def _open_converted(path, channels: int | None, draft_size: int | None = None):
    """The file as a loaded PIL image in mode "L" (channels 1) or "RGB" (channels 3; None: the file's
    own, 1 for GRAY_MODES); one-line DataError naming the file when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if channels is None:
                channels = 1 if im.mode in GRAY_MODES else 3
            mode = "RGB" if channels == 3 else "L"
            if draft_size is not None:  # JPEG only: let the decoder downscale by 1/2, 1/4 or 1/8, staying >= it
                im.draft(mode, (draft_size, draft_size))
            if im.mode.startswith("I;16"):  # 16-bit grayscale: keep the top 8 bits rather than clip
                im = Image.fromarray((np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8), "L")
            return im.convert(mode)
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory, expected an image file") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot read the image ({reason})") from None


def read_image(path, channels: int | None = None) -> np.ndarray:
    """One image file at its own size -> uint8 [H, W, C].

    C is `channels` (1 or 3), or when None the file's own: 1 for grayscale files, 3 otherwise.
    Any mode (palette, RGBA, CMYK, 16-bit, grayscale) is converted as `decode_image` does.
    """
    arr = np.asarray(_open_converted(path, channels), np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def decode_image(path: str, image_size: int, channels: int) -> np.ndarray:
    """One image file -> uint8 [image_size, image_size, channels]: what the file-backed loader feeds.

    The shorter side is resized to `image_size` (bilinear, antialiased), then the centre is
    cropped. Any mode (palette, RGBA, CMYK, 16-bit, grayscale) is converted to `channels`.
    Raises DataError naming the file when it cannot be decoded.
    """
    from PIL import Image

    img = _open_converted(path, channels, draft_size=image_size)
    w, h = img.size
    scale = image_size / min(w, h)
    new = (max(image_size, round(w * scale)), max(image_size, round(h * scale)))
    if new != (w, h):
        img = img.resize(new, Image.BILINEAR)
    left, top = (new[0] - image_size) // 2, (new[1] - image_size) // 2
    img = img.crop((left, top, left + image_size, top + image_size))
    arr = np.asarray(img, np.uint8)
    return arr[..., None] if channels == 1 else arr


class PathTable:
    """File paths packed into one byte buffer: cheap to pickle into worker processes."""

    def __init__(self, paths: Iterable[str]):
        encoded = [str(p).encode("utf-8", "surrogateescape") for p in paths]
        self.offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(e) for e in encoded], out=self.offsets[1:])
        self.blob = np.frombuffer(b"".join(encoded), np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8", "surrogateescape")


class _BatchDecoder:
    """index vector -> (uint8 images, int32 labels, dataset indices of the files that could not be decoded)."""

    def __init__(self, paths: PathTable, labels: np.ndarray, image_size: int, channels: int, skip_corrupt: bool):
        self.paths, self.labels = paths, labels
        self.image_size, self.channels, self.skip_corrupt = image_size, channels, skip_corrupt

    def __call__(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = np.asarray(idx)
        out = np.zeros((len(idx), self.image_size, self.image_size, self.channels), np.uint8)
        bad = []
        for row, i in enumerate(idx):
            try:
                out[row] = decode_image(self.paths[int(i)], self.image_size, self.channels)
            except DataError as exc:
                if not self.skip_corrupt:
                    raise DataError(f"{exc}; fix or remove it, or set data.skip_corrupt: true to skip unreadable "
                                    "images") from None
                bad.append(int(i))  # the row stays black; the loader records the file
        return out, self.labels[idx], np.asarray(bad, np.int64)


def _absl_flags_ready() -> None:
    """Grain's spawned workers read absl flags, which fail unless parsed; we are not an absl program."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _plain_copy(a) -> np.ndarray:
    """Copy an array out of a worker's shared-memory block and unlink the block now.

    Grain would unlink it later from a background thread, which at interpreter exit may
    never run (the resource tracker then warns about leaked shared memory).
    """
    out = np.array(a, copy=True)
    shm = getattr(a, "shm", None)
    if shm is not None and getattr(a, "_unlink_on_del", False):
        a._unlink_on_del = False  # its __del__ still closes the mapping
        try:
            shm.unlink()
        except FileNotFoundError:
            pass
    return out


def _is_sequence(x) -> bool:
    return hasattr(x, "__len__") and hasattr(x, "__getitem__")


class FileBatchLoader:
    """Decodes batches of image files (shorter side resized to `image_size`, centre-cropped).

    `corrupt_files` lists files that failed to decode during iteration when `skip_corrupt` is
    set (their rows are left black); without it, such a file raises DataError naming it.
    """

    def __init__(self, paths: np.ndarray, labels: np.ndarray, *, image_size: int, channels: int,
                 num_workers: int = 0, prefetch: int = 2, skip_corrupt: bool = False):
        labels = np.asarray(labels)
        if len(paths) != len(labels):
            raise DataError(f"{len(paths)} image paths but {len(labels)} labels")
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {channels}")
        if image_size < 1 or num_workers < 0 or prefetch < 0:
            raise DataError(f"need image_size >= 1, num_workers >= 0 and prefetch >= 0, got {image_size}, "
                            f"{num_workers}, {prefetch}")
        self.paths = PathTable(paths)
        self.num_workers, self.prefetch = num_workers, prefetch
        self.corrupt_files: list[str] = []
        self._decode = _BatchDecoder(self.paths, labels.astype(np.int32), image_size, channels, skip_corrupt)

    def iterate(self, index_batches: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """For each index vector (in order), yield (uint8 [B, image_size, image_size, channels], int32 [B]).

        Decoding runs ahead in Grain worker processes when num_workers > 0 (in the calling
        process, one thread ahead, when 0), keeping order. A sequence of index batches (a
        list, or `TrainIndexStream.batches(...)`) is read lazily by the workers themselves;
        any other iterable is consumed in windows of about WINDOW_IMAGES images.
        """
        if _is_sequence(index_batches):
            yield from self._run(index_batches)
            return
        it = iter(index_batches)
        while True:
            first = next(it, None)
            if first is None:
                return
            per_window = max(1, WINDOW_IMAGES // max(1, len(first)))
            yield from self._run([first, *itertools.islice(it, per_window - 1)])

    def _run(self, batches) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        import grain

        if len(batches) == 0:
            return
        ds = grain.MapDataset.source(batches).map(self._decode)
        workers = min(self.num_workers, len(batches))
        if workers == 0:
            threads = 1 if self.prefetch else 0
            ids = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=self.prefetch))
        else:
            _absl_flags_ready()
            ids = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)).mp_prefetch(
                grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=max(1, self.prefetch)))
        iterator = iter(ids)
        try:
            for element in iterator:
                images, labels, bad = (_plain_copy(a) for a in element)
                del element
                self.corrupt_files.extend(self.paths[int(i)] for i in bad)
                yield images, labels
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
