"""Where a source's files are, and the error that names what is missing.

A source's files live in `data.path`, else in `$CNN_DATA_DIR/<source>`. When they are not
there, the error names the directory, the exact files expected and where to obtain them.
A leaf module: every file-reading loader imports it; it imports none of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from cnncli.errors import DataError

if TYPE_CHECKING:
    from cnncli.config import DataConfig

DATA_DIR_ENV = "CNN_DATA_DIR"


def source_location(data_cfg: DataConfig) -> Path | None:
    """Where the source's files should be: `data.path`, else `$CNN_DATA_DIR/<source>`, else None."""
    if data_cfg.path:
        return Path(data_cfg.path).expanduser()
    root = os.environ.get(DATA_DIR_ENV)
    if root:
        return Path(root).expanduser() / data_cfg.source
    return None


def missing_dataset(source: str, where: Path | None, expected: str, how: str) -> DataError:
    """The error for absent files: where we looked, what we expected there, how to get it."""
    if where is None:
        return DataError(
            f"{source}: no dataset location: set data.path (or {DATA_DIR_ENV}, read as ${DATA_DIR_ENV}/{source}) "
            f"to a folder holding {expected}; {how}")
    return DataError(f"{source}: dataset not found in {where}: expected {expected}; {how} and place them in {where}")
