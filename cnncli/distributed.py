"""Device mesh and shardings. One code path from one CPU to many hosts: batches are split
over a `data` mesh axis, the train state is replicated."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cnncli.errors import ConfigError


def make_mesh() -> Mesh:
    """A 1-D mesh over every device of every process, axis name 'data'."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, key: str = "train.batch_size") -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ConfigError(f"'{key}' = {batch_size} must be divisible by the number of devices ({n})")


def shard_global_batch(mesh: Mesh, array: np.ndarray) -> jax.Array:
    """Place a host array holding the *global* batch; each process contributes only its own rows."""
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(array, sharding)
    per_process = array.shape[0] // jax.process_count()
    start = jax.process_index() * per_process
    local = array[start : start + per_process]
    return jax.make_array_from_process_local_data(sharding, local, array.shape)


def replicate(mesh: Mesh, tree):
    return jax.device_put(tree, replicated(mesh))
