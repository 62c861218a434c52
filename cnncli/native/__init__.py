"""Native code cnn compiles on first use, and the cache it keeps it in: no jax here.

The large-block cache that the `cnn` command preloads (large_blocks.c) and the helpers that
build any of cnn's libraries into cnn's cache (build.py; the oneDNN kernels use them too), and the
one function that names that cache folder (cache.py).
"""
