"""How long `cnn --help` takes, against a bare interpreter, in one run.

Runs, alternating, each in a fresh process with its output discarded:
  - python:        `python -c pass`, the floor any Python command pays;
  - cnn --help:    the `cnn` console script as installed (next to this Python, else on PATH);
  - eager rich:    the same help with rich.markdown and rich.traceback imported first, which
                   is what it cost before cnncli/cli/lazy_imports.py deferred them.
The median of the rounds is the figure; min and max show the spread. Where `cnn` on PATH is a
pyenv shim, the shim's own start-up is counted too: use the venv's `cnn`.

    python benchmarks/startup.py [--rounds 21] [--command "cnn train --help"]
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _cnn_script() -> str:
    beside = Path(sys.executable).with_name("cnn")
    found = str(beside) if beside.exists() else shutil.which("cnn")
    if found is None:
        sys.exit("error: no `cnn` script next to this Python or on PATH (pip install -e .)")
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--command", default="cnn --help", help="a cnn command line to time")
    args = ap.parse_args()
    words = shlex.split(args.command)
    if not words or words[0] != "cnn":
        sys.exit("error: --command must start with `cnn`")
    script = _cnn_script()
    eager = ("import sys, rich.markdown, rich.traceback; from cnncli.entry import main; "
             f"sys.argv = {words!r}; main()")
    variants = {
        "python -c pass": [sys.executable, "-c", "pass"],
        args.command: [script, *words[1:]],
        f"{args.command}, rich eager": [sys.executable, "-c", eager],
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, argv in variants.items():
            start = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            times[name].append(time.perf_counter() - start)
    print(f"script: {script}; {args.rounds} rounds, alternating")
    width = max(map(len, variants))
    for name, ts in times.items():
        print(f"  {name:<{width}}  median {statistics.median(ts):.3f} s   "
              f"min {min(ts):.3f}   max {max(ts):.3f}")


if __name__ == "__main__":
    main()
