"""Which checkpoint a resume restores: the newest intact sealed step, past damaged and unverified ones.

Sealed steps are tried first, each newest first; a damaged one (`DamagedCheckpoint`, a type) is
skipped with a warning. Where no sealed step restores, the newest intact unverified one is restored
as it is, with a warning. A writable manager moves the newer steps passed over aside (to
`damaged-<step>` / `unverified-<step>`), so that training can write those steps again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from cnncli.checkpoint.state import UNVERIFIED, DamagedCheckpoint
from cnncli.errors import CheckpointError


class Steps(Protocol):
    """What the fallback asks of a checkpoint manager."""

    directory: Path

    def step_dirs(self) -> list[int]: ...
    def is_sealed(self, step: int) -> bool: ...
    def restore_meta(self, step: int) -> dict: ...
    def restore(self, step: int, model_target: Any, train_target: Any | None = None) -> tuple[Any, Any, dict]: ...
    def set_aside(self, steps: dict[int, str]) -> None: ...


class Restored(NamedTuple):
    step: int
    model: Any
    train: Any
    meta: dict
    skipped: list[str]  # one warning per damaged or unverified newer step passed over (or restored unverified)


def restore_latest_intact(manager: Steps, model_target: Any, train_target: Any | None = None,
                          check_meta: Callable[[dict], None] | None = None) -> Restored | None:
    """The newest intact step `manager` restores (see the module), or None if there is no checkpoint.
    `check_meta(meta)` may raise to refuse a readable checkpoint (e.g. of another model): that error
    propagates, with no fallback."""
    steps = manager.step_dirs()
    unsealed = [s for s in steps if not manager.is_sealed(s)]
    sealed = [s for s in steps if s not in unsealed]
    skipped: list[str] = []
    for step in [*reversed(sealed), *reversed(unsealed)]:
        try:
            if check_meta is not None:
                check_meta(manager.restore_meta(step))
            model, train, meta = manager.restore(step, model_target, train_target)
        except DamagedCheckpoint as exc:
            skipped.append(f"checkpoint {exc.step_dir} is damaged ({exc.damage.reason}); skipped")
            continue
        newer = [s for s in steps if s > step]  # all tried and damaged, except unsealed ones above a sealed step
        passed = [] if step in unsealed else [s for s in newer if s in unsealed]
        skipped[:0] = [f"checkpoint {manager.directory / str(s)} is unverified ({UNVERIFIED}); passed over for "
                       f"sealed checkpoint {step}" for s in passed]
        if step in unsealed:
            skipped.append(f"checkpoint {manager.directory / str(step)} is unverified ({UNVERIFIED}); "
                           "restored as it is")
        manager.set_aside({s: "unverified" if s in passed else "damaged" for s in newer})
        return Restored(step, model, train, meta, skipped)
    if steps:
        raise CheckpointError(f"no intact checkpoint in {manager.directory}: all of steps "
                              f"{', '.join(map(str, steps))} are damaged")
    return None
