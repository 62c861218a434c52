"""A run's weights as one portable file (`output.export`): safetensors, or flax msgpack, of the flat
{'params/layer1/0/conv1/kernel': array, ...} dict, written through a temporary file and a rename."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from cnncli.errors import CheckpointError


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
    tmp = path.with_name(path.name + ".tmp")
    try:
        if fmt == "safetensors":
            from safetensors.numpy import save_file

            save_file(flat, str(tmp))
        else:
            from flax import serialization

            tmp.write_bytes(serialization.msgpack_serialize(flat))
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CheckpointError(f"could not write the exported weights {path}: {exc.strerror or exc}") from None
    return path
