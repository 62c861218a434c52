"""What a prepared dataset holds, as plain data (for `cnn data` and the run directory)."""

from __future__ import annotations

from cnncli.data.dataset import Dataset


def describe_dataset(data: Dataset) -> dict:
    """Source, location, split sizes, classes with per-split counts, image shape, normalisation."""
    splits = ("train", "val", "test")
    counts = {s: data.class_counts(s) for s in splits}
    held_out = [s for s in ("val", "test") if f"{s}_indices" in data.split_info]
    return {
        "source": data.source,
        "path": data.path,
        "description": data.description,
        "file_backed": data.file_backed,
        "sizes": data.sizes(),
        "held_out": held_out,  # splits carved out of the source's training set (seeded)
        "split_seed": data.split_info.get("split_seed"),
        "image_shape": list(data.image_shape),
        "num_classes": data.num_classes,
        "classes": [{"index": i, "name": name, **{s: counts[s][i] for s in splits}}
                    for i, name in enumerate(data.class_names)],
        "mean": data.mean,
        "std": data.std,
        "stats_from": data.stats_from,
        "notes": list(data.notes),
    }
