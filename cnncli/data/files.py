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

from cnncli import regular_file
from cnncli.errors import DataError, one_line

# A plain iterable of index batches (not a sequence) is consumed in windows of about this
# many images, each decoded by a fresh Grain pipeline; pass a sequence to avoid the restarts.
WINDOW_IMAGES = 1 << 18


# PIL modes read as one channel when the caller does not say how many it wants
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def _converted(im, channels: int | None, draft_size: int | None = None):
    """An open PIL image loaded in mode "L" (channels 1) or "RGB" (channels 3; None: the file's own,
    1 for GRAY_MODES). An image already in that mode is not copied."""
    from PIL import Image

    if channels is None:
        channels = 1 if im.mode in GRAY_MODES else 3
    mode = "RGB" if channels == 3 else "L"
    if draft_size is not None:  # JPEG only: let the decoder downscale by 1/2, 1/4 or 1/8, staying >= it
        im.draft(mode, (draft_size, draft_size))
    if im.mode.startswith("I;16"):  # 16-bit grayscale: keep the top 8 bits rather than clip
        im = Image.fromarray((np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8), "L")
    if im.mode == mode:
        im.load()
        return im
    return im.convert(mode)


def _read_failure(path, exc: Exception) -> DataError:
    """The one-line DataError for a file PIL could not read."""
    if isinstance(exc, FileNotFoundError):
        return DataError(f"image file not found: {path}")
    return DataError(f"{path}: cannot read the image ({one_line(exc)})")


def _with_image(path, channels: int | None, use, draft_size: int | None = None):
    """`use(image)` on the file opened and converted (see `_converted`), while it is open; one-line
    DataError naming the file when it cannot be read."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():  # a decompression-bomb warning is the folder scan's to report, once
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with regular_file.open_binary(path, DataError) as fh, Image.open(fh) as im:
                return use(_converted(im, channels, draft_size))
    except DataError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise _read_failure(path, exc) from None


def read_image(path, channels: int | None = None) -> np.ndarray:
    """One image file at its own size -> uint8 [H, W, C].

    C is `channels` (1 or 3), or when None the file's own: 1 for grayscale files, 3 otherwise.
    Any mode (palette, RGBA, CMYK, 16-bit, grayscale) is converted as `decode_image` does.
    """
    arr = _with_image(path, channels, lambda im: np.array(im, np.uint8))
    return arr[..., None] if arr.ndim == 2 else arr


def centre_square(img, size: int):
    """A PIL image's centre square (side = its shorter side) resized to size x size.

    One resampling pass over the square only (the box), never over the discarded margins:
    area averaging (BOX) when it shrinks, which is both the cheaper and the right filter for a
    reduction, and antialiased bilinear when it enlarges.
    """
    from PIL import Image

    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    if side == size:
        return img if w == h else img.crop((left, top, left + side, top + side))
    resample = Image.BOX if side > size else Image.BILINEAR
    return img.resize((size, size), resample, box=(left, top, left + side, top + side))


def decode_image(path: str, image_size: int, channels: int, out: np.ndarray | None = None) -> np.ndarray:
    """One image file -> uint8 [image_size, image_size, channels]: what the file-backed loader feeds.

    The centre square (shorter side) is resized to `image_size` (`centre_square`); a JPEG is
    first decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps the square at least
    `image_size` (PIL's draft: libjpeg-turbo's DCT-domain downscaling). Any mode (palette, RGBA,
    CMYK, 16-bit, grayscale) is converted to `channels`. Written into `out` when given (no extra
    copy). Raises DataError naming the file when it cannot be decoded.
    """
    def finish(img):
        arr = np.asarray(centre_square(img, image_size))
        arr = arr[..., None] if arr.ndim == 2 else arr
        if out is None:
            return np.array(arr, np.uint8)
        out[...] = arr
        return out

    return _with_image(path, channels, finish, draft_size=image_size)


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
        out = np.empty((len(idx), self.image_size, self.image_size, self.channels), np.uint8)
        bad = []
        for row, i in enumerate(idx):
            try:
                decode_image(self.paths[int(i)], self.image_size, self.channels, out=out[row])
            except DataError as exc:
                if not self.skip_corrupt:
                    raise DataError(f"{exc}; fix or remove it, or set data.skip_corrupt: true to skip unreadable "
                                    "images") from None
                out[row] = 0  # the row is black; the loader records the file
                bad.append(int(i))
        return out, self.labels[idx], np.asarray(bad, np.int64)


def _absl_flags_ready() -> None:
    """Grain's spawned workers read absl flags, which fail unless parsed; we are not an absl program."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _plain_copy(a) -> np.ndarray:
    """Copy an array out of a worker's shared-memory block and unlink the block now (an array made
    in this process is returned as it is).

    Grain would unlink it later from a background thread, which at interpreter exit may
    never run (the resource tracker then warns about leaked shared memory).
    """
    shm = getattr(a, "shm", None)
    if shm is None:
        return a
    out = np.array(a, copy=True)
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

    threads_not_processes = False  # workers are Grain processes (decoding holds the GIL)

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
        workers = min(self.num_workers, len(batches))
        ds = grain.MapDataset.source(batches).map(self._decode)
        if workers == 0 or self.threads_not_processes:
            threads = max(workers, 1 if self.prefetch else 0)
            ids = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                       prefetch_buffer_size=max(self.prefetch, threads)))
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
