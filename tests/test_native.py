"""The large-block cache the `cnn` command preloads (cnncli/native/large_blocks.c), through libc's
own entry points in a process that preloads it."""

import os
import subprocess
import sys

import pytest

from cnncli.native.build import intact
from cnncli.native.large_blocks import library

PROGRAM = r"""
import ctypes
libc = ctypes.CDLL(None)
vp, sz = ctypes.c_void_p, ctypes.c_size_t
for name, res, args in (("malloc", vp, [sz]), ("calloc", vp, [sz, sz]), ("realloc", vp, [vp, sz]),
                        ("free", None, [vp]), ("malloc_usable_size", sz, [vp]),
                        ("posix_memalign", ctypes.c_int, [ctypes.POINTER(vp), sz, sz]),
                        ("reallocarray", vp, [vp, sz, sz])):
    getattr(libc, name).restype, getattr(libc, name).argtypes = res, args
M = 1 << 20

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / M

def same(p, n, byte):
    return ctypes.string_at(p, n) == bytes([byte]) * n

a = libc.malloc(100 * M)
ctypes.memset(a, 7, 100 * M)
libc.free(a)
b = libc.malloc(60 * M)
print("reused", b == a)  # the freed block, kept mapped
libc.free(b)
c = libc.calloc(50 * M, 1)
print("calloc_zero", c == a and same(c, 50 * M, 0))  # a kept block is cleared for calloc
ctypes.memset(c, 5, 50 * M)
d = libc.realloc(c, 150 * M)
print("realloc_keeps", d != c and same(d, 50 * M, 5) and libc.malloc_usable_size(d) >= 150 * M)
p = vp()
e = libc.reallocarray(d, 200, M)
print("reallocarray_keeps", e != d and same(e, 50 * M, 5))
d = e
print("aligned", libc.posix_memalign(ctypes.byref(p), 1 << 16, 40 * M) == 0 and p.value % (1 << 16) == 0)
small = libc.malloc(100)
print("small_is_glibcs", small is not None and abs(small - a) > (1 << 42) // 2 and libc.malloc_usable_size(small) >= 100)
for q in (small, p.value, d):
    libc.free(q)
x, y = libc.malloc(100 * M), libc.malloc(100 * M)
ctypes.memset(x, 1, 100 * M); ctypes.memset(y, 1, 100 * M)
libc.free(x); libc.free(y)  # 350 MB kept (the peak so far), 200 MB of it written by x and y
before = rss()
z = libc.malloc(300 * M)  # fits no kept block: with 300 MB new, 350 kept would pass the peak; both go back
ctypes.memset(z, 2, 300 * M)
print("bounded", rss() - before < 200, round(rss() - before))  # 300 if nothing went back
libc.free(z)
print("realloc_null", libc.realloc(None, 64 * M) is not None)
"""


@pytest.fixture(scope="module")
def preloaded():
    path = library()
    if path is None:
        pytest.skip("needs Linux and a C compiler")
    return path


def test_large_blocks_are_reused_cleared_and_bounded(preloaded):
    assert intact(preloaded)
    env = {**os.environ, "LD_PRELOAD": str(preloaded)}
    proc = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
    assert all(v.split()[0] == "True" for v in results.values()), results


def test_without_the_preload_libc_gives_fresh_blocks():
    """The program's checks are the cache's doing: glibc alone neither reuses nor clears that way."""
    proc = subprocess.run([sys.executable, "-c", PROGRAM], env={**os.environ, "LD_PRELOAD": ""},
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "reused False" in proc.stdout and "calloc_zero False" in proc.stdout


def test_no_cache_without_a_compiler_or_a_writable_folder(tmp_path, monkeypatch):
    """Then `cnn` goes on with glibc's allocator: None, no exception, nothing half-built left."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "/bin/false")
    assert library() is None
    assert not list((tmp_path / "cache").rglob("*.so*"))
    monkeypatch.delenv("CC")
    (tmp_path / "file").write_text("a file where the folder should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    assert library() is None
