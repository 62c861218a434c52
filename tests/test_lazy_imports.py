"""The deferred rich modules: help and errors print the same without them, and they load on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest

RUN_HELP = "import sys; sys.argv = ['cnn', *sys.argv[1:]]; from cnncli.cli import main; main()"
HEAVY = ("markdown_it", "pygments", "rich.syntax")


def _cnn(args, pre_import=""):
    """Run cnn's CLI in a fresh interpreter; print which heavy modules it imported on stderr's last line."""
    code = (f"{pre_import}\nimport atexit, sys\n"
            f"atexit.register(lambda: print(sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr))\n"
            + RUN_HELP)
    env = {"COLUMNS": "100", "TERM": "dumb", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["summarize", "--help"], ["no-such-command"]])
def test_help_and_errors_print_the_same_without_the_deferred_modules(args):
    deferred = _cnn(args)
    eager = _cnn(args, pre_import="import rich.markdown, rich.traceback")
    assert deferred.returncode == eager.returncode
    assert deferred.stdout == eager.stdout and deferred.stdout.strip() or args == ["no-such-command"]
    *message, imported = deferred.stderr.splitlines()
    *eager_message, eager_imported = eager.stderr.splitlines()
    assert message == eager_message
    assert imported == "[]", f"imported {imported} to print {args}"
    assert eager_imported != "[]"  # the check above can see them


def test_stand_ins_load_the_real_modules_on_first_use():
    code = """
import sys
from cnncli.cli import lazy_imports
lazy_imports.install()
import rich.markdown, rich.traceback
stand_in = rich.markdown
from rich.markdown import Markdown
assert 'markdown_it' not in sys.modules and 'pygments' not in sys.modules
md = Markdown('# title')                      # constructing loads the real class
real = sys.modules['rich.markdown']
assert type(md) is real.Markdown and real is not stand_in  # the stand-in module was replaced
assert rich.markdown is real                  # and the package's attribute rebound
assert isinstance(md, Markdown) and issubclass(real.Markdown, Markdown)
assert stand_in.Heading is real.Heading      # attributes of the stand-in module forward too
from rich.traceback import Traceback
try:
    1 / 0
except ZeroDivisionError as exc:
    tb = Traceback.from_exception(type(exc), exc, exc.__traceback__)  # a classmethod through the stand-in
assert type(tb) is sys.modules['rich.traceback'].Traceback
import io
from rich.console import Console
console = Console(record=True, width=60, color_system=None, file=io.StringIO())
console.print(md); console.print(tb)
text = console.export_text()
assert 'title' in text and 'ZeroDivisionError' in text
lazy_imports.install()                        # a second call leaves the real modules in place
assert sys.modules['rich.markdown'] is real
print('ok')
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_threads_first_using_a_stand_in_at_once_import_the_module_once():
    code = """
import sys, threading
from cnncli.cli import lazy_imports
lazy_imports.install()
from rich.markdown import Markdown
barrier = threading.Barrier(8)
made, errors = [], []
def first_use():
    barrier.wait()
    try:
        made.append(Markdown('x'))
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=first_use) for _ in range(8)]
[t.start() for t in threads]; [t.join() for t in threads]
real = sys.modules['rich.markdown'].Markdown
assert not errors, errors
assert len(made) == 8 and all(type(m) is real for m in made)
print('ok')
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
