"""The experiment config: typed schema, YAML loading, validation and dotted overrides.

Precedence is defaults < YAML file < `--set key=value` overrides. Validation happens
once, here; everything downstream receives a typed, frozen `Config`. The fields that
follow the data (the model's input size, channels and class count) are filled by
`resolve_data_shape` / `resolve_model_shape`, which return new values: nothing mutates
a config after it is built.
"""


from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from cnncli.config.schema import (  # noqa: F401  (the config's public names)
    MAX_BATCH, MAX_CLASSES, MAX_COUNT, MAX_EPOCHS, MAX_IMAGE_SIDE, MAX_RATE, MAX_SEED, MAX_STEPS, AugmentConfig,
    Config, DataConfig, DistributedConfig, ModelConfig, OptimizerConfig, OutputConfig, Range, ScheduleConfig,
    TrainConfig,
)
from cnncli.config.validate import _build, _check_ranges
from cnncli.config.yamlfile import (  # noqa: F401
    MAX_CONFIG_BYTES, MAX_YAML_VALUES, YamlRefused, apply_overrides, parse_override, parse_yaml, read_yaml,
)
from cnncli.errors import ConfigError


def config_from_dict(raw: dict, where: str = "config", overrides: list[str] | None = None) -> Config:
    """Validate a raw mapping (plus overrides) into a Config."""
    import copy

    raw = apply_overrides(copy.deepcopy(raw), overrides or [])
    where_full = where + (" (with --set overrides)" if overrides else "")
    cfg = _build(Config, raw, "", where_full)
    _check_ranges(cfg, where_full)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load and validate a YAML experiment file, applying `--set` overrides."""
    path = Path(path)
    return config_from_dict(read_yaml(path), str(path), overrides)


# ----------------------------------------------------------------------------- resolution against the data


def model_options(m: ModelConfig) -> dict[str, Any]:
    """The `create_model` options of a model section (everything but name, classes and input shape)."""
    skip = {"name", "num_classes", "input_size", "in_channels", "init_from"}
    return {f.name: getattr(m, f.name) for f in dataclasses.fields(m) if f.name not in skip}


def resolve_data_shape(cfg: Config) -> Config:
    """A config whose data conversion follows the model's fixed input size / channels, if any."""
    m, d = cfg.model, cfg.data
    if m.input_size is not None and d.image_size is not None and d.image_size != m.input_size:
        raise ConfigError(f"model.input_size={m.input_size} contradicts data.image_size={d.image_size}")
    if m.in_channels is not None and d.channels is not None and d.channels != m.in_channels:
        raise ConfigError(f"model.in_channels={m.in_channels} contradicts data.channels={d.channels}")
    data = dataclasses.replace(d, image_size=d.image_size if m.input_size is None else m.input_size,
                               channels=d.channels if m.in_channels is None else m.in_channels)
    return dataclasses.replace(cfg, data=data)


def resolve_model_shape(cfg: Config, image_shape: tuple[int, int, int], num_classes: int) -> Config:
    """A config whose model section holds the prepared data's input size, channels and class count."""
    h, w, c = image_shape
    if h != w:
        raise ConfigError(f"images are {h}x{w}; set data.image_size to train on square inputs")
    m = cfg.model
    if m.num_classes is not None and m.num_classes < num_classes:
        raise ConfigError(f"model.num_classes={m.num_classes} but the dataset has {num_classes} classes")
    model = dataclasses.replace(m, num_classes=num_classes if m.num_classes is None else m.num_classes,
                                input_size=h, in_channels=c)
    data = dataclasses.replace(cfg.data, image_size=h, channels=c)  # resolving a resolved config changes nothing
    return dataclasses.replace(cfg, model=model, data=data)
