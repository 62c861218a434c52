"""What one checkpoint step is worth: intact, unverified, or damaged -- as values, not messages.

`Damage` says why a step cannot be trusted: a `DamageKind` decided by a check (the seal's
checksums, the step's structure) or by the type of a failed read, plus the phrase shown to the
user. `StepState` is the verdict on one step. `DamagedCheckpoint` is the error that carries a
`Damage`, so that a caller falling back past a damaged step catches a type, not a message.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from cnncli.errors import CheckpointError

MANIFEST = "cnn_sha256.json"
UNVERIFIED = f"no {MANIFEST}: damage to its arrays would go unnoticed"


class DamageKind(enum.Enum):
    MISSING = "missing"  # the step directory does not exist
    MANIFEST_UNREADABLE = "manifest unreadable"  # its cnn_sha256.json does not parse
    FILE_MISSING = "file missing"  # a file the seal lists, or an item every step has, is gone
    WRONG_SIZE = "wrong size"  # a sealed file was truncated or extended
    WRONG_CHECKSUM = "wrong checksum"  # a sealed file's bytes changed
    FILE_UNREADABLE = "file unreadable"  # the disk refused to read a file (OSError)
    META_UNREADABLE = "meta unreadable"  # meta/metadata is not JSON
    READ_FAILED = "read failed"  # Orbax could not read the step into a target that fits it


@dataclass(frozen=True)
class Damage:
    kind: DamageKind
    reason: str  # one phrase, e.g. "model/d/1a2b does not match its checksum"

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class StepState:
    """The verdict on one step: `damage` is None when it is intact; `sealed` whether its checksums exist."""

    step: int
    damage: Damage | None
    sealed: bool

    @property
    def intact(self) -> bool:
        return self.damage is None

    @property
    def unverified(self) -> bool:
        """Intact as far as can be told, but without checksums: flipped array bytes would go unnoticed."""
        return self.damage is None and not self.sealed


class DamagedCheckpoint(CheckpointError):
    """A step that cannot be trusted, named with the steps that can (one line, exit 2)."""

    def __init__(self, step_dir: Path, damage: Damage, intact: list[int]):
        where = (f"intact checkpoints: {', '.join(map(str, intact))} (choose one with --checkpoint STEP)" if intact
                 else "no other checkpoint here is intact")
        super().__init__(f"checkpoint {step_dir} is damaged ({damage.reason}); {where}")
        self.step_dir = step_dir
        self.damage = damage
