"""Read a PyTorch state dict into numpy arrays without PyTorch: `.pth` (torch.save's zip) and `.safetensors`.

A `.pth` written by `torch.save` is a zip archive: `<name>/data.pkl` (a pickle of the object,
protocol 2), `<name>/data/<key>` (the raw bytes of each storage) and `<name>/byteorder`.
Ordinary unpickling can call any importable function, so a tampered file could run code.
The unpickler here (a cnncli.restricted_pickle.RestrictedUnpickler) resolves only the globals that
rebuilding tensors needs -- `torch._utils._rebuild_tensor_v2`, the typed storage classes,
`collections.OrderedDict` -- each to a local stand-in; every other global is refused before
anything is called, and nothing from torch is imported.
"""

from __future__ import annotations

import collections
import io
import math
import zipfile
from pathlib import Path

import numpy as np

from cnncli.errors import CheckpointError, one_line
from cnncli.restricted_pickle import Refused, RestrictedUnpickler


class _Malformed(Exception):
    """Sizes that do not add up: a view past its storage, a storage shorter than declared, a zip bomb."""


def _bfloat16() -> np.dtype:
    import ml_dtypes  # a jax dependency

    return np.dtype(ml_dtypes.bfloat16)


# torch's typed storage classes -> numpy dtype names (bfloat16 through ml_dtypes)
_STORAGES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool",
}


class _StorageType:
    """Stands in for `torch.FloatStorage` etc.: only its dtype is used."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _bfloat16() if _STORAGES[name] == "bfloat16" else np.dtype(_STORAGES[name])


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2: a strided, read-only view of a storage (no copy: however many
    tensors a file makes of its storages, they take no memory beyond the storages themselves).

    A tensor may not hold more elements than its storage: a stride-0 view of one element as 2^28
    would cost a gigabyte wherever it is copied."""
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise Refused("a tensor whose storage is not a saved storage")
    if not (isinstance(offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)
            and len(size) == len(stride) and len(size) <= 32
            and all(isinstance(v, int) and v >= 0 for v in size + stride)):
        raise Refused("a tensor with a malformed shape or stride")
    numel = math.prod(size)  # Python ints: no wrap-around
    if numel == 0:
        return np.zeros(size, storage.dtype)
    if numel > storage.size:
        raise _Malformed(f"a tensor of {numel:,} elements (shape {size}) views a storage of {storage.size:,}")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if offset < 0 or last >= storage.size:
        raise _Malformed(f"a tensor (offset {offset}, shape {size}, stride {stride}) reaches past the end of its "
                        f"storage of {storage.size:,} elements")
    item = storage.dtype.itemsize
    return np.ndarray(size, storage.dtype, buffer=storage, offset=offset * item, strides=[s * item for s in stride])


def _rebuild_parameter(data, requires_grad=False, hooks=None, *state):
    """torch._utils._rebuild_parameter (an nn.Parameter saved directly): its tensor."""
    if not isinstance(data, np.ndarray):
        raise Refused("a parameter that is not a tensor")
    return data


def _ordered_dict(*args):
    """collections.OrderedDict, called with at most a list of (key, value) pairs."""
    return collections.OrderedDict(*args)


_GLOBALS: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGES},
}


class TorchUnpickler(RestrictedUnpickler):
    """Admits containers, strings, numbers and tensors; storages are read from the zip archive."""

    allowed = _GLOBALS

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, big_endian: bool):
        super().__init__(file, encoding="utf-8")
        self._archive, self._prefix, self._big_endian = archive, prefix, big_endian
        self._storages: dict[str, np.ndarray] = {}

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)
                and pid[4] >= 0):
            raise Refused(f"a persistent object other than a storage ({str(pid)[:60]})")
        kind, key, numel = pid[1], pid[2], pid[4]
        if key not in self._storages:
            name = f"{self._prefix}data/{key}"
            dtype = kind.dtype.newbyteorder(">") if self._big_endian and kind.dtype.itemsize > 1 else kind.dtype
            raw = _read_entry(self._archive, name, numel * dtype.itemsize, what="storage")
            arr = np.frombuffer(raw, dtype, count=numel)
            self._storages[key] = arr.astype(kind.dtype) if dtype != kind.dtype else arr
        stored = self._storages[key]
        if stored.dtype != kind.dtype:
            raise Refused(f"storage {key!r} read as two different types")
        return stored


# An archive entry may expand to at most this many times its compressed size (beyond a floor): torch.save
# stores entries uncompressed, and deflated weights shrink by a few per cent, so more is a zip bomb.
MAX_EXPANSION = 20
EXPANSION_FLOOR = 64 << 20


def _read_entry(archive: zipfile.ZipFile, name: str, needed: int | None, *, what: str) -> bytes:
    """The bytes of one archive entry (its first `needed` bytes; all of it when None), checked against
    the entry's declared sizes before anything is allocated."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise Refused(f"a {what} {name!r} that the archive does not hold") from None
    if needed is not None and info.file_size < needed:
        raise _Malformed(f"{what} {name!r} holds {info.file_size:,} bytes, the pickle says {needed:,}")
    limit = max(EXPANSION_FLOOR, MAX_EXPANSION * info.compress_size)
    if info.file_size > limit:
        raise _Malformed(f"{what} {name!r} expands {info.compress_size:,} compressed bytes to {info.file_size:,} "
                          f"(more than {MAX_EXPANSION}x): refused as a zip bomb")
    with archive.open(info) as f:
        return f.read(info.file_size if needed is None else needed)


def _read_pth(path: Path):
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise CheckpointError(f"{path}: not a torch.save zip archive (files written by torch older than 1.6 or "
                              "with _use_new_zipfile_serialization=False are not supported; re-save them with "
                              "a current torch.save, or as .safetensors)") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: not a torch.save archive (expected one <name>/data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        order = "little"
        if prefix + "byteorder" in archive.namelist():
            order = _read_entry(archive, prefix + "byteorder", None, what="byte order").decode().strip()
        data = io.BytesIO(_read_entry(archive, pickles[0], None, what="pickle"))
        return TorchUnpickler(data, archive, prefix, order == "big").load()


def _read_safetensors(path: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path))


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a `.pth` or `.safetensors` file, by name.

    A checkpoint that wraps its state dict ({"state_dict": ...} or {"model": ...}) is unwrapped,
    and DataParallel's "module." prefix is dropped. Non-tensor entries are left out.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such weights file: {path}")
    try:
        obj = _read_safetensors(path) if path.suffix == ".safetensors" else _read_pth(path)
    except Refused as exc:
        raise CheckpointError(f"{path}: refused to unpickle: the file references {exc}, which is not a tensor, "
                              "storage or plain container (tampered, or not a state dict); nothing was run") from None
    except _Malformed as exc:
        raise CheckpointError(f"{path}: {exc} (damaged or tampered); nothing was read") from None
    except CheckpointError:
        raise
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - malformed pickles / headers raise many types
        raise CheckpointError(f"{path}: not a readable weights file ({one_line(exc, typed=True)})") from None
    return _tensors_of(obj, path)


def _tensors_of(obj, path: Path) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj.get(wrapper), dict) and not any(isinstance(v, np.ndarray) for v in obj.values()):
            obj = obj[wrapper]
            break
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors
