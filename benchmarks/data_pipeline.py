"""Input-pipeline throughput per source, and the training step fed real data against synthetic data.

Part 1 writes small datasets in their real on-disk formats into a temporary directory and
reports images/second for loading each one (`load_source`) and for preparing it
(`prepare_dataset`: hold-out, conversion, mean/std), and, for the file-backed `folder`
source, for decoding batches with `FileBatchLoader` (in-process and with Grain workers).

Part 2 times one training config (ResNet-20, batch 128) step by step, as the loop feeds it:
  - in-memory: digits (real images) on the device, the jitted step gathers its batch from
    a host index vector, against the same step on a fixed synthetic batch already on device;
  - file-backed: JPEGs decoded by FileBatchLoader ahead of the step, against synthetic.
Variants alternate in blocks of steps (compile and warm-up excluded) so that load from
other processes hits them alike; the median block gives the step time. Ratios come from
one run of this script.

Part 3 (`--host`) sets the two ways of feeding image files side by side, as `cnn data --bench`
measures them: the `folder` source (500x375 JPEGs decoded, centre square resized to 224) and the
same images packed by `cnn data pack` (256x256 raw, and JPEG), read for a 224 model input that
the step crops on the device. Per worker: images/s of wall time, and images per CPU second (what
a worker with a core of its own reaches; the figure that survives a shared machine), and the
step rate that many workers would feed (ResNet-50 bf16 on one H200: 6,567 images/s, RESULTS.md).

    python benchmarks/data_pipeline.py [--n 20000] [--files 320] [--steps 5] [--blocks 9] [--batch 128]
    python benchmarks/data_pipeline.py --host [--files 400] [--seconds 10] [--workers 1]
"""

from __future__ import annotations

import argparse
import gzip
import pickle
import statistics
import struct
import tempfile
import time
from pathlib import Path

import numpy as np


# ----------------------------------------------------------------------------- writing datasets


def _idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_datasets(root: Path, n: int, files: int, rng: np.random.Generator) -> dict[str, dict]:
    """Every source's files under `root`; returns {name: data config overrides}."""
    n_test = max(1, n // 6)
    for name, gz in (("mnist", False), ("fashion_mnist", True)):
        d = root / name
        d.mkdir()
        for prefix, count in (("train", n), ("t10k", n_test)):
            for kind, arr in (("images-idx3", rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)),
                              ("labels-idx1", rng.integers(0, 10, count, dtype=np.uint8))):
                blob = _idx(arr)
                path = d / f"{prefix}-{kind}-ubyte"
                if gz:
                    (path.parent / (path.name + ".gz")).write_bytes(gzip.compress(blob, compresslevel=6))
                else:
                    path.write_bytes(blob)

    def records(count: int) -> tuple[bytes, np.ndarray, np.ndarray]:
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        pixels = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        return np.concatenate([labels[:, None], pixels], 1).tobytes(), pixels, labels

    (root / "cifar10_bin").mkdir()
    (root / "cifar10_py").mkdir()
    for i in range(1, 7):
        name = f"data_batch_{i}" if i < 6 else "test_batch"
        blob, pixels, labels = records(n // 5 if i < 6 else n_test)
        (root / "cifar10_bin" / f"{name}.bin").write_bytes(blob)
        (root / "cifar10_py" / name).write_bytes(pickle.dumps({"data": pixels, "labels": labels.tolist()}, 2))

    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    np.savez(root / "set.npz", x_train=x, y_train=rng.integers(0, 10, n), x_test=x[:n_test],
             y_test=rng.integers(0, 10, n_test))

    from PIL import Image

    # ImageNet-like JPEGs (500x375, quality 90) of smooth random content, four classes
    for i in range(files):
        split = "val" if (i // 4) % 8 == 0 else "train"
        d = root / "folder" / split / f"class_{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(d / f"{i}.jpg", quality=90)

    return {
        "digits": {"source": "digits"},
        "synthetic": {"source": "synthetic", "num_train": n, "num_test": n_test},
        "mnist (IDX)": {"source": "mnist", "path": str(root / "mnist")},
        "fashion_mnist (IDX .gz)": {"source": "fashion_mnist", "path": str(root / "fashion_mnist")},
        "cifar10 (binary)": {"source": "cifar10", "path": str(root / "cifar10_bin")},
        "cifar10 (python)": {"source": "cifar10", "path": str(root / "cifar10_py")},
        "npz": {"source": "npz", "path": str(root / "set.npz")},
        "folder (224, scan + stats)": {"source": "folder", "path": str(root / "folder"), "image_size": 224},
    }


# ----------------------------------------------------------------------------- part 1


def source_throughput(configs: dict[str, dict], workers: int) -> None:
    from cnncli.config import DataConfig
    from cnncli.data.pipeline import prepare_dataset
    from cnncli.data.sources import load_source

    print(f"\n{'source':<28} {'images':>8} {'load img/s':>12} {'prepare img/s':>14}")
    for name, kw in configs.items():
        cfg = DataConfig(**kw, num_workers=workers if kw["source"] == "folder" else 0)
        t0 = time.perf_counter()
        src = load_source(cfg)
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        data = prepare_dataset(cfg, src)
        t_prep = time.perf_counter() - t0
        total = sum(data.sizes().values())
        print(f"{name:<28} {total:>8} {total / t_load:>12,.0f} {total / t_prep:>14,.0f}", flush=True)


def decode_throughput(folder: Path, batch: int, num_batches: int, size: int, workers_list: list[int]) -> None:
    from cnncli.config import DataConfig
    from cnncli.data.files import FileBatchLoader
    from cnncli.data.sources import load_source

    paths, labels = load_source(DataConfig(source="folder", path=str(folder))).train
    rng = np.random.default_rng(0)
    batches = [rng.choice(len(paths), batch, replace=False) for _ in range(num_batches)]
    for workers in workers_list:
        loader = FileBatchLoader(paths, labels, image_size=size, channels=3, num_workers=workers)
        t0 = time.perf_counter()
        arrivals = [time.perf_counter() - t0 for _ in loader.iterate(batches)]
        half = len(arrivals) // 2  # the second half: worker start-up is over
        steady = (len(arrivals) - half) * batch / (arrivals[-1] - arrivals[half - 1])
        print(f"folder decode 500x375 JPEG -> {size}, workers {workers}: {len(arrivals) * batch / arrivals[-1]:,.0f} "
              f"img/s overall, {steady:,.0f} img/s in the second half (first batch after {arrivals[0]:.2f} s)",
              flush=True)


# ----------------------------------------------------------------------------- part 3

GPU_STEP_RATE = 6567  # ResNet-50, batch 256, bf16, one H200 (RESULTS.md)


def natural_jpegs(root: Path, files: int, rng: np.random.Generator) -> None:
    """500x375 quality-90 JPEGs of 1/f-like content (sums of smooth noise at five scales), four classes,
    one in eight to val: closer to photographs' entropy (and decode cost) than one smooth blob."""
    from PIL import Image

    for i in range(files):
        d = root / ("val" if (i // 4) % 8 == 0 else "train") / f"class_{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        acc = np.zeros((375, 500, 3), np.float32)
        for side, amp in ((4, 90), (12, 50), (40, 25), (125, 12), (375, 6)):
            small = rng.normal(0, 1, (side, max(1, side * 4 // 3), 3)).astype(np.float32)
            acc += amp * np.stack([np.asarray(Image.fromarray(small[..., c]).resize((500, 375), Image.BICUBIC))
                                   for c in range(3)], -1)
        Image.fromarray(np.clip(acc + 128 + 20 * (i % 4), 0, 255).astype(np.uint8)).save(d / f"{i}.jpg", quality=90)


def host_side_by_side(root: Path, files: int, seconds: float, workers: int, batch: int) -> None:
    from cnncli.config import DataConfig
    from cnncli.data.pack import pack_dataset
    from cnncli.data.throughput import measure_host_pipeline

    t0 = time.perf_counter()
    natural_jpegs(root / "jpegs", files, np.random.default_rng(0))
    print(f"wrote {files} JPEGs in {time.perf_counter() - t0:.1f} s")
    folder = DataConfig(source="folder", path=str(root / "jpegs"), image_size=224)
    paths = {"folder (JPEG -> 224)": folder}
    for fmt in ("raw", "jpeg"):
        t0 = time.perf_counter()
        pack_dataset(folder, root / f"pack_{fmt}", side=256, image_format=fmt, workers=workers)
        print(f"packed {fmt} in {time.perf_counter() - t0:.1f} s")
        paths[f"packed 256 {fmt}"] = DataConfig(source="packed", path=str(root / f"pack_{fmt}"))
    print(f"\n{'path':<22} {'workers':>7} {'img/s':>8} {'per worker':>11} {'per CPU-s':>10} "
          f"{'workers for GPU':>16}")
    for name, cfg in paths.items():
        for w in sorted({0, workers}):
            r = measure_host_pipeline(cfg, batch_size=batch, workers=w, seconds=seconds)
            cpu = r.get("images_per_worker_cpu_second") or float("nan")
            print(f"{name:<22} {w:>7} {r['images_per_second']:>8,.0f} {r['per_worker']:>11,.0f} {cpu:>10,.0f} "
                  f"{GPU_STEP_RATE / cpu:>16.1f}", flush=True)
    print(f"(workers for GPU: workers with a core each to feed {GPU_STEP_RATE:,} img/s, from images per CPU second)")


# ----------------------------------------------------------------------------- part 2


def _train_step(shape: tuple[int, int, int], batch: int, model_name: str):
    """The pure step (state, images uint8, labels) and a fresh-state maker, as the training loop builds them."""
    from cnncli.config import AugmentConfig, OptimizerConfig, ScheduleConfig
    from cnncli.models import create_model
    from cnncli.train.optim import build_optimizer, build_schedule
    from cnncli.train.state import init_train_state, split_model
    from cnncli.train.step import make_train_step

    model = create_model(model_name, num_classes=10, input_shape=shape)
    parts, params, stats = split_model(model)
    sched = build_schedule(ScheduleConfig(), 0.1, 100, 1000)
    tx = build_optimizer(OptimizerConfig(), sched)
    step_fn = make_train_step(parts, tx, sched, num_classes=10, augment=AugmentConfig(random_crop_padding=2),
                              mean=[0.5] * shape[2], std=[0.25] * shape[2], seed=0)

    def fresh_state():
        return init_train_state(params, stats, tx, ema=False)

    return step_fn, fresh_state


def step_times(batch: int, steps: int, blocks: int, model_name: str, folder: Path, workers: int) -> None:
    from cnncli.config import DataConfig
    from cnncli.data.files import FileBatchLoader
    from cnncli.data.pipeline import TrainIndexStream, prepare_dataset
    from cnncli.distributed import make_mesh, replicate, shard_global_batch

    mesh = make_mesh()
    rng = np.random.default_rng(0)

    def run_pair(label_real: str, shape, real_batches, step_real) -> None:
        import jax

        step_fn, fresh_state = _train_step(shape, batch, model_name)
        synth_step = jax.jit(step_fn, donate_argnums=(0,))
        x = replicate(mesh, rng.integers(0, 256, (batch, *shape), dtype=np.uint8))
        y = replicate(mesh, rng.integers(0, 10, batch).astype(np.int32))
        # separate buffers per variant: each step donates its state
        states = {k: jax.tree.map(jax.numpy.copy, replicate(mesh, fresh_state())) for k in ("real", "synthetic")}
        real = step_real(step_fn)
        feeds = {"real": lambda s: real(s, next(real_batches)), "synthetic": lambda s: synth_step(s, x, y)}
        times: dict[str, list[float]] = {"real": [], "synthetic": []}
        for name in feeds:  # compile + warm-up
            for _ in range(2):
                states[name], m = feeds[name](states[name])
            jax.block_until_ready(m)
        for _ in range(blocks):
            for name in feeds:
                t0 = time.perf_counter()
                for _ in range(steps):
                    states[name], m = feeds[name](states[name])
                jax.block_until_ready(m)
                times[name].append((time.perf_counter() - t0) / steps)
        r, s = statistics.median(times["real"]), statistics.median(times["synthetic"])
        # blocks run back to back in pairs, so a pair's ratio cancels slow drifts in machine load
        pair = statistics.median(a / b for a, b in zip(times["real"], times["synthetic"]))
        print(f"{label_real:<40} real {r * 1e3:7.1f} ms/step   synthetic {s * 1e3:7.1f} ms/step   "
              f"real/synthetic: median of pairs {pair:5.3f}, of medians {r / s:5.3f}", flush=True)
        print(f"    blocks (ms/step) real {' '.join(f'{t * 1e3:.0f}' for t in times['real'])}; "
              f"synthetic {' '.join(f'{t * 1e3:.0f}' for t in times['synthetic'])}", flush=True)

    total = 2 + blocks * steps

    # in-memory: digits on the device, index vector per step, gathered inside jit
    import jax

    digits = prepare_dataset(DataConfig(source="digits", image_size=32))
    stream = TrainIndexStream(len(digits.y_train), batch, seed=0)
    dev_x, dev_y = replicate(mesh, (digits.x_train, digits.y_train))

    def gather_step(step_fn):
        jitted = jax.jit(lambda st, dx, dy, idx: step_fn(st, dx[idx], dy[idx]), donate_argnums=(0,))
        return lambda st, idx: jitted(st, dev_x, dev_y, idx)

    indices = (shard_global_batch(mesh, stream.batch(s)) for s in range(total))
    run_pair(f"{model_name} digits 32x32x1 in memory", (32, 32, 1), indices, gather_step)

    # file-backed: JPEGs decoded on the host ahead of the step
    folder_data = prepare_dataset(DataConfig(source="folder", path=str(folder), image_size=32,
                                             mean=[0.5], std=[0.25]))
    fstream = TrainIndexStream(len(folder_data.y_train), batch, seed=0)
    loader = FileBatchLoader(folder_data.x_train, folder_data.y_train, image_size=32, channels=3,
                             num_workers=workers)
    decoded = ((jax.device_put(a), jax.device_put(b)) for a, b in loader.iterate(fstream.batches(0, total)))

    def plain_step(step_fn):
        jitted = jax.jit(step_fn, donate_argnums=(0,))
        return lambda st, xy: jitted(st, *xy)

    run_pair(f"{model_name} folder JPEG->32x32x3, workers {workers}", (32, 32, 3), decoded, plain_step)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="training images per in-memory source")
    ap.add_argument("--files", type=int, default=320, help="JPEG files in the folder source")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=9, help="timed blocks per variant (alternating)")
    ap.add_argument("--workers", type=int, default=2, help="Grain workers for the folder source")
    ap.add_argument("--decode-batches", type=int, default=40, help="batches of 32 files in the decode test")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--host", action="store_true", help="part 3 only: folder against packed, host side")
    ap.add_argument("--seconds", type=float, default=10.0, help="part 3: seconds measured per path")
    args = ap.parse_args()
    import os

    if args.host:
        with tempfile.TemporaryDirectory() as tmp:
            host_side_by_side(Path(tmp), args.files, args.seconds, args.workers, 32)
        return

    print(f"{os.cpu_count()} CPUs; n={args.n}, files={args.files}, batch={args.batch}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        configs = write_datasets(root, args.n, args.files, np.random.default_rng(0))
        print(f"wrote the datasets in {time.perf_counter() - t0:.1f} s")
        source_throughput(configs, args.workers)
        decode_throughput(root / "folder", 32, args.decode_batches, 224, [0, args.workers])
        print()
        step_times(args.batch, args.steps, args.blocks, args.model, root / "folder", args.workers)


if __name__ == "__main__":
    main()
