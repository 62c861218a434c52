"""Freezing parameter groups while fine-tuning (`train.freeze`, `train.freeze_epochs`).

`freeze_mask(params, patterns)` says which parameters are frozen (True) from shell-style
patterns over dotted group names ("layer1*", "fc*"); a pattern starting with "!" unfreezes,
and the last matching pattern wins, so ["*", "!fc*"] freezes all but the head. A parameter
group is a module's path: "layer1.0.conv1" for "layer1.0.conv1.kernel".

`frozen_until(tx, mask, until)` wraps an optimizer so that frozen parameters get a zero
gradient and a zero update -- for the whole run, or for the first `until` steps. During a
temporary freeze the optimizer state of a frozen group sees only zero gradients (with coupled
weight decay, its decay term), and its BatchNorm layers keep training mode; a freeze for the
whole run also puts the frozen groups' BatchNorm layers in inference mode.
"""

from __future__ import annotations

import fnmatch
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cnncli.errors import ConfigError


def _keys(path) -> list[str]:
    keys = [str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path]
    if keys and keys[-1] == "value":  # nnx.State leaves: Variable.value
        keys = keys[:-1]
    return keys


def freeze_mask(params: Any, patterns: list[str]) -> Any:
    """A tree like `params` of bools: True where the parameter is frozen.

    Patterns match dotted group names ("layer1.0.conv1") and full names ("fc.kernel"); "!p"
    unfreezes what "p" matches; the last matching pattern decides. A pattern that matches
    nothing is refused (a typo would otherwise freeze nothing silently).
    """
    used = [False] * len(patterns)

    def frozen(path, _leaf) -> bool:
        keys = _keys(path)
        group, full = ".".join(keys[:-1]), ".".join(keys)
        state = False
        for i, pattern in enumerate(patterns):
            negate = pattern.startswith("!")
            pat = pattern[1:] if negate else pattern
            if fnmatch.fnmatchcase(group, pat) or fnmatch.fnmatchcase(full, pat):
                used[i] = True
                state = not negate
        return state

    mask = jax.tree_util.tree_map_with_path(frozen, params)
    unused = [p for p, u in zip(patterns, used) if not u]
    if unused:
        raise ConfigError(f"train.freeze pattern(s) {', '.join(map(repr, unused))} match no parameter group "
                          "(groups are dotted module paths, e.g. 'layer1.0.conv1', 'fc')")
    return mask


def frozen_groups(mask: Any) -> tuple[list[str], list[str]]:
    """(frozen, trainable) group names of a freeze mask (a group with any trainable part is trainable)."""
    groups: dict[str, set[bool]] = {}
    for path, m in jax.tree_util.tree_leaves_with_path(mask):
        groups.setdefault(".".join(_keys(path)[:-1]), set()).add(bool(m))
    frozen = sorted(g for g, s in groups.items() if s == {True})
    trainable = sorted(g for g, s in groups.items() if False in s)
    return frozen, trainable


class FrozenState(NamedTuple):
    count: jax.Array  # int32 optimizer steps taken
    inner: Any


def frozen_until(tx: optax.GradientTransformation, mask: Any, until: int | None) -> optax.GradientTransformation:
    """`tx` with zero gradients and updates for the parameters `mask` marks, always or for `until` steps."""

    def init(params):
        return FrozenState(jnp.zeros((), jnp.int32), tx.init(params))

    def update(grads, state, params=None):
        now = jnp.bool_(True) if until is None else state.count < until

        def gate(x, frozen):
            return jnp.where(now, jnp.zeros_like(x), x) if frozen else x

        grads = jax.tree.map(gate, grads, mask)
        updates, inner = tx.update(grads, state.inner, params)
        return jax.tree.map(gate, updates, mask), FrozenState(state.count + 1, inner)

    return optax.GradientTransformation(init, update)
