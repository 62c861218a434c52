"""Defer the two rich modules that Typer's help imports but cnn's help never uses.

`typer.rich_utils`, which renders every `--help` and usage error, imports `rich.markdown` and
`rich.traceback` at its top. They bring markdown_it and pygments with them: about 85 ms of the
0.26 s that `cnn --help` took on this project's 2-core machine, a third of it. cnn's
help uses the "rich" markup mode, never "markdown", and Typer's pretty tracebacks are off
(cli/app.py), so neither module is needed to print help or an error.

`install()` puts a stand-in module in their place. Each names the one class Typer imports from
it, as a stand-in class, and imports the real module the first time anything is used:
constructing the class, reading any attribute of the class or of the module, or an isinstance
check. After that the real module is in `sys.modules`, so code that imports it later gets the
real one. Nothing is deferred where the real module was already imported.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types

DEFERRED = {"rich.markdown": "Markdown", "rich.traceback": "Traceback"}


class _DeferredModule(types.ModuleType):
    """Stands in for a module until one of its attributes is read."""

    def __getattr__(self, attr: str):
        if attr.startswith("__"):  # the import system probes __path__, __spec__, ...: answer as a plain module
            raise AttributeError(attr)
        return getattr(_load(self.__name__), attr)


_LOADING = threading.RLock()  # two threads' first uses must not import the module twice


def _load(name: str) -> types.ModuleType:
    with _LOADING:
        current = sys.modules.get(name)
        if isinstance(current, _DeferredModule):
            del sys.modules[name]
        return importlib.import_module(name)  # also rebinds the parent package's attribute to it


class _DeferredClassMeta(type):
    """The stand-in class forwards what is asked of the class itself to the real class."""

    def __getattr__(cls, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(cls._real(), attr)

    def __instancecheck__(cls, obj) -> bool:
        return isinstance(obj, cls._real())

    def __subclasscheck__(cls, other) -> bool:
        return issubclass(other, cls._real())


def _stand_in(module: str, name: str) -> type:
    def real():
        return getattr(_load(module), name)

    def new(cls, *args, **kwargs):
        return real()(*args, **kwargs)  # an instance of the real class, so __init__ here is skipped

    return _DeferredClassMeta(name, (), {"__new__": new, "_real": staticmethod(real), "__module__": module})


def install() -> None:
    """Defer the modules in DEFERRED that are not imported yet. Idempotent."""
    import rich

    for module, name in DEFERRED.items():
        if module in sys.modules:
            continue
        stand_in = _DeferredModule(module)
        setattr(stand_in, name, _stand_in(module, name))
        sys.modules[module] = stand_in
        setattr(rich, module.rpartition(".")[2], stand_in)  # so `import rich.markdown; rich.markdown.X` works
