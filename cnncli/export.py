"""A run's weights as one portable file (`output.export`): safetensors, or flax msgpack, of the flat
{'params/layer1/0/conv1/kernel': array, ...} dict, written through a temporary file and a rename."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnncli.atomic import atomic_path, write_bytes_atomic
from cnncli.errors import CheckpointError, one_line


def flatten_tree(tree: Any) -> dict[str, Any]:
    """{'params/layer1/0/conv1/kernel': array, ...} from a nested model tree."""
    import jax
    import numpy as np

    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key = "/".join(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path)
        flat[key] = np.asarray(jax.device_get(leaf))
    return flat


def export_weights(path: Path, model_tree: Any, fmt: str) -> Path:
    """Write the weights as one portable file: safetensors, or flax msgpack of the flat dict."""
    flat = flatten_tree(model_tree)
    try:
        if fmt == "safetensors":
            from safetensors.numpy import save_file

            with atomic_path(path) as tmp:
                save_file(flat, str(tmp))
        else:
            from flax import serialization

            write_bytes_atomic(path, serialization.msgpack_serialize(flat))
    except OSError as exc:
        raise CheckpointError(f"could not write the exported weights {path}: {one_line(exc)}") from None
    return path
