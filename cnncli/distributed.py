"""Device mesh, shardings and multi-process start-up. One code path from one CPU to many hosts:
batches are split over a `data` mesh axis, the train state is replicated.

Several processes (one per host, or one per GPU) join one cluster under `jax.distributed`:
explicitly (`--coordinator HOST:PORT --num-processes N --process-id I`, the matching
`JAX_COORDINATOR_ADDRESS` / `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID` variables or the
`distributed:` config keys, in that order of precedence), or through what
`jax.distributed.initialize()` detects itself (SLURM, Open MPI, TPU pods) with `--cluster-auto`.
One process alone never connects anywhere. Process 0 is the primary: it alone writes the run
directory's files and prints; every process takes part in each step and checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cnncli import errors
from cnncli.errors import CnnError, ConfigError, one_line


class ClusterError(CnnError):
    """The cluster could not be joined, or another process of the run failed."""

    exit_code = 3


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """How this process joins a cluster (None fields: left to jax's detection when `auto`)."""

    coordinator: str | None
    num_processes: int | None
    process_id: int | None
    auto: bool
    initialization_timeout: int
    heartbeat_timeout: int
    shutdown_timeout: int


def _env_int(environ, name: str) -> int | None:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw[:40]!r} must be an integer") from None


def cluster_spec(section: Any, *, coordinator: str | None = None, num_processes: int | None = None,
                 process_id: int | None = None, auto: bool = False, environ=None) -> ClusterSpec | None:
    """The cluster this process should join, or None for a single process.

    `section` is the config's `distributed:` section; flags win over `JAX_*` variables, which win
    over the config. A cluster of one process is no cluster.
    """
    environ = os.environ if environ is None else environ
    coordinator = coordinator or environ.get("JAX_COORDINATOR_ADDRESS") or section.coordinator
    if num_processes is None:
        num_processes = _env_int(environ, "JAX_NUM_PROCESSES")
    if num_processes is None:
        num_processes = section.num_processes
    if process_id is None:
        process_id = _env_int(environ, "JAX_PROCESS_ID")
    auto = auto or section.auto
    spec = ClusterSpec(coordinator, num_processes, process_id, auto, section.initialization_timeout,
                       section.heartbeat_timeout, section.shutdown_timeout)
    if coordinator is not None:
        host, sep, port = coordinator.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"coordinator address {coordinator[:80]!r} must be HOST:PORT, e.g. node001:12355")
    if num_processes is not None and num_processes < 1:
        raise ConfigError(f"the number of processes must be >= 1, got {num_processes}")
    if process_id is not None and (process_id < 0 or (num_processes is not None and process_id >= num_processes)):
        raise ConfigError(f"process id {process_id} must be in [0, {(num_processes or 1) - 1}] "
                          f"(one id per process, 0 is the coordinator)")
    if auto:
        one = num_processes == 1 or any(environ.get(v) == "1" for v in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"))
        return None if one else spec
    if num_processes in (None, 1) and coordinator is None and process_id in (None, 0):
        return None
    if num_processes == 1:
        return None
    missing = [what for what, v in (("--coordinator HOST:PORT", coordinator), ("--num-processes N", num_processes),
                                    ("--process-id I", process_id)) if v is None]
    if missing:
        raise ConfigError(f"joining a cluster needs {', '.join(missing)} as well (or the JAX_COORDINATOR_ADDRESS / "
                          "JAX_NUM_PROCESSES / JAX_PROCESS_ID variables), or --cluster-auto under SLURM, "
                          "Open MPI or on a TPU pod")
    return spec


def initialize(spec: ClusterSpec | None) -> None:
    """Join the cluster (before any jax device use); a one-line ClusterError, never a hang, if it cannot.

    jax aborts the process when the coordinator does not answer in time; a watchdog reports it
    first, as one line, and exits with ClusterError's code.
    """
    if spec is None:
        return
    where = spec.coordinator or "the coordinator the cluster environment names"
    if spec.process_id == 0:
        what = (f"not all {spec.num_processes} processes joined the coordinator this process started at "
                f"{where} within {spec.initialization_timeout} s; start the others with --coordinator {where} "
                f"--num-processes {spec.num_processes} --process-id 1..{spec.num_processes - 1}")
    else:
        what = (f"could not join the cluster at {where} within {spec.initialization_timeout} s (distributed."
                "initialization_timeout): is process 0 running there, and is the port reachable from this host?")
    watchdog = threading.Timer(spec.initialization_timeout, _give_up, args=(what,))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(
            coordinator_address=spec.coordinator, num_processes=spec.num_processes, process_id=spec.process_id,
            cluster_detection_method=None if spec.auto else "deactivate",
            initialization_timeout=spec.initialization_timeout + 30,  # the watchdog answers first
            heartbeat_timeout_seconds=spec.heartbeat_timeout, shutdown_timeout_seconds=spec.shutdown_timeout)
    except (ValueError, RuntimeError) as exc:
        raise ClusterError(f"cannot join a cluster: {one_line(exc, limit=200)}"
                           + (" (--cluster-auto found no SLURM, Open MPI or TPU pod environment)" if spec.auto
                              else "")) from None
    finally:
        watchdog.cancel()


def _give_up(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    os._exit(ClusterError.exit_code)


def exit_now(exc: CnnError) -> None:
    """Print a one-line error and leave at once: after a peer failed, jax's own shutdown at exit
    would wait `shutdown_timeout` seconds for it and then abort with a native stack trace."""
    sys.stdout.flush()
    sys.stderr.write(f"error: {exc}\n")
    sys.stderr.flush()
    os._exit(exc.exit_code)


_PEER_SIGNS = ("gloo", "heartbeat", "coordination service", "connection closed by peer", "barrier",
               "nccl", "unavailable:", "deadline_exceeded", "connection reset")


def peer_failure(exc: BaseException) -> ClusterError | None:
    """A ClusterError for an exception that says another process of the run failed, else None."""
    if jax.process_count() == 1 or isinstance(exc, CnnError):
        return None
    text = str(exc).strip()
    if not any(sign in text.lower() for sign in _PEER_SIGNS):
        return None
    return ClusterError(f"another process of this {jax.process_count()}-process run failed or stopped answering "
                        f"(process {jax.process_index()} saw: {one_line(exc, limit=200)}); restart all processes "
                        "with --resume to continue from the last complete checkpoint")


def is_primary() -> bool:
    """Process 0: the one that writes the run directory's files and prints."""
    return jax.process_index() == 0


def topology(mesh: Mesh, batch_size: int) -> dict[str, Any]:
    """What the run is spread over: stored in the run directory and printed at start-up."""
    devices = int(mesh.devices.size)
    return {"processes": jax.process_count(), "devices": devices, "local_devices": jax.local_device_count(),
            "platform": mesh.devices.flat[0].platform, "global_batch": batch_size,
            "per_device_batch": batch_size // devices}


_MESSAGE_BYTES = 1024


def primary_decides(fn: Callable[[], Any]) -> Any:
    """Run `fn` on process 0 only; a CnnError it raises is raised on every process (so that none waits
    for a process that gave up). Returns fn's result on process 0, None elsewhere."""
    if jax.process_count() == 1:
        return fn()
    from jax.experimental import multihost_utils

    result, failure = None, None
    if is_primary():
        try:
            result = fn()
        except CnnError as exc:
            failure = exc
    text = "" if failure is None else f"{type(failure).__name__}\n{failure}"
    raw = np.zeros(_MESSAGE_BYTES, np.uint8)
    encoded = text.encode()[:_MESSAGE_BYTES]
    raw[:len(encoded)] = np.frombuffer(encoded, np.uint8)
    shared = np.asarray(multihost_utils.broadcast_one_to_all(raw))
    if failure is not None:
        raise failure
    message = bytes(shared).rstrip(b"\0").decode(errors="replace")
    if message:
        name, _, text = message.partition("\n")
        cls = getattr(errors, name, None)
        raise (cls if isinstance(cls, type) and issubclass(cls, CnnError) else ClusterError)(text)
    return result


def same_on_every_process(text: str, what: str) -> None:
    """Refuse, on every process, a run whose processes were started with different `text` (their
    configs): each would build another step and wait for the others in its first collective."""
    if jax.process_count() == 1:
        return
    import hashlib

    from jax.experimental import multihost_utils

    digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8)
    every = np.asarray(multihost_utils.process_allgather(digest)).reshape(jax.process_count(), -1)
    differ = [i for i in range(1, every.shape[0]) if not np.array_equal(every[i], every[0])]
    if differ:
        raise ConfigError(f"the processes of this run disagree on {what}: process(es) "
                          f"{', '.join(map(str, differ))} differ from process 0; start every process with the same "
                          "config file and --set options")


def make_mesh(count: int | None = None) -> Mesh:
    """A 1-D mesh over every device of every process (or the first `count`), axis name 'data'; each
    process's devices are contiguous along it, so that a process's rows of a batch are one slice
    (`local_rows`)."""
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices[:count]), ("data",))


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


MIN_SHARDED_SIZE = 1024  # elements: smaller arrays (biases, norms, counters) stay replicated


def shard_axis(shape: tuple[int, ...], devices: int) -> int | None:
    """The axis that `shard_params` splits an array of `shape` along over `devices` devices, or None
    when the array stays whole on each device: under MIN_SHARDED_SIZE elements (biases, norms,
    counters), or no axis divides evenly. Of the axes that divide, the largest (the first on a tie)."""
    if devices == 1 or int(np.prod(shape, dtype=np.int64)) < MIN_SHARDED_SIZE:
        return None
    axes = sorted((a for a in range(len(shape)) if shape[a] % devices == 0), key=lambda a: -shape[a])
    return axes[0] if axes else None


def elements_per_device(shape: tuple[int, ...], devices: int, shard: bool) -> int:
    """Elements of an array of `shape` that each device holds: all of them when replicated, a
    1/devices share of those `shard_axis` splits (every device holds an equal share)."""
    size = int(np.prod(shape, dtype=np.int64))
    if shard and shard_axis(shape, devices) is not None:
        return size // devices
    return size


def state_shardings(mesh: Mesh, tree, *, shard: bool):
    """A NamedSharding per leaf of `tree`: replicated; with `shard`, each array `shard_axis` names
    is split over `data` along that axis (FSDP-style: XLA gathers a layer's weights when the step
    uses them)."""
    n = int(mesh.devices.size)

    def one(leaf):
        axis = shard_axis(tuple(getattr(leaf, "shape", ())), n) if shard else None
        if axis is None:
            return replicated(mesh)
        spec = [None] * len(leaf.shape)
        spec[axis] = "data"
        return NamedSharding(mesh, P(*spec))

    return jax.tree.map(one, tree)


def place(mesh: Mesh, tree, shardings, what: str = "the train state"):
    """`tree` on the mesh with one sharding per leaf, or one for all (each process passes the same host
    values). Under several processes each process builds its own devices' shards from its host copy,
    after one check that every process holds the same `what` (a SHA-256 of every leaf, one small
    all-gather): `jax.device_put` would all-gather each leaf whole to compare it (a ResNet-20 state,
    283 leaves: 5 s of a 4-step run's 17), and the data splits `replicate` places with them."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)
    import hashlib

    leaves, treedef = jax.tree.flatten(tree)
    hosts = [_host_array(leaf) for leaf in leaves]
    digest = hashlib.sha256()
    for h in hosts:
        digest.update(f"{h.dtype.str}{h.shape};".encode())
        digest.update(np.ascontiguousarray(h).reshape(-1).view(np.uint8))
    same_on_every_process(digest.hexdigest(), what)
    per_leaf = treedef.flatten_up_to(jax.tree.map(lambda s, sub: jax.tree.map(lambda _: s, sub), shardings, tree,
                                                  is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)))
    return treedef.unflatten([jax.make_array_from_callback(h.shape, s, lambda index, h=h: h[index])
                              for h, s in zip(hosts, per_leaf)])


def _host_array(leaf) -> np.ndarray:
    """A leaf as the host array jax would place: float64 / int64 narrowed as jax narrows them."""
    host = np.asarray(jax.device_get(leaf))
    return host.astype(jax.dtypes.canonicalize_dtype(host.dtype), copy=False)


def bytes_per_device(tree) -> int:
    """Bytes that the arrays of `tree` hold on this process's fullest device."""
    used: dict[Any, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in getattr(leaf, "addressable_shards", ()):
            used[shard.device] = used.get(shard.device, 0) + shard.data.nbytes
    return max(used.values(), default=0)


def replicate(mesh: Mesh, tree, what: str = "the arrays every device holds"):
    """`tree` on every device of the mesh. Under several processes each one passes its own host copy
    (the same values everywhere, checked once: `place`): jax moves no array between hosts."""
    return place(mesh, tree, replicated(mesh), what)
