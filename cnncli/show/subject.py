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
    return (input_size or h, input_size or h, channels or c)


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
