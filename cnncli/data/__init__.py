"""Data sources, device-side transforms and the batching pipeline. Knows nothing of models."""
