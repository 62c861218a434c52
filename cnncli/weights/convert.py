"""`cnn weights import` / `cnn weights export`: PyTorch state dicts <-> cnn weights.

Import reads the file (cnncli.weights.torch_file: no PyTorch needed), checks every tensor
against the model's layout (cnncli.weights.layouts) -- missing, unexpected, mis-shaped, integer/bool
and non-finite tensors are refused together in one line -- converts each and writes a weights directory
(cnncli.weights.store).

`num_batches_tracked`: cnn's BatchNorm has no such counter, so import leaves it out of the
model and records the file's values in weights.json; a torchvision-layout export writes them
back (int64 scalars), so import -> export returns the file's tensors bit for bit (for float32
files; others are stored as float32). Weights trained by cnn export 0 (PyTorch reads the
counter only when BatchNorm's momentum is None).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.atomic import atomic_path
from cnncli.errors import CheckpointError, WriteError, one_line
from cnncli.rundir import refuse_run_file
from cnncli.weights import layouts
from cnncli.weights.store import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    abstract_model,
    imagenet_class_names,
    save_weights,
)

COUNTER = ".num_batches_tracked"


def _get(tree: dict, path: tuple):
    for p in path:
        tree = tree[p]
    return tree


def _set(tree: dict, path: tuple, value) -> None:
    for p in path[:-1]:
        tree = tree[p]
    tree[path[-1]] = value


def _listing(keys: list[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def check_keys(tensors: dict[str, np.ndarray], entries: list[layouts.Entry], shapes: dict[str, tuple],
               where: str, source: str) -> None:
    """One CheckpointError naming the missing, unexpected, mis-shaped, non-float and non-finite keys (first few
    and counts)."""
    expected = {e.torch_key for e in entries}
    present = {k for k in tensors if not k.endswith(COUNTER)}
    missing = [e.torch_key for e in entries if e.torch_key not in present]
    norms = {k[: -len(".running_mean")] for k in expected if k.endswith(".running_mean")}
    unexpected = sorted((present - expected) | {k for k in tensors if k.endswith(COUNTER) and k[: -len(COUNTER)]
                                                not in norms})
    misshaped = [f"{e.torch_key} {tuple(tensors[e.torch_key].shape)} != {shapes[e.torch_key]}" for e in entries
                 if e.torch_key in present and tuple(tensors[e.torch_key].shape) != shapes[e.torch_key]]
    # An integer or bool tensor (quantized or mis-saved weights) would be converted into other numbers
    # without a word: refused like a wrong shape.
    not_float = [f"{k} {tensors[k].dtype}" for k in sorted(expected & present) if not _is_float(tensors[k].dtype)]
    # A NaN or an infinity in a weight makes every prediction a made-up one (uniform, or one class at 1.0).
    not_finite = [k for k in sorted(expected & present)
                  if _is_float(tensors[k].dtype) and not np.isfinite(tensors[k]).all()]
    problems = [f"{len(keys)} {what} ({_listing(keys)})" for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped),
                 ("not float16/32/64 or bfloat16", not_float), ("with NaN or infinite values", not_finite)) if keys]
    if problems:
        hint = ""
        if source == "torchvision" and any(k.startswith(("pre_logits.", "head.")) for k in unexpected):
            hint = "; it looks like a timm file: add --from timm"
        raise CheckpointError(f"{where} does not fit: " + "; ".join(problems) + hint)


def _is_float(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype.name == "bfloat16"  # numpy files bfloat16 (ml_dtypes) under kind "V"


def _shape_of(tensors: dict, key: str, name: str, where: str) -> tuple:
    if key not in tensors:
        raise CheckpointError(f"{where} has no {key!r}, which {name} needs (is it a {name} state dict?)")
    return tuple(tensors[key].shape)


def convert_state_dict(tensors: dict[str, np.ndarray], name: str, source: str = "torchvision",
                       where: str = "the state dict") -> tuple[Any, Any, dict]:
    """(params, batch_stats, info) of model `name` from a PyTorch state dict of numpy arrays."""
    from flax import nnx

    head = _shape_of(tensors, layouts.head_key(name, source), name, where)
    first = _shape_of(tensors, layouts.first_conv_key(name), name, where)
    if len(head) < 2 or len(first) != 4:
        raise CheckpointError(f"{where}: {layouts.head_key(name, source)} or {layouts.first_conv_key(name)} "
                              "has the wrong number of dimensions")
    num_classes, input_shape = int(head[0]), (224, 224, int(first[1]))
    if input_shape[2] not in (1, 3):  # cnn feeds grayscale or RGB images only (config: model.in_channels 1 or 3)
        rgb = (*first[:1], 3, *first[2:])
        raise CheckpointError(f"{where}: {layouts.first_conv_key(name)} has shape {first}, but {name} takes RGB "
                              f"{rgb} (or grayscale, 1 input channel): {first[1]} input channels cannot be fed")
    if num_classes < 1:
        raise CheckpointError(f"{where}: {layouts.head_key(name, source)} has shape {head}: no classes")
    model, _, params, batch_stats, _ = abstract_model(name, num_classes, input_shape)
    entries = layouts.layout(name, model, source)
    tree = {"params": params.to_pure_dict(), "batch_stats": batch_stats.to_pure_dict()}
    shapes = {e.torch_key: layouts.torch_shape(e, _get(tree, e.path).shape) for e in entries}
    check_keys(tensors, entries, shapes, f"{where} ({name}, {source} layout)", source)
    for e in entries:
        dtype = _get(tree, e.path).dtype
        _set(tree, e.path, np.ascontiguousarray(layouts.to_cnn(e, tensors[e.torch_key]), dtype=dtype))
    nnx.replace_by_pure_dict(params, tree["params"])
    nnx.replace_by_pure_dict(batch_stats, tree["batch_stats"])
    counters = _counters(tensors, where)
    names = imagenet_class_names() if num_classes == 1000 else [f"class_{i}" for i in range(num_classes)]
    info = {"model": name, "num_classes": num_classes, "input_shape": list(input_shape), "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD, "class_names": names, "source": source,
            "num_batches_tracked": counters or None}
    return params, batch_stats, info


def _counters(tensors: dict[str, np.ndarray], where: str) -> dict[str, int]:
    """The file's BatchNorm `num_batches_tracked` values: each must be an integer scalar, as PyTorch writes it."""
    counters = {}
    for k, v in tensors.items():
        if not k.endswith(COUNTER):
            continue
        if v.shape != () or v.dtype.kind not in "iu":
            raise CheckpointError(f"{where}: {k} must be an integer scalar (shape ()), got {v.dtype} of shape "
                                  f"{tuple(v.shape)}")
        if not 0 <= int(v) < 2 ** 63:  # PyTorch's counter is an int64 that only counts up
            raise CheckpointError(f"{where}: {k} is {int(v)}, not a count of batches (0 to 2^63-1)")
        counters[k[: -len(COUNTER)]] = int(v)
    return counters


def import_weights(file: str | Path, name: str, *, source: str = "torchvision", out: str | Path | None = None,
                   force: bool = False) -> tuple[Path, dict]:
    """Convert a `.pth` / `.safetensors` state dict into a weights directory; returns (directory, info)."""
    from cnncli.models import get_spec
    from cnncli.weights.torch_file import read_state_dict

    get_spec(name)  # an unknown model name is refused before the file is read
    if not layouts.supported(name):
        layouts.layout(name, None, source)  # raises the ModelError listing what is supported
    file = Path(file)
    target = Path(out) if out is not None else Path(f"{file.stem}-cnn")
    refuse_run_file(target, "-o")  # before the file is read
    tensors = read_state_dict(file)
    params, batch_stats, info = convert_state_dict(tensors, name, source, str(file))
    info["file"] = file.name
    return save_weights(target, info, params, batch_stats, force=force), info


def load_any(path: str | Path):
    """(model name, params, batch_stats, info or None) of a weights directory or a run / checkpoint."""
    from cnncli.weights.store import is_weights_dir, load_weights

    if is_weights_dir(path):
        w = load_weights(path)
        return w.info["model"], w.params, w.batch_stats, w.info
    from cnncli.evaluate import load_checkpoint_model

    loaded = load_checkpoint_model(path)
    m = loaded.config.model
    info = {"model": m.name, "num_classes": m.num_classes,
            "input_shape": [m.input_size, m.input_size, m.in_channels]}
    return m.name, loaded.params, loaded.batch_stats, info


def torch_tensors(name: str, params: Any, batch_stats: Any, info: dict) -> dict[str, np.ndarray]:
    """The weights as a torchvision-layout state dict of numpy arrays."""
    model, *_ = abstract_model(name, int(info["num_classes"]), tuple(info["input_shape"]))
    tree = {"params": params.to_pure_dict(), "batch_stats": batch_stats.to_pure_dict()}
    out: dict[str, np.ndarray] = {}
    for e in layouts.layout(name, model, "torchvision"):
        out[e.torch_key] = np.ascontiguousarray(layouts.to_torch(e, np.asarray(_get(tree, e.path))))
    counters = info.get("num_batches_tracked")
    if counters is None and "source" not in info:  # trained by cnn: one counter per BatchNorm
        counters = {k[: -len(".running_mean")]: 0 for k in out if k.endswith(".running_mean")}
    for prefix, value in (counters or {}).items():
        out[prefix + COUNTER] = np.array(value, np.int64)
    return out


def export_weights(src: str | Path, out: str | Path, layout: str = "torchvision", *,
                   force: bool = False) -> tuple[Path, int]:
    """Write a weights directory or a run's best checkpoint as one .safetensors file; (path, tensors).
    An existing file is replaced only with `force` (it may be the file the weights came from)."""
    from safetensors.numpy import save_file

    from cnncli.export import flatten_tree

    out = Path(out)
    refuse_run_file(out, "-o")
    if out.suffix != ".safetensors":
        raise WriteError(f"{out}: the export is a safetensors file: name it *.safetensors")
    if layout not in ("torchvision", "cnn"):
        raise WriteError(f"unknown --layout {layout!r}: expected torchvision or cnn")
    _check_writable(out)  # before the weights are read: a refusal costs nothing
    if out.exists() and not force:
        raise WriteError(f"{out} already exists: add --force to replace it, or name another file")
    name, params, batch_stats, info = load_any(src)
    if layout == "torchvision":
        tensors = torch_tensors(name, params, batch_stats, info)
        metadata = {"format": "pt"}
    else:
        tensors = flatten_tree({"params": params.to_pure_dict(), "batch_stats": batch_stats.to_pure_dict()})
        metadata = {"format": "cnn", "model": name}
    try:
        with atomic_path(out) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
    except Exception as exc:  # noqa: BLE001 - safetensors reports I/O failures as its own SafetensorError
        raise WriteError(f"cannot write {out}: {one_line(exc)}") from None
    return out, len(tensors)


def _check_writable(out: Path) -> None:
    """One WriteError when `out` cannot be written as a file: a directory there, a missing or read-only folder."""
    folder = out.parent
    if out.is_dir():
        raise WriteError(f"cannot write {out}: it is a directory; name the .safetensors file to write")
    if out.exists() and not out.is_file():
        raise WriteError(f"cannot write {out}: it exists and is not a regular file")
    if not folder.is_dir():
        raise WriteError(f"cannot write {out}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise WriteError(f"cannot write {out}: the folder {folder} is not writable")
