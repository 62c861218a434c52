"""Integrity of one checkpoint step directory: a SHA-256 manifest written once the save is complete.

tensorstore decodes a flipped byte inside a compressed or raw array chunk into wrong numbers
without any error, so Orbax alone cannot tell a damaged checkpoint from a good one. `seal` lists
every file of a finished step with its size and SHA-256 in `cnn_sha256.json`; `damage` checks
them (and, for steps without a manifest, that the items are present and `meta` parses) and
returns a typed `Damage`, or None.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cnncli.atomic import write_text_atomic
from cnncli.errors import one_line
from cnncli.checkpoint.state import MANIFEST, Damage, DamageKind

STRUCTURE = ("_CHECKPOINT_METADATA", "model", "train", "meta/metadata")


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def seal(step_dir: Path) -> None:
    """Write the manifest of a complete step (atomically); OSError if the disk refuses it."""
    files = {p.relative_to(step_dir).as_posix(): {"size": p.stat().st_size, "sha256": digest(p)}
             for p in sorted(step_dir.rglob("*")) if p.is_file() and p.name != MANIFEST}
    write_text_atomic(step_dir / MANIFEST, json.dumps({"files": files}, indent=1) + "\n")


def has_manifest(step_dir: Path) -> bool:
    return (step_dir / MANIFEST).is_file()


def _manifest_damage(step_dir: Path) -> Damage | None:
    try:
        files = json.loads((step_dir / MANIFEST).read_text())["files"]
        expected = {str(rel): (int(v["size"]), str(v["sha256"])) for rel, v in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return Damage(DamageKind.MANIFEST_UNREADABLE, f"its {MANIFEST} is unreadable")
    for rel, (size, sha) in expected.items():
        p = step_dir / rel
        if not p.is_file():
            return Damage(DamageKind.FILE_MISSING, f"{rel} is missing")
        actual = p.stat().st_size
        if actual != size:
            return Damage(DamageKind.WRONG_SIZE, f"{rel} has {actual} bytes, {size} were written")
        try:
            matches = digest(p) == sha
        except OSError as exc:  # a failing disk: the step cannot be trusted, and saying so is no traceback
            return Damage(DamageKind.FILE_UNREADABLE, f"{rel} is unreadable ({one_line(exc)})")
        if not matches:
            return Damage(DamageKind.WRONG_CHECKSUM, f"{rel} does not match its checksum")
    return None


def damage(step_dir: Path) -> Damage | None:
    """Why the step in `step_dir` cannot be trusted, or None if it looks intact."""
    if not step_dir.is_dir():
        return Damage(DamageKind.MISSING, "it does not exist")
    if (step_dir / MANIFEST).exists():
        found = _manifest_damage(step_dir)
        if found is not None:
            return found
    for rel in STRUCTURE:
        if not (step_dir / rel).exists():
            return Damage(DamageKind.FILE_MISSING, f"{rel} is missing")
    try:
        json.loads((step_dir / "meta" / "metadata").read_text())
    except (OSError, ValueError):
        return Damage(DamageKind.META_UNREADABLE, "meta/metadata is not readable JSON")
    return None
