"""Native libraries cnn builds once and keeps, and the cache it keeps them in: no jax here.

The helpers that build a library into cnn's cache, atomically and sealed (build.py; the oneDNN
kernels use them), and the one function that names that cache folder (cache.py).
"""
