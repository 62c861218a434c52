"""The one restricted unpickler: a pickle may name only the globals its reader admits.

Ordinary unpickling can call any importable function, so a tampered file could run code. A
`RestrictedUnpickler` resolves a global only through its `allowed` table, {(module, name):
stand-in}, and refuses every other one before anything is called; persistent ids (references to
data outside the pickle) are refused unless a reader's subclass says how to read them. Each
reader gives its own table: cnncli.data.safe_pickle (dataset files: containers and numpy
arrays), cnncli.weights.torch_file (torch.save archives: tensors and their storages).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from typing import ClassVar


class Refused(Exception):
    """The pickle references something its reader does not admit (the text names it); nothing was called."""


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that admits the globals of `allowed` only (module docstring)."""

    allowed: ClassVar[Mapping[tuple[str, str], object]] = {}

    def find_class(self, module: str, name: str):
        obj = self.allowed.get((module, name))
        if obj is None:
            raise Refused(f"{module}.{name}")
        return obj

    def persistent_load(self, pid):
        raise Refused(f"a persistent object ({str(pid)[:60]})")
