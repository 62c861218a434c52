"""cnn against the PyTorch reference, alternately, in one invocation on one machine.

For every model: `cnn bench` (once per XLA flag variant) and `benchmarks/torch_reference.py`
(eager, and compiled with --torch-compile) run one after the other, each in its own process,
`--repeats` times; the table gives the median images/s per side, the ratio cnn / PyTorch
(against PyTorch's fastest setting measured) and each side's compile time.

    python benchmarks/compare.py --models resnet20 --batch-size 128 \\
        --xla-variants default,xla-default [--torch-compile] [--repeats 2] [--json]

A model may carry its own batch and input size: --models resnet20,resnet18:32:112,vgg16:16:64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# "default" is what `cnn` does by itself: its XLA flag (cnncli/xla_flags.py), its allocator
# settings (cnncli/entry.py: mimalloc with its purge delay off, else glibc's huge-page tunable) and
# its oneDNN kernels (cnncli/kernels). "xla-kernels" is that without the oneDNN kernels,
# "huge-pages-only" with glibc and its tunable, "glibc-malloc" with glibc alone, "xla-default"
# without any of them (XLA's and glibc's own defaults); "heap-reuse" is glibc's heap tuned to keep
# blocks (no mmap, one arena, no trimming: its resident memory creeps up); "mimalloc", "jemalloc"
# and "tcmalloc" are the kept allocators below, set explicitly; the ynn-* variants set XLA_FLAGS.
VARIANT_ENV = {
    "xla-kernels": {"CNN_ONEDNN": "0"},
    "glibc-malloc": {"CNN_MALLOC_DEFAULTS": "0"},
    "huge-pages-only": {"CNN_MALLOC_DEFAULTS": "0", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
    "xla-default": {"CNN_ONEDNN": "0", "CNN_MALLOC_DEFAULTS": "0", "CNN_XLA_DEFAULTS": "0"},
    "heap-reuse": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.arena_max=1:"
                                     "glibc.malloc.trim_threshold=17179869184"},
}
# Kept allocators, each configured to keep freed large blocks mapped (what the large-block cache does):
# mimalloc from the `cmeel-mimalloc` wheel with its purge delay off, jemalloc and tcmalloc from the
# system's packages (libjemalloc2, libtcmalloc-minimal4) with their decay / release turned off.
KEPT_ALLOCATORS = {
    "mimalloc": ("cmeel-mimalloc", "libmimalloc.so", {"MIMALLOC_PURGE_DELAY": "-1"}),
    "jemalloc": (None, "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
                 {"MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1,retain:true"}),
    "tcmalloc": (None, "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", {"TCMALLOC_RELEASE_RATE": "0"}),
}


def kept_allocator_env(name: str) -> dict[str, str]:
    """LD_PRELOAD and settings of the kept allocator `name` (KEPT_ALLOCATORS); {} where it is not installed."""
    import importlib.metadata

    dist, library, settings = KEPT_ALLOCATORS[name]
    if dist is not None:
        try:
            files = importlib.metadata.distribution(dist).files or ()
        except importlib.metadata.PackageNotFoundError:
            return {}
        found = [f for f in files if str(f).endswith("/" + library)]
        if not found:
            return {}
        library = str(found[0].locate()).replace("\\", "/")
    return {"LD_PRELOAD": str(Path(library).resolve()), **settings} if Path(library).exists() else {}


XLA_VARIANTS = {
    "default": None,
    "xla-kernels": None,
    "glibc-malloc": None,
    "huge-pages-only": None,
    "xla-default": None,
    "heap-reuse": None,
    "mimalloc": None,
    "jemalloc": None,
    "tcmalloc": None,
    "ynn-off": "--xla_cpu_experimental_ynn_fusion_type=",
    "ynn-no-individual-conv": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
    "ynn-dot-eltwise-reduce": "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce",
}


def _run_json(cmd: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    text = proc.stdout
    return json.loads(text[text.index("{"):])


def run_cnn(model: str, batch: int, size: int | None, steps: int, dtype: str, variant: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "CNN_ONEDNN", "CNN_MALLOC_DEFAULTS", "CNN_XLA_DEFAULTS", "GLIBC_TUNABLES",
                        "LD_PRELOAD", "CNN_RELAUNCHED", "MALLOC_CONF", "TCMALLOC_RELEASE_RATE")
           and not k.startswith("MIMALLOC_")}
    env.update(VARIANT_ENV.get(variant, {}))
    if variant in KEPT_ALLOCATORS:
        kept = kept_allocator_env(variant)
        if not kept:
            return {"error": f"{variant} is not installed"}
        env.update(kept)
    flags = XLA_VARIANTS[variant]
    if flags:
        env["XLA_FLAGS"] = flags
    cmd = [sys.executable, "-m", "cnncli.cli", "bench", model, "--batch-size", str(batch), "--steps", str(steps),
           "--dtype", dtype, "--format", "json"]
    if size:
        cmd += ["--input-size", str(size)]
    return _run_json(cmd, env)


def cnn_malloc_env() -> dict[str, str]:
    """What the `cnn` command relaunches itself with (cnncli/entry.py), for PyTorch's process."""
    from cnncli.entry import TUNABLE, _kept_allocator

    path = _kept_allocator()
    return {"LD_PRELOAD": path, "MIMALLOC_PURGE_DELAY": "-1"} if path else {"GLIBC_TUNABLES": TUNABLE}


def run_torch(model: str, batch: int, size: int | None, steps: int, dtype: str, compiled: bool,
              cnn_malloc: bool = False) -> dict:
    cmd = [sys.executable, str(HERE / "torch_reference.py"), model, "--batch-size", str(batch), "--steps", str(steps),
           "--dtype", dtype, "--json"]
    if size:
        cmd += ["--input-size", str(size)]
    if compiled:
        cmd.append("--compile")
    return _run_json(cmd, {**os.environ, **(cnn_malloc_env() if cnn_malloc else {})})


def _parse_models(text: str, batch: int) -> list[tuple[str, int, int | None]]:
    out = []
    for item in text.split(","):
        name, *rest = item.split(":")
        out.append((name, int(rest[0]) if rest else batch, int(rest[1]) if len(rest) > 1 else None))
    return out


def compare(args) -> dict:
    sides = [(f"cnn {v}", "cnn", v) for v in args.xla_variants.split(",")]
    sides.append(("torch eager", "torch", (False, False)))
    if args.torch_compile:
        sides.append(("torch compiled", "torch", (True, False)))
    if args.torch_cnn_malloc:  # PyTorch under the same allocator settings as cnn
        sides.append(("torch eager, cnn malloc", "torch", (False, True)))
        if args.torch_compile:
            sides.append(("torch compiled, cnn malloc", "torch", (True, True)))
    rows = []
    for model, batch, size in _parse_models(args.models, args.batch_size):
        runs: dict[str, list[dict]] = {label: [] for label, _, _ in sides}
        for rep in range(args.repeats):
            for label, kind, opt in sides:
                print(f"[{rep + 1}/{args.repeats}] {model} b{batch}: {label} ...", file=sys.stderr, flush=True)
                if kind == "cnn":
                    r = run_cnn(model, batch, size, args.steps, args.dtype, opt)
                else:
                    r = run_torch(model, batch, size, args.steps, args.dtype, *opt)
                runs[label].append(r)
                if "error" in r:
                    print(f"    failed: {r['error']}", file=sys.stderr)
        ok = {k: [r for r in v if "error" not in r] for k, v in runs.items()}
        best_torch = max((statistics.median(r["images_per_second"] for r in v)
                          for k, v in ok.items() if k.startswith("torch") and v), default=None)
        for label, v in ok.items():
            ips = [r["images_per_second"] for r in v]
            med = statistics.median(ips) if ips else None
            compile_s = [r["compile_time_s"] for r in v if r.get("compile_time_s") is not None]
            rows.append({"model": model, "batch_size": batch, "input_size": (v[0]["input_size"] if v else size),
                         "side": label, "images_per_second": med, "images_per_second_runs": ips,
                         "ratio_vs_best_torch": med / best_torch if med and best_torch else None,
                         "compile_time_s": statistics.median(compile_s) if compile_s else None,
                         "errors": [r["error"] for r in runs[label] if "error" in r],
                         "mfu": v[0].get("mfu") if v else None,
                         "device": v[0].get("device") if v else None})
    return {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "cpus": os.cpu_count(), "load_average": os.getloadavg()}, "rows": rows}


def print_table(report: dict) -> None:
    m = report["machine"]
    print(f"{report['date']}  {m['platform']}  {m['cpus']} CPUs  load {m['load_average'][0]:.2f}")
    print(f"{'model':<10} {'batch':>5} {'size':>4}  {'side':<28} {'img/s':>9} {'cnn/torch':>9} {'compile s':>9}  runs")
    for r in report["rows"]:
        ips = f"{r['images_per_second']:9.1f}" if r["images_per_second"] else f"{'-':>9}"
        ratio = f"{r['ratio_vs_best_torch']:9.2f}" if r["ratio_vs_best_torch"] else f"{'-':>9}"
        comp = f"{r['compile_time_s']:9.1f}" if r["compile_time_s"] is not None else f"{'-':>9}"
        runs = ", ".join(f"{x:.1f}" for x in r["images_per_second_runs"]) or "; ".join(r["errors"])
        print(f"{r['model']:<10} {r['batch_size']:>5} {r['input_size'] or '':>4}  {r['side']:<28} {ips} {ratio} "
              f"{comp}  {runs}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet20")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--torch-cnn-malloc", action="store_true",
                    help="also time PyTorch under the glibc tunable cnn sets (cnncli/entry.py)")
    ap.add_argument("--xla-variants", default="default", help=f"comma list of {', '.join(XLA_VARIANTS)}")
    ap.add_argument("--torch-compile", action="store_true", help="also time torch.compile (its compile time shown)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    unknown = set(args.xla_variants.split(",")) - set(XLA_VARIANTS)
    if unknown:
        ap.error(f"unknown XLA variant(s): {', '.join(sorted(unknown))}")
    report = compare(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
