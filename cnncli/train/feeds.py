"""How batches reach the compiled step.

- `ArrayFeed`: in-memory datasets live on the device as uint8; the host sends only an index
  vector per step, and the jitted step gathers and augments the batch.
- `FileFeed`: file-backed datasets (image folders, packs) are decoded / read on the host by Grain
  workers, ahead of the step, in exactly the order the index stream gives; the step augments on device.

Both feed the same pure train step and evaluate through the same `Evaluator`. Under several
processes each one decodes / places only its own rows of every global batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnncli.data.dataset import Dataset
from cnncli.data.pipeline import TrainIndexStream
from cnncli.distributed import local_rows, place_local_rows, replicate, shard_global_batch


class _LocalIndexBatches(Sequence):
    """A lazy sequence of index batches restricted to this process's rows."""

    def __init__(self, batches: Sequence, rows: slice):
        self.batches, self.rows = batches, rows

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i):
        return np.asarray(self.batches[i])[self.rows]


class ArrayFeed:
    """Device-resident uint8 splits; steps take (state, data_x, data_y, indices)."""

    def __init__(self, data: Dataset, mesh, step_fn: Callable, evaluator: Any):
        self.mesh, self.evaluator = mesh, evaluator
        self.sizes = data.sizes()
        self.dev = {s: replicate(mesh, (jnp.asarray(data.split(s)[0]), jnp.asarray(data.split(s)[1])), f"the {s} split")
                    for s in ("train", "val", "test")}

        def indexed_step(state, data_x, data_y, idx):
            return step_fn(state, data_x[idx], data_y[idx])

        self._step = jax.jit(indexed_step, donate_argnums=(0,))

    def batches(self, stream: TrainIndexStream, start: int, stop: int) -> Iterator[tuple]:
        for step in range(start, stop):
            yield (*self.dev["train"], shard_global_batch(self.mesh, stream.batch(step)))

    def step(self, state, batch: tuple):
        return self._step(state, *batch)

    def evaluate(self, split: str, params, batch_stats) -> dict[str, float]:
        x, y = self.dev[split]
        return self.evaluator.run(params, batch_stats, x, y, self.sizes[split])[0]

    def corrupt_files(self) -> list[str]:
        return []


class FileFeed:
    """Host-decoded batches from image files; steps take (state, images, labels)."""

    def __init__(self, data: Dataset, mesh, step_fn: Callable, evaluator: Any, *, num_workers: int,
                 skip_corrupt: bool):
        from cnncli.data.pipeline import host_loader

        self.mesh, self.evaluator = mesh, evaluator
        self.sizes = data.sizes()
        self.loaders = {s: host_loader(data, s, num_workers=num_workers, skip_corrupt=skip_corrupt)
                        for s in ("train", "val", "test")}
        self._step = jax.jit(step_fn, donate_argnums=(0,))

    def batches(self, stream: TrainIndexStream, start: int, stop: int) -> Iterator[tuple]:
        rows = local_rows(stream.batch_size)
        for x, y in self.loaders["train"].iterate(_LocalIndexBatches(stream.batches(start, stop), rows)):
            yield (place_local_rows(self.mesh, x, stream.batch_size), place_local_rows(self.mesh, y, stream.batch_size))

    def step(self, state, batch: tuple):
        return self._step(state, *batch)

    def evaluate(self, split: str, params, batch_stats) -> dict[str, float]:
        from cnncli.train.evaluator import file_eval_batches

        batches = file_eval_batches(self.mesh, self.loaders[split], self.sizes[split], self.evaluator.batch_size)
        return self.evaluator.run_batches(params, batch_stats, batches)[0]

    def corrupt_files(self) -> list[str]:
        return sorted({f for loader in self.loaders.values() for f in loader.corrupt_files})  # once, not per epoch


def _keeping_sharding(step_fn: Callable, state_sharding: Any) -> Callable:
    """The step, its new state constrained to `state_sharding` (sharded parameters stay sharded)."""
    if state_sharding is None:
        return step_fn

    def step(state, *batch):
        new_state, metrics = step_fn(state, *batch)
        return jax.lax.with_sharding_constraint(new_state, state_sharding), metrics

    return step


def make_feed(data: Dataset, mesh, step_fn: Callable, evaluator: Any, cfg,
              state_sharding: Any = None) -> ArrayFeed | FileFeed:
    step_fn = _keeping_sharding(step_fn, state_sharding)
    if data.file_backed:
        return FileFeed(data, mesh, step_fn, evaluator, num_workers=cfg.data.num_workers,
                        skip_corrupt=cfg.data.skip_corrupt)
    return ArrayFeed(data, mesh, step_fn, evaluator)
