"""Importing cnn changes nothing: no environment variable, no file, no compiler run; its cache folder
is named one way, and where none can be named there is no cache and no error."""

import json
import os
import subprocess
import sys

import pytest

from cnncli.native import cache
from cnncli.native.cache import cache_dir, cache_root

IMPORT_ALL = r"""
import importlib, json, os, pkgutil, sys
before = dict(os.environ)
import cnncli
names = [m.name for m in pkgutil.walk_packages(cnncli.__path__, "cnncli.") if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
import jax, jax.numpy as jnp
from cnncli.models import create_model
model = create_model("resnet20", num_classes=10, input_shape=(16, 16, 3), seed=0)  # runs every Conv once
model.eval()
jax.jit(lambda x: model(x)).lower(jnp.zeros((2, 16, 16, 3))).compile()
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
print(json.dumps({"modules": len(names), "changed": changed, "xla_flags": os.environ.get("XLA_FLAGS")}))
"""


def _compilers(folder, marker):
    folder.mkdir()
    for name in ("g++", "c++", "gcc", "cc"):
        path = folder / name
        path.write_text(f"#!/bin/sh\necho {name} >> {marker}\nexit 1\n")
        path.chmod(0o755)


@pytest.mark.slow
def test_importing_every_module_and_tracing_a_model_changes_nothing(tmp_path):
    home, marker = tmp_path / "home", tmp_path / "compilers-run"
    home.mkdir()
    (tmp_path / "tmp").mkdir()
    _compilers(tmp_path / "bin", marker)
    env = {k: v for k, v in os.environ.items()
           if k not in ("XDG_CACHE_HOME", "CNN_CACHE_DIR", "XLA_FLAGS", "CXX", "CC", "LD_PRELOAD", "CNN_RELAUNCHED")}
    # matplotlib (imported by cnncli.plots) keeps its own font cache: its doing, kept out of HOME here
    env.update(HOME=str(home), JAX_PLATFORMS="cpu", TMPDIR=str(tmp_path / "tmp"), MPLCONFIGDIR=str(tmp_path / "mpl"),
               PATH=f"{tmp_path / 'bin'}:{env.get('PATH', '')}")
    proc = subprocess.run([sys.executable, "-c", IMPORT_ALL], env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["modules"] > 50
    assert report["changed"] == [] and report["xla_flags"] is None
    assert not marker.exists()  # no compiler ran
    assert [p for p in home.rglob("*")] == []  # nothing written under HOME
    assert [p for p in (tmp_path / "tmp").rglob("*")] == []


def test_one_cache_folder_named_one_way(monkeypatch):
    assert cache_root({"CNN_CACHE_DIR": "/c", "XDG_CACHE_HOME": "/x", "HOME": "/h"}) == cache.Path("/c")
    assert cache_root({"XDG_CACHE_HOME": "/x", "HOME": "/h"}) == cache.Path("/x/cnn")
    assert cache_dir("jax", {"HOME": "/h"}) == cache.Path("/h/.cache/cnn/jax")
    for env in ({"CNN_CACHE_DIR": "relative"}, {"HOME": ""}, {"HOME": "relative/home"}):
        assert cache_root(env) is None, env
    import pwd

    def no_entry(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)  # HOME unset, and a user without a passwd entry
    assert cache_root({}) is None and cache_dir("kernels", {}) is None


def test_no_home_and_no_passwd_entry_means_no_cache_and_no_error(monkeypatch):
    """The same, in this process: the jaxlib look-up goes on without a cache file."""
    import pwd

    from cnncli import xla_flags

    def no_entry(uid):
        raise KeyError(uid)

    for name in ("HOME", "XDG_CACHE_HOME", "CNN_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    assert xla_flags._cache_file() is None
    assert xla_flags.jaxlib_knows("xla_force_host_platform_device_count")
    assert not xla_flags.jaxlib_knows("xla_cpu_no_such_flag_in_any_jaxlib")


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to run as a user without a passwd entry")
def test_a_user_without_home_or_passwd_entry_gets_the_defaults_without_a_cache():
    import pwd

    uid = 54321
    while True:
        try:
            pwd.getpwuid(uid)
            uid += 1
        except KeyError:
            break
    code = ("import os, cnncli; from cnncli.native.cache import cache_root\n"
            "from cnncli.xla_flags import jaxlib_knows\n"
            "print(cache_root(), jaxlib_knows('xla_force_host_platform_device_count'))\n"
            "print(cnncli.apply_cpu_defaults(kernels=False)['kernels'])")
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "XDG_CACHE_HOME", "CNN_CACHE_DIR", "XLA_FLAGS")}
    env["JAX_PLATFORMS"] = "cpu"
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                              check=False, user=uid, cwd="/")
    except PermissionError:
        pytest.skip("this Python is not readable by another user")
    if proc.returncode != 0 and "Permission denied" in proc.stderr:
        pytest.skip("this checkout is not readable by another user")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["None", "True", "None"]
    assert proc.stderr == ""
