"""Train from real image files: an ImageNet-like JPEG folder made here, packed, then `cnn train`.

    python benchmarks/real_data.py --work /tmp/real --classes 100 --per-class 40 --size 400 \
        --model resnet50 --input-size 224 --batch-size 256 --steps 160

1. Writes `work/images/{train,val,test}/<class>/*.jpg`: photographs' statistics are not needed
   for a throughput figure, but their size and entropy are, so each image is a smooth random
   colour field with noise and shapes, 3:4 or 4:3, its longer side `--size` to 1.25 x `--size`
   (ImageNet's median is about 500x375), JPEG quality 90.
2. `cnn data pack` writes the folder once in cnn's packed format (`--no-pack`: skip, train from
   the folder itself).
3. `cnn train` of a bfloat16 `--model` for `--steps` steps from the pack (random-resized crop and
   flip on the device), no evaluation or checkpoint until the end.

Prints one JSON document: the steady images/s of the run (cnn's own clock: the first, compiling
step and the final evaluation left out), pack and generation times, the command lines.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _image(args: tuple[str, int, int]) -> None:
    import numpy as np
    from PIL import Image, ImageDraw

    path, size, seed = args
    rng = np.random.default_rng(seed)
    long = int(size * rng.uniform(1.0, 1.25))
    w, h = (long, long * 3 // 4) if rng.random() < 0.7 else (long * 3 // 4, long)
    low = rng.uniform(0, 255, (4, 4, 3)).astype(np.float32)
    field = np.asarray(Image.fromarray(low.astype(np.uint8)).resize((w, h), Image.BICUBIC), np.float32)
    field += rng.normal(0, 12, (h, w, 3))
    img = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
        box = (x0, y0, x0 + int(rng.integers(8, w // 2)), y0 + int(rng.integers(8, h // 2)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    img.save(path, quality=90)


def make_folder(root: Path, classes: int, per_class: int, size: int) -> int:
    jobs = []
    for s, (split, share) in enumerate((("train", 1.0), ("val", 0.1), ("test", 0.1))):
        for c in range(classes):
            folder = root / split / f"class{c:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(max(1, int(per_class * share))):
                jobs.append((str(folder / f"{i:05d}.jpg"), size, (s * 1_000_003 + c) * 100_003 + i))
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(_image, jobs, chunksize=16))
    return len(jobs)


def _run(cmd: list[str], log) -> subprocess.CompletedProcess:
    print("$ " + shlex.join(cmd), file=log, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log.write(proc.stderr[-4000:])
    if proc.returncode != 0:
        log.write(proc.stdout[-2000:])
    return proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--size", type=int, default=400)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=160)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                    help="data.num_workers of the run, and the pack's decode workers")
    ap.add_argument("--no-pack", action="store_true")
    ap.add_argument("--cnn", default="cnn", help="the cnn command, as a shell word list")
    a = ap.parse_args()
    cnn = shlex.split(a.cnn)
    log = sys.stderr
    out: dict = {"model": a.model, "batch_size": a.batch_size, "input_size": a.input_size, "dtype": a.dtype}

    images = a.work / "images"
    start = time.perf_counter()
    out["images_written"] = make_folder(images, a.classes, a.per_class, a.size)
    out["generate_s"] = time.perf_counter() - start

    config = a.work / "real.yaml"
    config.write_text(json.dumps({
        "model": {"name": a.model, "input_size": a.input_size, "dtype": a.dtype},
        "data": {"source": "folder", "path": str(images), "image_size": a.input_size, "num_workers": a.workers,
                 "augment": {"random_resized_crop": True, "flip": True}},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
        "train": {"steps": a.steps, "batch_size": a.batch_size, "log_every_steps": max(1, a.steps // 8),
                  "eval_every_steps": a.steps, "checkpoint_every_steps": a.steps},
        "output": {"tensorboard": False, "root": str(a.work / "runs")},
    }))  # JSON is YAML
    source = ["--set", f"data.path={images}"]
    if not a.no_pack:
        pack = a.work / "packed"
        start = time.perf_counter()
        proc = _run([*cnn, "data", "pack", str(config), "-o", str(pack), "--max-side", "256",
                     "--workers", str(a.workers)], log)
        out["pack_s"] = time.perf_counter() - start
        if proc.returncode == 0:
            source = ["--set", "data.source=packed", "--set", f"data.path={pack}"]
        else:
            out["pack_error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
    out["source"] = source[1].split("=", 1)[1] if "source" in source[1] else "folder"
    run_dir = a.work / "runs" / "real"
    proc = _run([*cnn, "train", str(config), *source, "--run-dir", str(run_dir), "--force", "--format", "json"], log)
    if proc.returncode != 0:
        out["train_error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
        print(json.dumps(out))
        return 1
    summary = json.loads(proc.stdout)
    out.update(images_per_second=summary["images_per_sec"], wall_time_s=summary["wall_time_s"],
               compile_time_s=summary["compile_time_s"], steps=summary["steps"],
               test_accuracy=summary["test"]["accuracy"])
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
