"""Ctrl-C, SIGTERM and SIGHUP end every `cnn` command with one line and exit 128 + the signal."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from cnncli import interrupts


def _cnn(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "cnncli.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))


@pytest.mark.slow
@pytest.mark.parametrize("delay", [4.0, 9.0, 15.0])
def test_ctrl_c_while_compiling_is_one_line_and_130(delay):
    """`cnn summarize resnet152` takes about 47 s on this project's idle 2-core machine (ResNet-50: 15 s, too
    close to the longest delay): the signal lands in the imports, in jax's tracing and lowering (Python) or in
    XLA's compiler (native), depending on the delay. Before, the command died of SIGSEGV after printing
    "interrupted", or waited for the compile to end."""
    proc = _cnn("summarize", "resnet152", "--batch-size", "64")
    time.sleep(delay)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=300)
    assert (proc.returncode, err) == (130, "interrupted (SIGINT)\n"), (proc.returncode, err[-2000:])
    assert time.monotonic() - sent < interrupts.GRACE_S + 8  # not the rest of the compile


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_outside_training_are_one_line(sig, tmp_path):
    proc = _cnn("summarize", "resnet50", "--batch-size", "64")
    time.sleep(6)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert (proc.returncode, err) == (128 + sig, f"interrupted ({signal.Signals(sig).name})\n"), err[-2000:]


def _python(script: str, delay: float | None = None, sig=signal.SIGINT):
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if delay is not None:
        time.sleep(delay)
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def test_an_interrupt_swallowed_in_a_destructor_is_raised_again():
    """Python drops an exception raised in __del__ (or a gc callback, as jax's _xla_gc_callback) with
    "Exception ignored in": the command went on as if never interrupted."""
    rc, out, err = _python("""
        import os, signal, time
        from cnncli import interrupts
        interrupts.install()
        class Slow:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGINT)
                t = time.monotonic()
                while time.monotonic() - t < 0.5:  # the handler runs here, inside __del__
                    pass
        Slow()
        try:
            t = time.monotonic()
            while time.monotonic() - t < 5:
                pass
            print("went on")
        except KeyboardInterrupt as exc:
            print("stopped:", type(exc).__name__, exc.signum)
    """)
    assert (rc, out) == (0, f"stopped: Interrupted {int(signal.SIGINT)}\n"), err
    assert "Exception ignored" not in err


def test_a_signal_during_a_long_native_call_ends_the_command_within_the_grace():
    """A native call that does not return to the interpreter (here PBKDF2 of 10^8 rounds, some tens of
    seconds in OpenSSL, standing in for XLA's compiler) held the handler back until it ended."""
    t = time.monotonic()
    rc, out, err = _python("""
        import hashlib
        from cnncli import interrupts
        interrupts.install()
        hashlib.pbkdf2_hmac("sha256", b"x", b"y", 10**8)
        print("ended")
    """, delay=3.0, sig=signal.SIGHUP)
    assert (rc, out, err) == (129, "", "interrupted (SIGHUP)\n")
    assert time.monotonic() - t < 3.0 + interrupts.GRACE_S + 5


def test_nohup_keeps_sighup_ignored():
    rc, out, err = _python("""
        import os, signal
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        from cnncli import interrupts
        interrupts.install()
        os.kill(os.getpid(), signal.SIGHUP)
        print(signal.getsignal(signal.SIGHUP) is signal.SIG_IGN, signal.getsignal(signal.SIGTERM) is interrupts._raise)
    """)
    assert (rc, out) == (0, "True True\n"), err
