"""Where the checkpoints of a path are: a run directory, its checkpoints/ or one step directory."""

from __future__ import annotations

from pathlib import Path

from cnncli.errors import CheckpointError, RunDirError
from cnncli.rundir import locate


def find_checkpoint_dir(path: str | Path) -> tuple[Path, int | None]:
    """Resolve a run dir, a checkpoints dir or one step dir to (checkpoints_dir, step or None)."""
    try:
        loc = locate(path)
    except RunDirError as exc:
        raise CheckpointError(str(exc)) from None
    if loc.checkpoints is None or (loc.step is None and not any(
            c.name.isdigit() and c.is_dir() for c in loc.checkpoints.iterdir())):
        raise CheckpointError(f"{path} holds no complete checkpoint (expected a run directory or "
                              "checkpoints/<step>)")
    return loc.checkpoints, loc.step
