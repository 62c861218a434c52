"""The `cnn` command relaunches itself once under glibc's huge-page tunable, where that pays."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnncli import entry, xla_flags
from cnncli.entry import TUNABLE, relaunch_argv


@pytest.fixture
def suitable(monkeypatch):
    monkeypatch.setattr(entry, "_glibc_version", lambda: (2, 36))
    monkeypatch.setattr(entry, "_thp_mode", lambda: "madvise")
    monkeypatch.setattr(entry, "_large_block_cache", lambda: "/cache/large-blocks.so")
    monkeypatch.setattr(xla_flags, "cpu_will_run", lambda environ: True)
    monkeypatch.setattr(sys, "orig_argv", ["python", "/venv/bin/cnn", "train", "x.yaml"], raising=False)
    monkeypatch.setattr(sys, "argv", ["/venv/bin/cnn", "train", "x.yaml"])


def test_relaunch_only_where_it_pays(suitable, monkeypatch):
    env = {}
    assert relaunch_argv(env) == ["python", "/venv/bin/cnn", "train", "x.yaml"]
    assert env["GLIBC_TUNABLES"] == TUNABLE and env["LD_PRELOAD"] == "/cache/large-blocks.so"
    assert relaunch_argv(env) is None  # once: the relaunched process goes on
    env = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    relaunch_argv(env)
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{TUNABLE}"  # the user's own tunables kept
    env = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}  # the user's choice of huge pages kept
    assert relaunch_argv(env) and env == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0",
                                          "LD_PRELOAD": "/cache/large-blocks.so", "CNN_RELAUNCHED": "1"}
    for env in ({"CNN_MALLOC_DEFAULTS": "0"}, {"LD_PRELOAD": "/usr/lib/libjemalloc.so"}):
        assert relaunch_argv(env) is None
    for attr, value, want in (("_glibc_version", lambda: (2, 31), {"LD_PRELOAD"}),  # too old for the tunable
                              ("_glibc_version", lambda: None, None),  # not glibc: neither
                              ("_thp_mode", lambda: "always", {"LD_PRELOAD"}),
                              ("_thp_mode", lambda: "never", {"LD_PRELOAD"}),
                              ("_large_block_cache", lambda: None, {"GLIBC_TUNABLES"})):  # no compiler
        with monkeypatch.context() as m:
            m.setattr(entry, attr, value)
            env = {}
            argv = relaunch_argv(env)
            assert (argv is None) == (want is None)
            assert set(env) - {"CNN_RELAUNCHED"} == (want or set())
    with monkeypatch.context() as m:
        m.setattr(entry, "_thp_mode", lambda: "never")
        m.setattr(entry, "_large_block_cache", lambda: None)
        assert relaunch_argv({}) is None  # nothing to gain
    for args in ([], ["--help"], ["-h"]):  # help alone computes nothing
        with monkeypatch.context() as m:
            m.setattr(sys, "argv", ["/venv/bin/cnn", *args])
            assert relaunch_argv({}) is None
    monkeypatch.setattr(xla_flags, "cpu_will_run", lambda environ: False)  # a GPU will run
    assert relaunch_argv({}) is None


def _here_it_pays() -> bool:
    return (sys.platform == "linux" and (entry._glibc_version() or (0, 0)) >= (2, 35)
            and entry._thp_mode() == "madvise")


FAULTS = r"""
import os, sys
from cnncli.entry import relaunch_argv
sys.argv = ["cnn", "train"]  # as `cnn train` would: help alone does not relaunch
argv = relaunch_argv(os.environ)
if argv:
    os.execv(sys.executable, argv)
import resource, jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sum(jnp.cumsum(x, axis=0) * 2))  # 32 MB temporary buffers per call
x = jax.random.normal(jax.random.key(0), (2048, 4096))
for _ in range(3):
    f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    f(x).block_until_ready()
print(os.environ.get("GLIBC_TUNABLES", ""), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def _run(args, **env):
    environ = {k: v for k, v in os.environ.items()
               if k not in ("GLIBC_TUNABLES", "CNN_MALLOC_DEFAULTS", "LD_PRELOAD", "CNN_RELAUNCHED")}
    environ.update(JAX_PLATFORMS="cpu", **env)
    return subprocess.run([sys.executable, *args], env=environ, capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.mark.slow
def test_relaunched_steps_fault_per_huge_page_and_then_not_at_all():
    """glibc's own way maps each call's temporary buffers afresh, 4 KiB per fault (24,579 faults here).
    Under the huge-page tunable alone the kernel backs them with 2 MiB pages where it has them free
    (562 here): how many it has free depends on the machine's fragmentation (for one sort, this
    machine faulted 19 times and a CI machine 529, against 8,193), so four times fewer is asked.
    With the large-block cache too (what `cnn` does), the blocks stay mapped: about no faults."""
    if not _here_it_pays():
        pytest.skip("needs Linux, glibc >= 2.35 and transparent huge pages in madvise mode")
    faults = {}
    for name, env in (("cnn", {}), ("tunable", {"CNN_MALLOC_DEFAULTS": "0", "GLIBC_TUNABLES": TUNABLE}),
                      ("glibc", {"CNN_MALLOC_DEFAULTS": "0"})):
        proc = _run(["-c", FAULTS], **env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        tunables, count = proc.stdout.split()[-2:] if name != "glibc" else ("", proc.stdout.split()[-1])
        faults[name] = float(count)
        assert tunables == (TUNABLE if name != "glibc" else "")
    assert faults["glibc"] > 8000  # 32 MB in 4 KiB pages at least
    assert faults["tunable"] < 0.25 * faults["glibc"]
    assert faults["cnn"] < 50, faults


@pytest.mark.slow
def test_the_cnn_command_relaunches_itself():
    if not _here_it_pays():
        pytest.skip("needs Linux, glibc >= 2.35 and transparent huge pages in madvise mode")
    proc = _run(["-m", "cnncli.cli", "bench", "resnet20", "--batch-size", "4", "--input-size", "8", "--steps", "1",
                 "--format", "json"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["glibc_tunables"] == TUNABLE
    assert Path(report["ld_preload"]).name.startswith("large-blocks-")
