"""`cnn data CONFIG --bench`: the host side of the training input pipeline, timed as `cnn train` runs it.

The training split's index stream (seeded permutation, batch size), the same host loader
(`cnncli.data.pipeline.host_loader`: image files decoded, or a pack's records read, by Grain
workers), up to uint8 batches ready to be placed on the device. The first batch (worker start-up)
is left out of the rate. What bounds the rate is read from where the CPU time went: this process
busy copying batches out of the workers, or the workers busy producing them. Images per CPU
second of the workers (`images_per_worker_cpu_second`) is what one worker would reach on a core
of its own (for in-process reading: images per CPU second of this process): the figure to read
on a machine that other work shares.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import TYPE_CHECKING

from cnncli.data.pipeline import TrainIndexStream, host_loader, prepare_dataset

if TYPE_CHECKING:
    from cnncli.config import DataConfig


def _worker_cpu() -> dict[int, float]:
    """CPU seconds used so far by each child process (the Grain workers); {} without psutil."""
    try:
        import psutil
    except ImportError:
        return {}
    out = {}
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
            out[child.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def measure_host_pipeline(cfg: DataConfig, *, batch_size: int, seed: int = 0, workers: int | None = None,
                          seconds: float = 10.0) -> dict:
    """Images per second the host produces for training from the (shape-resolved) `data:` config."""
    workers = cfg.num_workers if workers is None else workers
    # the normalisation stats are start-up work, not the steady state measured here
    data = prepare_dataset(dataclasses.replace(cfg, mean=[0.0], std=[1.0]))
    report = {"source": cfg.source, "workers": workers, "batch_size": batch_size, "cpus": os.cpu_count(),
              "image_shape": list(data.image_shape), "batch_shape": list(data.batch_shape)}
    if not data.file_backed:
        return {**report, "images_per_second": None, "per_worker": None, "batches": 0, "seconds": 0.0,
                "bound": "nothing on the host: an in-memory source lives on the device; each step receives "
                         "only an index vector"}
    stream = TrainIndexStream(len(data.y_train), batch_size, seed)
    loader = host_loader(data, "train", num_workers=workers, skip_corrupt=cfg.skip_corrupt)
    batches = iter(loader.iterate(stream.batches(0, 1 << 40)))
    t_start = time.perf_counter()
    next(batches)  # start-up: workers spawned, first batch decoded
    startup = time.perf_counter() - t_start
    w0 = _worker_cpu()
    t0, c0, n = time.perf_counter(), time.process_time(), 0
    while True:
        images, _ = next(batches)
        n += len(images)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
    own_cpu = time.process_time() - c0  # this process, all its threads
    busy = own_cpu / elapsed
    w1 = _worker_cpu()
    rate = n / elapsed
    in_process = workers == 0 or loader.threads_not_processes
    cpu = own_cpu if in_process else sum(w1[p] - w0[p] for p in w1.keys() & w0.keys())
    report["images_per_worker_cpu_second"] = n / cpu if cpu > 0 else None
    if workers == 0:
        bound = "this process: it reads and decodes every image itself (set --workers / data.num_workers)"
    elif in_process:
        bound = (f"{workers} reading thread(s) in this process, {busy:.0%} of a CPU busy"
                 + (": the machine's other work holds the rest" if busy < 0.9 * min(workers, os.cpu_count() or 1)
                    else ""))
    elif busy > 0.8:
        bound = f"this process, {busy:.0%} busy taking batches from the workers: more workers will not help"
    elif workers > (os.cpu_count() or 1):
        bound = f"CPU cores: {workers} workers share {os.cpu_count()} CPUs"
    else:
        bound = f"the {workers} worker(s) reading/decoding (this process {busy:.0%} busy): add workers, up to the cores"
    batches.close()  # the Grain workers stop now
    return {**report, "images_per_second": rate, "per_worker": rate / max(1, workers), "batches": n // batch_size,
            "seconds": elapsed, "startup_seconds": startup, "main_process_busy": busy, "bound": bound}
