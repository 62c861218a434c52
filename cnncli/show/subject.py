"""What `cnn show` looks at: a model (trained run or untrained by name) and an image prepared for it.

A run directory (or a checkpoint step directory) is restored with its evaluation graph,
real parameters and BatchNorm statistics; a registered model name builds the untrained
model (seed 0). An image goes through what `cnn predict` does to it (cnncli.predict):
the same reading (cnncli.data.files.read_image), channel conversion, resize and centre crop
(fit_to_input), or the folder loader's own decoding for runs trained on image folders, then the evaluation normalisation with the
run's data.json mean and std. An untrained model has no data statistics: its pixels are
scaled to [0, 1] and normalised with mean 0.5, std 0.5.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.config.schema import MAX_IMAGE_SIDE
from cnncli.errors import ConfigError, DataError

UNTRAINED_MEAN, UNTRAINED_STD = 0.5, 0.5


@dataclasses.dataclass
class Subject:
    """A model ready for inspection, in evaluation mode."""

    model: Any  # nnx.Module with real parameters, eval mode
    name: str  # model name
    source: str  # the run path, or "untrained"
    input_shape: tuple[int, int, int]
    class_names: list[str]
    mean: list[float]
    std: list[float]
    folder: bool = False  # trained on an image folder: decode images as its loader did

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    def class_name(self, index: int) -> str:
        return self.class_names[index] if index < len(self.class_names) else f"class_{index}"


def _load_checkpoint_model(path: str | Path, which: str, overrides: list[str] | None):
    """The run's restored model (the one place cnn show touches cnncli.evaluate)."""
    from cnncli.evaluate import load_checkpoint_model

    return load_checkpoint_model(path, which, overrides)


def subject_of(loaded: Any) -> Subject:
    """The Subject of a restored run (cnncli.evaluate.LoadedModel): its evaluation graph, real parameters
    and BatchNorm statistics, and the run's data statistics."""
    from flax import nnx

    p = loaded.parts
    model = nnx.merge(p.eval_graph, loaded.params, loaded.batch_stats, p.rng_state)
    m = loaded.config.model
    c = m.in_channels
    mean = loaded.mean if loaded.mean is not None else [UNTRAINED_MEAN] * c
    std = loaded.std if loaded.std is not None else [UNTRAINED_STD] * c
    return Subject(model, m.name, str(loaded.run_path), (m.input_size, m.input_size, c),
                   list(loaded.class_names), list(mean), list(std), loaded.config.data.source in ("folder", "packed"))


def load_subject(target: str | Path, *, which: str = "best", overrides: list[str] | None = None,
                 input_size: int | None = None, channels: int | None = None,
                 num_classes: int | None = None) -> Subject:
    """A run directory / checkpoint step directory, or a registered model name (untrained)."""
    path = Path(target)
    if path.exists():
        if input_size is not None or channels is not None or num_classes is not None:
            raise ConfigError("--input-size, --channels and --num-classes apply to a model name, not to a run "
                              f"({path}); a run's model has the shape it was trained with")
        return subject_of(_load_checkpoint_model(path, which, overrides))
    from cnncli.models import create_model, list_models

    if str(target) not in list_models():
        from cnncli.errors import did_you_mean

        raise ConfigError(f"{target} is neither a run directory nor a model name (see `cnn models`)"
                          f"{did_you_mean(str(target), list_models())}")
    model = create_model(str(target), num_classes=num_classes,
                         input_shape=None if input_size is None and channels is None else
                         _untrained_shape(str(target), input_size, channels))
    model.eval()
    shape = tuple(int(v) for v in model.input_shape)
    return Subject(model, str(target), "untrained", shape, [], [UNTRAINED_MEAN] * shape[2],
                   [UNTRAINED_STD] * shape[2])


def _untrained_shape(name: str, input_size: int | None, channels: int | None) -> tuple[int, int, int]:
    from cnncli.models import get_spec

    h, _, c = get_spec(name).default_input
    size = h if input_size is None else input_size  # 0 is a size to refuse, not "the default"
    if size > MAX_IMAGE_SIDE:
        raise ConfigError(f"--input-size {size} is larger than {MAX_IMAGE_SIDE}, the largest model.input_size a "
                          "config takes")
    return (size, size, c if channels is None else channels)


# Float32 copies of every stored activation (the summary's count) a pass holds at its peak: the forward's
# outputs (features), plus what the backward pass keeps and the gradients it makes (Grad-CAM). Measured
# (2-core CPU VM, peak RSS above a 32x32 run's): Grad-CAM of resnet18 at 512 1.1x, at 1024 1.6x, resnet20
# at 1024 1.4x the activations' float32 bytes; the bounds below leave room above those.
PASS_COPIES = {"features": 2, "cam": 3}


def check_memory(subject: Subject, rows: list[dict[str, Any]], command: str, images: int = 1) -> None:
    """Refuse up front, saying how much it needs, a pass over `images` images (one batch) that cannot fit in
    the memory available now."""
    from cnncli.summary.memory import format_bytes

    h, w, c = subject.input_shape
    activations = h * w * c + sum(int(r["activations"]) for r in rows)
    need = 4 * images * (PASS_COPIES[command] * activations + 2 * h * w * c)  # + each image as uint8 and float32
    free = available_memory()
    if free is not None and need > free:
        on, fewer = (f" on {images} images", " or fewer images") if images > 1 else ("", "")
        raise ConfigError(f"cnn show {command} of {subject.name} at {h}x{w}{on} needs about {format_bytes(need)} of "
                          f"memory, more than the {format_bytes(free)} available; use a smaller --input-size{fewer}")


def available_memory() -> int | None:
    """Bytes the computation can still take: the accelerator's free memory, or the host's MemAvailable."""
    import jax

    device = jax.local_devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if stats.get("bytes_limit"):
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def prepare_image(subject: Subject, image: str | Path) -> tuple[np.ndarray, Any]:
    """(uint8 [H, W, C] as the model sees it, normalised float32 [1, H, W, C])."""
    import jax.numpy as jnp

    from cnncli.data.augment import preprocess_eval
    from cnncli.predict import prepare_images

    h, _, c = subject.input_shape
    fitted = prepare_images([image], h, c, folder=subject.folder)[0]  # exactly as `cnn predict` prepares it
    x = preprocess_eval(jnp.asarray(fitted[None]), jnp.asarray(subject.mean, jnp.float32),
                        jnp.asarray(subject.std, jnp.float32))
    return fitted, x


def require_image(image: str | Path | None, command: str) -> Path:
    if image is None:
        raise DataError(f"cnn show {command} needs an image file: cnn show {command} RUN_OR_MODEL IMAGE")
    return Path(image)
