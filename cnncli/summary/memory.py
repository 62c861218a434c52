"""Training memory, as the lecture counts it, and the largest batch that fits a budget.

    parameters (+ BatchNorm statistics)      P_all x param bytes
    gradients                                P     x param bytes
    optimizer state                          k * P x param bytes   (k: SGD 0, momentum 1, Adam 2)
    activations                              batch x A x compute bytes x 2 (forward + backward)

so SGD holds x2 the parameters, SGD with momentum x3 and Adam x4. Parameters stay float32
in this project's models whatever the compute dtype (models/registry.py), so only the
activations shrink under bfloat16/float16.

Over N devices (data parallel, `train.batch_size` the global batch) each device holds batch/N
images' activations, and either a full copy of parameters, gradients and optimizer state
(replicated, the default) or a 1/N share of each array that `train.shard_params` splits
(cnncli.distributed.shard_axis). Every figure here is one device's.
"""

from __future__ import annotations

import dataclasses
import re
from decimal import Decimal, InvalidOperation

from cnncli.errors import CnnError

# Optimizer state kept per trainable parameter, in copies of the parameters.
OPTIMIZER_STATE_COPIES = {"sgd": 0, "sgd_momentum": 1, "adam": 2, "adamw": 2, "rmsprop": 1,
                          "rmsprop_momentum": 2}

OPTIMIZER_NAMES = {"sgd": "plain SGD", "sgd_momentum": "SGD with momentum", "adam": "Adam", "adamw": "AdamW",
                   "rmsprop": "RMSProp", "rmsprop_momentum": "RMSProp with momentum"}

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class SummaryError(CnnError):
    """A summarize option that does not parse or does not apply."""


def parse_memory(text: str) -> int:
    """Bytes in a memory figure: `80GB` (10^9), `80GiB` (2^30), `81920MiB`, `1.5TB`, `123456` (bytes).

    Decimal units are powers of 10 and binary units powers of 2, exactly; a fraction of a
    byte is dropped.
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if not m or (unit and unit not in _UNITS):
        raise SummaryError(f"--memory must be a number with a unit such as 80GB, 80GiB or 81920MB, got {text!r}")
    try:
        value = Decimal(m.group(1)) * _UNITS[unit or "b"]
    except InvalidOperation:  # pragma: no cover - the pattern admits only plain decimals
        raise SummaryError(f"--memory: cannot read the number in {text!r}") from None
    if value < 1:
        raise SummaryError(f"--memory must be at least one byte, got {text!r}")
    return int(value)


def format_bytes(n: int | float) -> str:
    """1.23 GB style (decimal units, as GPU vendors print)."""
    n = float(n)
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


@dataclasses.dataclass(frozen=True)
class MemoryModel:
    """What one device's training memory depends on; `total(batch)` is the formula in the module
    docstring, `batch` the global batch."""

    trainable: int  # parameter elements on one device
    non_trainable: int  # BatchNorm statistics on one device
    activations_per_image: int  # elements, forward pass
    optimizer: str
    compute_dtype: str = "float32"
    param_dtype: str = "float32"
    devices: int = 1
    sharded: bool = False  # parameters and optimizer state split over the devices

    @property
    def param_bytes(self) -> int:
        return DTYPE_BYTES[self.param_dtype]

    @property
    def state_copies(self) -> int:
        return OPTIMIZER_STATE_COPIES[self.optimizer]

    def fixed_bytes(self) -> int:
        """Everything that does not grow with the batch: parameters, gradients, optimizer state."""
        b = self.param_bytes
        return (self.trainable + self.non_trainable) * b + self.trainable * b * (1 + self.state_copies)

    def bytes_per_image(self) -> int:
        """Activation bytes one more image adds: forward activations x2 for the backward pass."""
        return self.activations_per_image * DTYPE_BYTES[self.compute_dtype] * 2

    def total(self, batch: int) -> int:
        return self.fixed_bytes() + batch // self.devices * self.bytes_per_image()

    def breakdown(self, batch: int) -> dict:
        """The JSON `memory` block (without the budget)."""
        b = self.param_bytes
        return {
            "params_bytes": (self.trainable + self.non_trainable) * b,
            "grads_bytes": self.trainable * b,
            "optimizer_bytes": self.trainable * b * self.state_copies,
            "activations_bytes": batch // self.devices * self.bytes_per_image(),
            "total_bytes": self.total(batch),
            "batch_size": batch,
            "devices": self.devices,
            "batch_per_device": batch // self.devices,
            "shard_params": self.sharded,
            "dtype": self.compute_dtype,
            "param_dtype": self.param_dtype,
            "optimizer": self.optimizer,
            "optimizer_state_copies": self.state_copies,
            "activations_bytes_per_image": self.bytes_per_image(),
        }

    def largest_batch(self, budget: int) -> int:
        """The largest global batch with total(batch) <= budget on each device, a multiple of the
        device count (0 when even the parameters do not fit)."""
        room = budget - self.fixed_bytes()
        return max(0, room // self.bytes_per_image()) * self.devices if room >= 0 else 0


@dataclasses.dataclass(frozen=True)
class Advice:
    action: str
    saves_bytes: int  # at the requested batch
    largest_batch: int | None  # under the budget, after the change
    detail: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def rank_advice(base: MemoryModel, batch: int, budget: int | None, *, fc_params: int, fc_replacement: int,
                half_input_activations: int | None, half_input_size: int | None,
                remat_activations: int | None) -> list[Advice]:
    """The lecture's what-to-do-when-memory-is-short list, as changes to the formula, ranked by bytes saved.

    fc_params: trainable parameters of the FC layers on one device; fc_replacement: those of the
    single classifier that global average pooling would leave in their place. half_input_*: the
    activations per image at half the input side (None when the model cannot take it).
    remat_activations: activations per image stored with per-block rematerialisation (None
    when the model has no such option).
    """
    now = base.total(batch)
    options: list[tuple[str, MemoryModel, str, int]] = []
    per_device = batch // base.devices
    if per_device > 1:
        half = per_device // 2 * base.devices
        options.append((f"halve the batch ({batch} -> {half})", base, "activations scale with the batch", half))
    if base.compute_dtype == "float32":
        options.append(("compute in bfloat16 (--dtype bfloat16)", dataclasses.replace(base, compute_dtype="bfloat16"),
                        "activations take 2 bytes instead of 4; parameters stay float32", batch))
    if base.state_copies > 0:
        lighter = "sgd" if base.optimizer in ("sgd_momentum", "rmsprop") else "sgd_momentum"
        options.append((f"use {OPTIMIZER_NAMES[lighter]} instead of {OPTIMIZER_NAMES[base.optimizer]}",
                        dataclasses.replace(base, optimizer=lighter),
                        f"optimizer state x{base.state_copies} -> "
                        f"x{OPTIMIZER_STATE_COPIES[lighter]} of the parameters", batch))
    if fc_params > fc_replacement:
        share = fc_params / base.trainable
        options.append(("replace the FC layers by global average pooling + one classifier",
                        dataclasses.replace(base, trainable=base.trainable - fc_params + fc_replacement),
                        f"the FC layers hold {share:.0%} of the parameters ({fc_params:,}"
                        f"{' per device' if base.sharded else ''})", batch))
    if half_input_activations is not None:
        options.append((f"halve the input side (-> {half_input_size}x{half_input_size})",
                        dataclasses.replace(base, activations_per_image=half_input_activations),
                        f"activations per image {base.activations_per_image:,} -> {half_input_activations:,}",
                        batch))
    if remat_activations is not None and remat_activations < base.activations_per_image:
        options.append(("recompute each residual block in the backward pass (model.remat: true)",
                        dataclasses.replace(base, activations_per_image=remat_activations),
                        "keeps block inputs only, plus one block's internals at a time", batch))
    advice = []
    for action, model, detail, b in options:
        advice.append(Advice(action, now - model.total(b),
                             model.largest_batch(budget) if budget is not None else None, detail))
    return sorted(advice, key=lambda a: -a.saves_bytes)
