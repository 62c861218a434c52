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


def local_rows(global_size: int) -> slice:
    """This process's rows of a global batch of `global_size` rows (processes take equal, ordered shares)."""
    per = global_size // jax.process_count()
    return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def place_local_rows(mesh: Mesh, local: np.ndarray, global_size: int) -> jax.Array:
    """Place this process's rows of a global batch of `global_size` rows, sharded over the mesh."""
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return jax.make_array_from_process_local_data(sharding, local, (global_size, *local.shape[1:]))


def shard_global_batch(mesh: Mesh, array: np.ndarray) -> jax.Array:
    """Place a host array holding the *global* batch; each process contributes only its own rows."""
    return place_local_rows(mesh, array[local_rows(array.shape[0])], array.shape[0])


def replicate(mesh: Mesh, tree):
    return jax.device_put(tree, replicated(mesh))
