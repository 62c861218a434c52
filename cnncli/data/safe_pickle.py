"""Unpickling dataset files (the CIFAR Python distribution) through cnncli.restricted_pickle.

The allowlist: what rebuilding plain containers, strings, numbers and numpy arrays needs;
every other global is refused before anything is called. Object-dtype arrays (which would
hold arbitrary objects) are refused too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnncli.errors import DataError, one_line
from cnncli.restricted_pickle import Refused, RestrictedUnpickler


def _dtype(*args):
    """numpy.dtype, refusing object dtypes (their arrays carry arbitrary pickled objects)."""
    dt = np.dtype(*args)
    if dt.hasobject:
        raise Refused("numpy object arrays")
    return dt


def _encode(text, encoding="latin1"):
    """_codecs.encode as protocol-2 pickles use it for bytes: latin-1 only."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise Refused(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


def _allowed() -> dict[tuple[str, str], object]:
    # Take the functions numpy itself pickles with, whatever module path this numpy version uses;
    # accept the numpy 1.x (numpy.core) and 2.x (numpy._core) spellings of each.
    reconstruct = np.zeros(1).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    scalar = np.int64(0).__reduce__()[0]
    table: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _dtype,
        ("_codecs", "encode"): _encode,
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        table[(f"{core}.multiarray", "scalar")] = scalar
        table[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return table


class DatasetUnpickler(RestrictedUnpickler):
    """Admits dicts, lists, tuples, strings, bytes, numbers and numpy arrays only."""

    allowed = _allowed()


def load_pickle(path: Path, encoding: str = "latin1"):
    """Unpickle a dataset file safely; Python 2 str objects (the CIFAR files) are decoded as `encoding`
    (latin-1: what numpy arrays need; "bytes": left as bytes, for text the caller decodes strictly)."""
    try:
        with open(path, "rb") as f:
            return DatasetUnpickler(f, encoding=encoding).load()
    except Refused as exc:
        raise DataError(f"{path}: refused to unpickle: the file references {exc}, which is not a plain container, "
                        f"string, number or numpy array (tampered, or not a dataset file)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {one_line(exc)}") from None
    except Exception as exc:  # malformed pickles raise many types (UnpicklingError, EOFError, ValueError, ...)
        raise DataError(f"{path}: not a readable pickle ({one_line(exc, typed=True)})") from None


def plain_keys(obj):
    """A dict's keys as str (Python 2 pickles may give bytes keys)."""
    if not isinstance(obj, dict):
        return obj
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
