"""A cnn weights directory: the model's parameters without a run around them.

    DIR/weights.json   model name, num_classes, input shape, mean/std, class names, origin
    DIR/model/         Orbax checkpoint of {"params", "batch_stats"}: the `model` item of a
                       run's checkpoints (cnncli.train.setup.model_tree), without EMA

`save_weights` writes into a temporary sibling and renames it into place, so an interrupted or
refused import leaves no half-written directory. `load_weights` restores into a freshly
built abstract model, so a directory of another model or head size is refused in one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import time
from importlib import resources
from pathlib import Path
from typing import Any

from cnncli.errors import CheckpointError, WriteError, one_line
from cnncli.rundir import refuse_run_file

INFO = "weights.json"
MODEL = "model"
FORMAT = "cnn-weights"

# torchvision's and timm's ImageNet normalisation, in [0, 1] pixel units
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclasses.dataclass
class Weights:
    info: dict  # the content of weights.json
    params: Any  # nnx.State
    batch_stats: Any  # nnx.State
    graphdef: Any  # nnx.GraphDef of the model (with its RNG streams as `rest`)
    rest: Any

    def model(self):
        """The model in evaluation mode, holding these weights."""
        from flax import nnx

        m = nnx.merge(self.graphdef, self.params, self.batch_stats, self.rest)
        m.eval()
        return m


def imagenet_class_names() -> list[str]:
    text = resources.files("cnncli.weights").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != 1000:
        raise CheckpointError(f"cnncli/weights/imagenet_classes.txt holds {len(names)} names, expected 1000")
    return names


def is_weights_dir(path: str | Path) -> bool:
    return (Path(path) / INFO).is_file()


def abstract_model(name: str, num_classes: int, input_shape: tuple[int, int, int]):
    """(model, graphdef, params, batch_stats, rest) of an abstract (shape-only) model."""
    from flax import nnx

    from cnncli.models import create_model

    model = create_model(name, num_classes=num_classes, input_shape=tuple(input_shape), abstract=True,
                         check_input=False)
    model.eval()
    graphdef, params, batch_stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    return model, graphdef, params, batch_stats, rest


def save_weights(out: Path, info: dict, params: Any, batch_stats: Any, *, force: bool = False) -> Path:
    """Write a weights directory at `out` (refused if something is there, unless `force` and it is one)."""
    import orbax.checkpoint as ocp

    out = Path(out).absolute()
    refuse_run_file(out, "-o")
    _check_free(out, force)
    # this command's own temporary sibling: two imports into one folder at once never share one
    tmp = out.with_name(f".{out.name}.tmp-import-{os.getpid()}-{time.time_ns()}")
    try:
        tmp.mkdir(parents=True)
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(tmp / MODEL, {"params": params, "batch_stats": batch_stats})
        ckptr.wait_until_finished()
        ckptr.close()
        (tmp / INFO).write_text(json.dumps({"format": FORMAT, **info}, indent=1) + "\n")
        _check_free(out, force)  # another command may have written it meanwhile
        _put_in_place(tmp, out, force)
    except OSError as exc:
        raise WriteError(f"cannot write the weights directory {out}: {one_line(exc)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_free(out: Path, force: bool) -> None:
    if out.exists() and not (force and is_weights_dir(out)):
        hint = " (--force replaces a weights directory)" if is_weights_dir(out) else ""
        raise WriteError(f"{out} already exists; choose another -o{hint}")


def _put_in_place(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished `tmp` to `out`: readers see the old whole directory or the new whole one. A
    directory another command renamed there first is refused (the rename does not replace a
    non-empty one), not mixed with this one."""
    old = None
    if force and out.exists():  # the old one moves aside first, and goes once the new one is there
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.time_ns()}")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError as exc:
        if old is not None:
            with contextlib.suppress(OSError):
                os.rename(old, out)
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise WriteError(f"{out} was written by another command while this one ran; choose another -o "
                             "or run it again with --force") from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_info(path: str | Path) -> dict:
    path = Path(path)
    try:
        info = json.loads((path / INFO).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a cnn weights directory (no {INFO})") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path / INFO} is unreadable: {exc}") from None
    missing = [k for k in ("model", "num_classes", "input_shape") if k not in info]
    if info.get("format") != FORMAT or missing:
        raise CheckpointError(f"{path / INFO} is not a cnn weights description (missing {', '.join(missing)})")
    return info


def load_weights(path: str | Path) -> Weights:
    """Restore a weights directory into its model."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    info = read_info(path)
    _, graphdef, params, batch_stats, rest = abstract_model(info["model"], int(info["num_classes"]),
                                                            tuple(info["input_shape"]))
    try:
        with ocp.StandardCheckpointer() as ckptr:
            tree = ckptr.restore(path / MODEL, {"params": params, "batch_stats": batch_stats})
    except Exception as exc:  # noqa: BLE001 - orbax raises many types for missing / mismatched / damaged trees
        raise CheckpointError(f"cannot restore the weights in {path / MODEL}: {one_line(exc, limit=200)}") from None
    return Weights(info, tree["params"], tree["batch_stats"], graphdef, rest)


def loaded_model(path: str | Path, overrides: list[str] | None = None):
    """A weights directory as `cnncli.evaluate.LoadedModel`: its model, input size, normalisation and class
    names. Its config is the model's; `cnn eval` names the data with `--set data.source=... --data-path DIR`
    (`overrides`), and the model keys stay the weights'."""
    from cnncli.config import config_from_dict
    from cnncli.evaluate import LoadedModel
    from cnncli.train.state import ModelParts, split_model

    w = load_weights(path)
    h, _, c = (int(v) for v in w.info["input_shape"])
    model = {"name": w.info["model"], "num_classes": int(w.info["num_classes"]), "input_size": h, "in_channels": c}
    cfg = config_from_dict({"model": model}, str(Path(path) / INFO), overrides)
    if cfg.model != config_from_dict({"model": model}).model:
        raise CheckpointError(f"{path}: the model of imported weights is fixed by {INFO}; --set model.* does not "
                              "apply")
    model, *_ = abstract_model(w.info["model"], int(w.info["num_classes"]), (h, h, c))
    parts, _, _ = split_model(model)
    parts = ModelParts(parts.train_graph, parts.eval_graph, w.rest)
    return LoadedModel(cfg, parts, w.params, w.batch_stats, 0, {}, list(w.info.get("class_names") or []),
                       list(w.info.get("mean") or IMAGENET_MEAN), list(w.info.get("std") or IMAGENET_STD),
                       Path(path))
