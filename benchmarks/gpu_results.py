"""Collect one benchmarks/gpu.sh run's outputs into one machine-readable record.

    python benchmarks/gpu_results.py OUT_DIR [--results benchmarks/results]

Reads what gpu.sh left in OUT_DIR (bench.txt, torch_eager.txt, torch_compiled.txt, junit.xml,
real.txt, profile.txt, bnvar.txt: each part's stdout; pytest's junit file) and writes OUT_DIR/gpu-<date>.json, and a copy
into --results when given:

    {"date": ISO 8601, "device": {...}, "versions": {...},
     "resnet50": {"images_per_second", "step_time_ms", "mfu", "vs_torch_compile", "vs_torch_eager"},
     "tests": {"passed", "failed", "skipped"},
     "real_data": {"images_per_second", "vs_synthetic"}, "profile_top": [...]}

A part that did not run or failed gives null for its figures; nothing is invented.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path


def _last_json(path: Path) -> dict | None:
    """The last line of a part's stdout that parses as a JSON object (or the whole text)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for candidate in [text, *reversed(text.splitlines())]:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _tests(junit: Path) -> dict | None:
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    return {"passed": total["tests"] - total["failures"] - total["errors"] - total["skipped"],
            "failed": total["failures"] + total["errors"], "skipped": total["skipped"], "failed_names": failed}


def _tests_from_log(log: Path) -> dict | None:
    """Counts from pytest's -v lines (`PASSED`/`FAILED`/`SKIPPED`/`ERROR` per test) where no junit file was
    written (the run was stopped at its limit): a lower bound, marked incomplete."""
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return None
    seen: dict[str, str] = {}
    for line in lines:
        for outcome in ("PASSED", "FAILED", "SKIPPED", "ERROR", "XFAIL", "XPASS"):
            if f" {outcome} " in f" {line} " and "::" in line:
                name = next((w for w in line.split() if "::" in w), line)
                seen[name] = outcome
                break
    if not seen:
        return None
    out = list(seen.values())
    return {"passed": out.count("PASSED") + out.count("XFAIL"), "failed": out.count("FAILED") + out.count("ERROR"),
            "skipped": out.count("SKIPPED"), "incomplete": True,
            "failed_names": [n for n, o in seen.items() if o in ("FAILED", "ERROR")]}


def _versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax", "orbax-checkpoint",
                 "torch", "cnncli"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _ratio(a, b):
    return a / b if a and b else None


def collect(out: Path, junit: Path) -> dict:
    bench = _last_json(out / "bench.txt") or {}
    eager = _last_json(out / "torch_eager.txt") or {}
    compiled = _last_json(out / "torch_compiled.txt") or {}
    real = _last_json(out / "real.txt") or {}
    profile = _last_json(out / "profile.txt") or {}
    bnvar = _last_json(out / "bnvar.txt") or {}
    ips = bench.get("images_per_second")
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": bench.get("device") or profile.get("device"),
        "versions": _versions(),
        "xla_flags": bench.get("xla_flags"),
        bench.get("model", "resnet50"): {
            "batch_size": bench.get("batch_size"), "dtype": bench.get("dtype"),
            "images_per_second": ips, "step_time_ms": bench.get("step_time_ms"), "mfu": bench.get("mfu"),
            "compile_time_s": bench.get("compile_time_s"),
            "torch_compile_images_per_second": compiled.get("images_per_second"),
            "torch_eager_images_per_second": eager.get("images_per_second"),
            "vs_torch_compile": _ratio(ips, compiled.get("images_per_second")),
            "vs_torch_eager": _ratio(ips, eager.get("images_per_second")),
            "batchnorm_variance_images_per_second": bnvar.get("images_per_second"),
        },
        "tests": _tests(junit) or _tests_from_log(out / "tests.txt"),
        "real_data": {
            "images_per_second": real.get("images_per_second"),
            "vs_synthetic": _ratio(real.get("images_per_second"), ips),
            "source": real.get("source"), "steps": real.get("steps"), "batch_size": real.get("batch_size"),
            "pack_s": real.get("pack_s"), "error": real.get("train_error") or real.get("pack_error"),
        } if real else None,
        "profile_top": (profile.get("profile") or {}).get("top", [])[:15] or None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--results", type=Path, default=None)
    ap.add_argument("--junit", type=Path, default=None, help="pytest's junit file (default: OUT/junit.xml)")
    a = ap.parse_args()
    record = collect(a.out, a.junit or a.out / "junit.xml")
    name = f"gpu-{record['date'][:10]}.json"
    text = json.dumps(record, indent=1) + "\n"
    (a.out / name).write_text(text)
    if a.results is not None:
        a.results.mkdir(parents=True, exist_ok=True)
        (a.results / name).write_text(text)
    model = next(k for k in record if isinstance(record[k], dict) and "vs_torch_compile" in record[k])
    print(f"wrote {a.out / name}: {model} {json.dumps(record[model])}, tests {json.dumps(record['tests'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
