"""The table of data sources: the one place that names them.

Each entry says which function loads the source, the image shape its format fixes, the size it
is trained at by default and whether its splits are file paths decoded batch by batch. The
config's `data.source` choices, the expected-shape lookup (`expected_shape`, used before any
file is read, e.g. by `cnn summarize`) and the default image sizes all come from this table.

This module is a leaf: it imports nothing heavy and nothing of cnncli but the errors, so the
config schema can read the source names from it. Loaders are named as "module:function" and
imported only when their source is loaded (`cnncli.data.sources.load_source`); each takes the
`data:` config and returns a `cnncli.data.dataset.SourceData`.

Adding a dataset: one entry below plus its loader.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from cnncli.errors import DataError

# (image size, channels, classes); None where the files decide
Shape = tuple[int | None, int | None, int | None]


@dataclasses.dataclass(frozen=True)
class Source:
    """One data source."""

    name: str
    loader: str  # "module:function", called with the `data:` config
    native: Shape | Callable[[Any], Shape]  # fixed by the format, or computed from the `data:` config
    default_size: int | None = None  # trained at this size unless data.image_size says; None = native
    file_backed: bool = False  # splits hold image file paths, decoded on the host per batch

    def native_shape(self, data_cfg: Any) -> Shape:
        return self.native(data_cfg) if callable(self.native) else self.native


def _cifar100(d) -> Shape:
    return 32, 3, 20 if d.label == "coarse" else 100


def _packed(d) -> Shape:
    """What the pack at data.path was made for, from its small manifest (Nones without one): the input
    size of the config it was packed from (not the stored side), its channels and classes."""
    import json
    from pathlib import Path

    try:
        m = json.loads((Path(d.path).expanduser() / "manifest.json").read_text()) if d.path else None
    except (OSError, ValueError):
        m = None
    if not isinstance(m, dict):
        return None, None, None
    size, channels, classes = m.get("image_size"), m.get("channels"), m.get("class_names")
    return (size if isinstance(size, int) else None, channels if isinstance(channels, int) else None,
            len(classes) if isinstance(classes, list) and classes else None)


def _synthetic(d) -> Shape:
    return d.image_size or 32, d.channels or 3, d.num_classes


_TABLE = (
    # the embedded default, 8x8 like scikit-learn ships it; trained at 32 so every model fits it
    Source("digits", "cnncli.data.sources:load_digits", (8, 1, 10), default_size=32),
    Source("mnist", "cnncli.data.idx:load_idx_source", (28, 1, 10)),
    Source("fashion_mnist", "cnncli.data.idx:load_idx_source", (28, 1, 10)),
    Source("kmnist", "cnncli.data.idx:load_idx_source", (28, 1, 10)),
    Source("cifar10", "cnncli.data.cifar:load_cifar_source", (32, 3, 10)),
    Source("cifar100", "cnncli.data.cifar:load_cifar_source", _cifar100),
    # images of any size: decoded to 224 (the ImageNet models' input), RGB unless data.channels says
    Source("folder", "cnncli.data.folder:load_folder_source", (None, 3, None), default_size=224, file_backed=True),
    Source("npz", "cnncli.data.npz:load_npz_source", (None, None, None)),
    # written once by `cnn data pack` (ArrayRecord): every split, at the input size it was packed for
    Source("packed", "cnncli.data.packed:load_packed_source", _packed, file_backed=True),
    Source("synthetic", "cnncli.data.sources:load_synthetic", _synthetic),
)

SOURCES: dict[str, Source] = {s.name: s for s in _TABLE}
SOURCE_NAMES: tuple[str, ...] = tuple(SOURCES)


def get_source(name: str) -> Source:
    """The table entry for `name`; DataError naming the known sources otherwise."""
    try:
        return SOURCES[name]
    except KeyError:
        raise DataError(f"unknown data source {name!r}: expected one of {', '.join(SOURCE_NAMES)}") from None


def default_image_size(name: str) -> int | None:
    """The size `name` is trained at when data.image_size is unset (None: the images' own size)."""
    return get_source(name).default_size


def expected_shape(data_cfg: Any) -> Shape:
    """(image size, channels, classes) that preparing the `data:` config will produce, known without
    reading files; None for what only the files can tell (a folder's classes, an npz archive's arrays)."""
    spec = get_source(data_cfg.source)
    size, channels, classes = spec.native_shape(data_cfg)
    return data_cfg.image_size or spec.default_size or size, data_cfg.channels or channels, classes
