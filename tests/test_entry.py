"""The `cnn` command relaunches itself once under a kept allocator (mimalloc) or glibc's huge-page
tunable, where that pays, and only the relaunched process runs under them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnncli import entry, xla_flags
from cnncli.entry import RELAUNCHED, TUNABLE, computing_command, relaunch_env, restore_user_environment


@pytest.fixture
def suitable(monkeypatch):
    monkeypatch.setattr(entry, "_glibc_version", lambda: (2, 36))
    monkeypatch.setattr(entry, "_thp_mode", lambda: "madvise")
    monkeypatch.setattr(entry, "_kept_allocator", lambda: "/venv/libmimalloc.so")
    monkeypatch.setattr(xla_flags, "cpu_will_run", lambda environ: True)
    monkeypatch.setattr(sys, "orig_argv", ["python", "/venv/bin/cnn", "train", "x.yaml"], raising=False)
    monkeypatch.setattr(sys, "argv", ["/venv/bin/cnn", "train", "x.yaml"])


def _added(env: dict) -> dict:
    """What relaunch_env adds or changes, the record of the user's values aside; and that it left env alone."""
    before = dict(env)
    new = relaunch_env(env)
    assert env == before  # the parent's environment is never changed
    if new is None:
        return None
    saved = json.loads(new.pop(RELAUNCHED))
    assert saved == {k: before.get(k) for k in saved}  # the user's values, to restore after the exec
    return {k: v for k, v in new.items() if before.get(k) != v}


MIMALLOC = {"LD_PRELOAD": "/venv/libmimalloc.so", "MIMALLOC_PURGE_DELAY": "-1"}


def test_relaunch_only_where_it_pays(suitable, monkeypatch):
    assert _added({}) == MIMALLOC
    assert _added({"MIMALLOC_PURGE_DELAY": "10"}) == {"LD_PRELOAD": "/venv/libmimalloc.so"}  # the user's kept
    assert relaunch_env({RELAUNCHED: "{}"}) is None  # once: the relaunched process goes on
    for env in ({"CNN_MALLOC_DEFAULTS": "0"}, {"LD_PRELOAD": "/usr/lib/libjemalloc.so"}):
        assert relaunch_env(env) is None
    monkeypatch.setattr(entry, "_kept_allocator", lambda: None)  # mimalloc not installed: the tunable
    assert _added({}) == {"GLIBC_TUNABLES": TUNABLE}
    assert _added({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == {
        "GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:{TUNABLE}"}  # the user's own tunables kept
    assert relaunch_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None  # the user's choice kept
    for attr, value in (("_glibc_version", lambda: (2, 31)), ("_glibc_version", lambda: None),
                        ("_thp_mode", lambda: "always"), ("_thp_mode", lambda: "never")):
        with monkeypatch.context() as m:
            m.setattr(entry, attr, value)
            assert relaunch_env({}) is None
    monkeypatch.setattr(entry, "_kept_allocator", lambda: "/venv/libmimalloc.so")
    for args in ([], ["--help"], ["-h"], ["train", "--help"], ["bench", "resnet20", "-h"], ["--debug", "eval", "-h"],
                 ["runs"], ["summarize", "resnet20"], ["models"]):  # help, and commands that compute nothing
        with monkeypatch.context() as m:
            m.setattr(sys, "argv", ["/venv/bin/cnn", *args])
            assert relaunch_env({}) is None, args
    monkeypatch.setattr(entry, "_glibc_version", lambda: None)  # not glibc
    assert relaunch_env({}) is None
    monkeypatch.setattr(entry, "_glibc_version", lambda: (2, 36))
    monkeypatch.setattr(xla_flags, "cpu_will_run", lambda environ: False)  # a GPU will run
    assert relaunch_env({}) is None


def test_which_commands_compute():
    assert [computing_command(a.split()) for a in ("train x.yaml", "--debug eval runs/a", "bench resnet20",
                                                   "predict r i.png", "show filters r")] == [True] * 5
    assert [computing_command(a.split()) for a in ("", "--help", "train --help", "runs", "models", "data c.yaml",
                                                   "plot a", "summarize resnet50", "weights export r -o f")] == [False] * 9


def test_the_relaunched_process_gives_its_children_the_users_environment():
    env = {"PATH": "/bin", "GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:{TUNABLE}", "LD_PRELOAD": "/c/lb.so",
           RELAUNCHED: json.dumps({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "LD_PRELOAD": None})}
    restore_user_environment(env)
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}


def test_a_failed_exec_changes_nothing(suitable, monkeypatch):
    import cnncli.cli
    import cnncli.cpu_defaults

    tried, ran = [], []

    def failing_exec(path, argv, env):
        tried.append(env)
        raise OSError(8, "Exec format error")

    monkeypatch.setattr(os, "execve", failing_exec)
    monkeypatch.setattr(cnncli.cli, "main", lambda: ran.append("cli"))
    monkeypatch.setattr(cnncli.cpu_defaults, "apply_cpu_defaults", lambda kernels: ran.append(kernels))
    for k in ("LD_PRELOAD", "CNN_MALLOC_DEFAULTS", RELAUNCHED):
        monkeypatch.delenv(k, raising=False)
    before = dict(os.environ)
    entry.main()
    assert tried and tried[0]["LD_PRELOAD"] == "/venv/libmimalloc.so"
    assert dict(os.environ) == before and ran == [True, "cli"]


def _here_it_pays() -> bool:
    return (sys.platform == "linux" and (entry._glibc_version() or (0, 0)) >= (2, 35)
            and entry._thp_mode() == "madvise")


FAULTS = r"""
import json, os, sys
from cnncli.entry import RELAUNCHED, relaunch_env, restore_user_environment
sys.argv = ["cnn", "train"]  # as `cnn train` would: help alone does not relaunch
if RELAUNCHED in os.environ:
    restore_user_environment(os.environ)  # what `cnn` does first thing after its relaunch
else:
    env = relaunch_env(os.environ)
    if env:
        os.execve(sys.executable, sys.orig_argv, env)
import resource, jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sum(jnp.cumsum(x, axis=0) * 2))  # 32 MB temporary buffers per call
x = jax.random.normal(jax.random.key(0), (2048, 4096))
for _ in range(3):
    f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    f(x).block_until_ready()
started = dict(e.split("=", 1) for e in open("/proc/self/environ").read().split("\0") if "=" in e)
print(json.dumps({"started": {k: started.get(k, "") for k in ("GLIBC_TUNABLES", "LD_PRELOAD")},
                  "now": {k: os.environ.get(k, "") for k in ("GLIBC_TUNABLES", "LD_PRELOAD", "MIMALLOC_PURGE_DELAY")},
                  "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5}))
"""


def _run(args, **env):
    environ = {k: v for k, v in os.environ.items()
               if k not in ("GLIBC_TUNABLES", "CNN_MALLOC_DEFAULTS", "LD_PRELOAD", "CNN_RELAUNCHED",
                            "MIMALLOC_PURGE_DELAY")}
    environ.update(JAX_PLATFORMS="cpu", **env)
    return subprocess.run([sys.executable, *args], env=environ, capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.mark.slow
def test_relaunched_steps_fault_per_huge_page_and_then_not_at_all():
    """glibc's own way maps each call's temporary buffers afresh, 4 KiB per fault (24,579 faults here).
    Under the huge-page tunable alone the kernel backs them with 2 MiB pages where it has them free
    (562 here): how many it has free depends on the machine's fragmentation (for one sort, this
    machine faulted 19 times and a CI machine 529, against 8,193), so four times fewer is asked.
    Under mimalloc with its purge delay off (what `cnn` does where it is installed), the blocks stay
    mapped: about no faults. The relaunched process's own environment is the user's again."""
    if not _here_it_pays():
        pytest.skip("needs Linux, glibc >= 2.35 and transparent huge pages in madvise mode")
    mimalloc = entry._kept_allocator()
    runs = {}
    for name, env in (("cnn", {}), ("tunable", {"CNN_MALLOC_DEFAULTS": "0", "GLIBC_TUNABLES": TUNABLE}),
                      ("glibc", {"CNN_MALLOC_DEFAULTS": "0"})):
        proc = _run(["-c", FAULTS], **env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert runs["glibc"]["faults"] > 8000  # 32 MB in 4 KiB pages at least
    assert runs["tunable"]["faults"] < 0.25 * runs["glibc"]["faults"]
    assert runs["tunable"]["started"] == {"GLIBC_TUNABLES": TUNABLE, "LD_PRELOAD": ""}
    assert runs["cnn"]["now"] == {"GLIBC_TUNABLES": "", "LD_PRELOAD": "", "MIMALLOC_PURGE_DELAY": ""}
    if mimalloc:
        assert runs["cnn"]["started"] == {"GLIBC_TUNABLES": "", "LD_PRELOAD": mimalloc}
        assert runs["cnn"]["faults"] < 50, runs
    else:
        assert runs["cnn"]["started"] == {"GLIBC_TUNABLES": TUNABLE, "LD_PRELOAD": ""}


@pytest.mark.slow
def test_the_cnn_command_relaunches_itself():
    if not _here_it_pays():
        pytest.skip("needs Linux, glibc >= 2.35 and transparent huge pages in madvise mode")
    proc = _run(["-m", "cnncli.cli", "bench", "resnet20", "--batch-size", "4", "--input-size", "8", "--steps", "1",
                 "--format", "json"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    mimalloc = entry._kept_allocator()
    assert (report["ld_preload"], report["glibc_tunables"]) == ((mimalloc, "") if mimalloc else ("", TUNABLE))


@pytest.mark.slow
def test_the_allocator_changes_no_number():
    """Three ResNet-20 training steps under mimalloc (as `cnn` preloads it) and under glibc's malloc:
    the same losses and weights, bit for bit."""
    mimalloc = entry._kept_allocator()
    if mimalloc is None:
        pytest.skip("mimalloc (the `cpu` extra) is not installed")
    from tests.three_steps import run_three_steps

    kept = run_three_steps(LD_PRELOAD=mimalloc, MIMALLOC_PURGE_DELAY="-1", CNN_MALLOC_DEFAULTS="0")
    glibc = run_three_steps(LD_PRELOAD="", CNN_MALLOC_DEFAULTS="0")
    assert kept["kernels"] == glibc["kernels"]
    assert kept["losses"] == glibc["losses"]
    assert len(kept["params"]) == len(glibc["params"])
    assert all(np.array_equal(a, b) for a, b in zip(kept["params"], glibc["params"]))  # every value, bit for bit
