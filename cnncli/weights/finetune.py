"""Fine-tuning hooks: start a model from stored weights, choose which parameter groups train.

`load_init_weights(template, path, num_classes)` fills a freshly initialised model tree
({"params", "batch_stats"}, as cnncli.train.setup.model_tree) from a weights directory or a
run. Every variable must match by path and shape, except the classifier head when the class
count differs: that is kept as initialised (re-initialised) and reported. Anything else that
does not fit -- another architecture, other input channels -- is refused in one line.

`freeze_mask(params, patterns)` says which parameters are frozen (True) from shell-style
patterns over dotted group names ("layer1*", "fc*"); a pattern starting with "!" unfreezes,
and the last matching pattern wins, so ["*", "!fc*"] freezes all but the head.

A parameter group is a module's path: "layer1.0.conv1" for "layer1.0.conv1.kernel".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cnncli.errors import CheckpointError
from cnncli.train.freeze import freeze_mask, frozen_groups  # noqa: F401  (re-exported)


def _pure(tree: Any) -> Any:
    return tree.to_pure_dict() if hasattr(tree, "to_pure_dict") else tree


def _flatten(tree: Any, prefix: tuple = ()) -> dict[tuple, Any]:
    if isinstance(tree, dict):
        out: dict[tuple, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, (*prefix, k)))
        return out
    return {prefix: tree}


def _unflatten_into(tree: Any, values: dict[tuple, Any]) -> Any:
    def build(node, prefix):
        if isinstance(node, dict):
            return {k: build(v, (*prefix, k)) for k, v in node.items()}
        return values[prefix]

    return build(tree, ())


def group_name(path: tuple) -> str:
    """("params", "layer1", 0, "conv1", "kernel") -> "layer1.0.conv1"."""
    return ".".join(str(p) for p in path[1:-1])


def _listing(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def load_init_weights(template: dict, path: str | Path, num_classes: int) -> tuple[dict, dict]:
    """(tree, report): `template` with every variable taken from the weights at `path` except a head
    whose class count differs. report = {"source", "model", "loaded": [groups], "reinitialised": [groups]}.
    """
    from cnncli.weights.convert import load_any

    name, params, batch_stats, info = load_any(path)
    source = _flatten({"params": _pure(params), "batch_stats": _pure(batch_stats)})
    target = _flatten({k: _pure(v) for k, v in template.items() if k in ("params", "batch_stats")})
    source_classes = int(info["num_classes"])
    values, reinit, misfit = {}, set(), []
    for key, leaf in target.items():
        if key not in source:
            misfit.append(f"{'/'.join(map(str, key))} (not in the weights)")
            continue
        have, want = tuple(np.shape(source[key])), tuple(np.shape(leaf))
        if have == want:
            values[key] = source[key]
        elif (source_classes != num_classes and have[:-1] == want[:-1] and have[-1:] == (source_classes,)
              and want[-1:] == (num_classes,)):
            values[key] = leaf  # the classifier head: kept as initialised
            reinit.add(group_name(key))
        else:
            misfit.append(f"{'/'.join(map(str, key))} {have} != {want}")
    misfit += [f"{'/'.join(map(str, k))} (not in the model)" for k in source if k not in target]
    if misfit:
        raise CheckpointError(f"the weights in {path} ({name}) do not fit the model being trained: "
                              f"{len(misfit)} variables ({_listing(misfit)})")
    tree = dict(template)
    for part in ("params", "batch_stats"):
        sub = {k[1:]: v for k, v in values.items() if k[0] == part}
        pure = _unflatten_into(_pure(template[part]), sub)
        if hasattr(template[part], "to_pure_dict"):
            import jax
            from flax import nnx

            state = jax.tree.map(lambda x: x, template[part])  # new Variables: the template stays as it is
            nnx.replace_by_pure_dict(state, pure)
            pure = state
        tree[part] = pure
    groups = sorted({group_name(k) for k in target})
    report = {"source": str(path), "model": name, "loaded": [g for g in groups if g not in reinit],
              "reinitialised": sorted(reinit)}
    return tree, report
