"""Batched evaluation next to the steps it compiles: masked, padded batches so that every
example counts exactly once, on one device or many.

`Evaluator` serves the training loop (validation, final test), `cnn eval` and `cnn predict`.
`file_eval_batches` is the one place that turns a file-backed split into placed batches:
each process decodes only its own rows of every global batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


class Evaluator:
    """Jit-compiled evaluation of one model graph: over device-resident uint8 splits (`run`) or
    over batches the host decodes and places (`run_batches`, for file-backed data)."""

    def __init__(self, parts: Any, *, num_classes: int, mean, std, mesh, batch_size: int,
                 input_size: int | None = None):
        import jax

        from cnncli.distributed import batch_sharding, check_batch_size
        from cnncli.train.step import make_eval_step

        check_batch_size(batch_size, mesh, "train.eval_batch_size")
        self.mesh, self.batch_size, self.num_classes = mesh, batch_size, num_classes
        step = make_eval_step(parts, num_classes=num_classes, mean=mean, std=std, input_size=input_size)

        def indexed(params, batch_stats, data_x, data_y, idx, mask):
            return step(params, batch_stats, data_x[idx], data_y[idx], mask)

        self._step = jax.jit(indexed, out_shardings=None)
        self._batch_step = jax.jit(step, out_shardings=None)
        self._sharding = batch_sharding(mesh)

    def run(self, params, batch_stats, data_x, data_y, num_examples: int, *, with_logits: bool = False
            ) -> tuple[dict[str, float], np.ndarray | None]:
        """Metrics over the first `num_examples` of the (device) arrays; logits [N, K] if asked."""
        import jax

        from cnncli.data.pipeline import eval_index_batches
        from cnncli.distributed import shard_global_batch

        totals = None
        logits_out = []
        for idx, mask in eval_index_batches(num_examples, self.batch_size):
            sums, logits = self._step(params, batch_stats, data_x, data_y, shard_global_batch(self.mesh, idx),
                                      shard_global_batch(self.mesh, mask))
            totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
            if with_logits:
                logits_out.append(np.asarray(jax.device_get(logits))[mask])
        return self._metrics(totals), (np.concatenate(logits_out) if with_logits else None)

    def run_batches(self, params, batch_stats, batches, *, with_logits: bool = False
                    ) -> tuple[dict[str, float], np.ndarray | None]:
        """Metrics over (images_uint8, labels, mask) batches already placed on the mesh, each of
        `batch_size` rows with padding rows masked out; logits [N, K] of the real rows if asked."""
        import jax

        totals = None
        logits_out = []
        for x, y, mask in batches:
            sums, logits = self._batch_step(params, batch_stats, x, y, mask)
            totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
            if with_logits:
                keep = np.asarray(jax.device_get(mask), bool)
                logits_out.append(np.asarray(jax.device_get(logits))[keep])
        return self._metrics(totals), (np.concatenate(logits_out) if with_logits else None)

    @staticmethod
    def _metrics(totals) -> dict[str, float]:
        import jax

        from cnncli.errors import DataError

        if totals is None:
            raise DataError("nothing to evaluate: the split has no examples")
        t = {k: float(v) for k, v in jax.device_get(totals).items()}
        n = t["count"]
        return {
            "loss": t["loss"] / n,
            "accuracy": t["correct"] / n,
            "top5_accuracy": t["correct_top5"] / n,
            "error": 1.0 - t["correct"] / n,
            "top5_error": 1.0 - t["correct_top5"] / n,
            "num_examples": int(round(n)),
        }

    def logits(self, params, batch_stats, data_x, num_examples: int) -> np.ndarray:
        """Logits [N, K] of the first `num_examples` images of a (device) uint8 array, no labels needed."""
        import jax

        labels = jax.device_put(np.zeros((data_x.shape[0],), np.int32), data_x.sharding)
        return self.run(params, batch_stats, data_x, labels, num_examples, with_logits=True)[1]



def file_eval_batches(mesh, loader, num_examples: int, batch_size: int, *, mirror: bool = False) -> Iterator[tuple]:
    """(images, labels, mask) on the mesh for a file-backed split, padded with a masked last batch.

    `loader` is a `cnncli.data.files.FileBatchLoader` over the split; this process decodes only its
    own rows of each global batch. `mirror` flips the images left-right (test-time augmentation).
    """
    from cnncli.data.pipeline import eval_index_batches
    from cnncli.distributed import local_rows, place_local_rows

    index_batches = eval_index_batches(num_examples, batch_size)
    rows = local_rows(batch_size)
    decoded = loader.iterate([idx[rows] for idx, _ in index_batches])
    for (images, labels), (_, mask) in zip(decoded, index_batches):
        if mirror:
            images = np.ascontiguousarray(images[:, :, ::-1])
        yield (place_local_rows(mesh, images, batch_size), place_local_rows(mesh, labels, batch_size),
               place_local_rows(mesh, mask[rows], batch_size))
