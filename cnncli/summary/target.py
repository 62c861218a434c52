"""What `cnn summarize` was pointed at: a model name, a config file, a run directory or a checkpoint.

A config file may leave the input size, channels and class count to the data; what the
source's format fixes is used (cnncli.data.sources.expected_shape), otherwise the model
family's defaults, with a note. A run directory's config.yaml has them resolved; a checkpoint step directory
`runs/NAME/checkpoints/STEP` belongs to the run two levels up.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from cnncli.summary.memory import SummaryError

@dataclasses.dataclass
class Target:
    """Everything summarize_model needs besides the command-line options (cnncli.summary.report.SummaryOptions)."""

    model: str
    source: str | None = None  # the config file or run directory it came from
    input_size: int | None = None
    in_channels: int | None = None
    num_classes: int | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    batch_size: int | None = None
    optimizer: str | None = None  # a key of OPTIMIZER_STATE_COPIES
    optimizer_config: Any = None
    augment: Any = None
    shard_params: bool = False
    notes: list[str] = dataclasses.field(default_factory=list)


def optimizer_label(opt: Any) -> str:
    """The memory formula's name for a config's optimizer section."""
    if opt.name == "sgd":
        return "sgd_momentum" if opt.momentum else "sgd"
    if opt.name == "rmsprop":
        return "rmsprop_momentum" if opt.momentum else "rmsprop"
    return opt.name


def _from_config(cfg: Any, source: str, resolved: bool) -> Target:
    from cnncli.config import model_options
    from cnncli.models import get_spec

    m, d = cfg.model, cfg.data
    spec = get_spec(m.name)
    t = Target(m.name, source=source, options=model_options(cfg.model), batch_size=cfg.train.batch_size,
               optimizer=optimizer_label(cfg.optimizer), optimizer_config=cfg.optimizer, augment=d.augment,
               shard_params=cfg.train.shard_params)
    t.input_size, t.in_channels, t.num_classes = m.input_size, m.in_channels, m.num_classes
    if resolved:
        return t
    from cnncli.data.sources import expected_shape

    size, channels, classes = expected_shape(d)
    t.input_size = t.input_size or size
    t.in_channels = t.in_channels or channels
    t.num_classes = t.num_classes or classes
    defaults = {"input size": f"{spec.default_input[0]}x{spec.default_input[1]}",
                "channels": str(spec.default_input[2]), "number of classes": str(spec.default_classes)}
    unknown = [k for k, v in (("input size", t.input_size), ("channels", t.in_channels),
                              ("number of classes", t.num_classes)) if v is None]
    if unknown:
        t.notes.append(f"{source} leaves the {' and '.join(unknown)} to the {d.source!r} data; using "
                       f"{m.name}'s defaults ({', '.join(f'{k} {defaults[k]}' for k in unknown)})")
    return t


def resolve_target(arg: str) -> Target:
    """A registered model name, a config YAML, a run directory or a checkpoint directory."""
    from cnncli.models import get_spec, list_models

    if arg in list_models():
        return _bare(arg)
    path = Path(arg)
    if path.is_file():
        from cnncli.config import load_config

        return _from_config(load_config(path), str(path), resolved=False)
    if path.is_dir():
        from cnncli.rundir import locate

        run = locate(path).run
        if run is None:
            raise SummaryError(f"{path} is neither a run directory (no config.yaml) nor a checkpoint directory "
                               "(runs/NAME/checkpoints/STEP)")
        from cnncli.config import load_config

        # A run's config.yaml has the data's size, channels and classes written into model.*.
        return _from_config(load_config(run.config), str(run.path), resolved=True)
    if "/" in arg or arg.endswith((".yaml", ".yml")):
        raise SummaryError(f"no such config file, run directory or checkpoint: {arg}")
    return _bare(get_spec(arg).name)  # an unknown name raises, suggesting the closest registered ones


def _bare(name: str) -> Target:
    """A registered model name: the step compiled is the one `cnn bench NAME` times (its augmentation and
    optimizer, cnncli.train.recipe), so that both report one XLA FLOP count."""
    from cnncli.config import config_from_dict
    from cnncli.train.recipe import bare_model_raw

    cfg = config_from_dict(bare_model_raw(name), name, [])
    return Target(name, optimizer=optimizer_label(cfg.optimizer), optimizer_config=cfg.optimizer,
                  augment=cfg.data.augment)


def summarize_targets(targets: list[str], *, input_size: int | None = None, in_channels: int | None = None,
                      num_classes: int | None = None, batch_size: int | None = None, dtype: str | None = None,
                      optimizer: str | None = None, memory_budget: int | None = None,
                      compile: bool = True, devices: int = 1,
                      shard_params: bool | None = None) -> list[dict[str, Any]]:
    """Summaries of each target (model name, config, run or checkpoint dir); options given here win.

    Without a batch size, a config's train.batch_size is used; with a memory budget and no
    batch size anywhere, the largest batch that fits; otherwise 1 (per image), or one per device.
    `shard_params` None takes a config's train.shard_params.
    """
    from cnncli.summary.report import SummaryOptions, summarize_model

    resolved = [resolve_target(t) for t in targets]  # all names checked before any work
    out = []
    for t in resolved:
        options = dict(t.options)
        if dtype is not None:
            options["dtype"] = dtype
        s = summarize_model(t.model, SummaryOptions(
            input_size=input_size or t.input_size, in_channels=in_channels or t.in_channels,
            num_classes=num_classes or t.num_classes, model_options=options,
            batch_size=batch_size or t.batch_size or (None if memory_budget is not None else devices),
            optimizer=optimizer or t.optimizer or "sgd_momentum",
            optimizer_config=t.optimizer_config if optimizer is None else None, augment=t.augment,
            devices=devices, shard_params=t.shard_params if shard_params is None else shard_params,
            memory_budget=memory_budget, compile=compile))
        notes = list(t.notes)
        if options.get("remat"):
            notes.append("model.remat is on: the analytic activations count every layer's output as without "
                         "recomputation; XLA's figures include the saving")
        out.append({"source": t.source, "notes": notes, **s.as_dict()})
    return out
