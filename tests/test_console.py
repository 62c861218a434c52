"""A console whose reader goes away (`cnn ... | head`): the stream goes to /dev/null, the run stops as on SIGPIPE."""

import io
import json
import os
import signal
import subprocess
import sys

import pytest

from cnncli import console
from cnncli.train.exits import SignalCatcher


def _widowed_pipe():
    """The write end of a pipe whose reader has closed, as a text stream."""
    r, w = os.pipe()
    os.close(r)
    return os.fdopen(w, "w")


def _is_devnull(fd):
    null = os.stat(os.devnull)
    st = os.fstat(fd)
    return (st.st_rdev, st.st_ino) == (null.st_rdev, null.st_ino)


def test_a_broken_pipe_calls_the_hook_once_and_later_writes_go_nowhere():
    stream = _widowed_pipe()
    c = console.Console(file=stream, soft_wrap=True)
    calls = []
    c.on_reader_gone = lambda: calls.append(1)
    assert not _is_devnull(stream.fileno())
    c.print("first line")  # EPIPE: the hook, then quiet
    assert calls == [1] and c.quiet and _is_devnull(stream.fileno())
    c.print("second line")
    stream.write("a write that is not rich's\n")
    stream.flush()  # would raise BrokenPipeError on the pipe
    assert calls == [1]
    stream.close()


def test_without_a_hook_the_command_ends_as_sigpipe_would():
    stream = _widowed_pipe()
    c = console.Console(file=stream)
    with pytest.raises(SystemExit) as exc:
        c.print("x")
    assert exc.value.code == 141 == 128 + signal.SIGPIPE
    assert _is_devnull(stream.fileno())
    stream.close()


def test_a_stream_without_a_descriptor_is_left_alone():
    buf = io.StringIO()
    console.silence(buf)  # no fileno(): nothing to point anywhere, no error
    buf.write("still usable")
    assert buf.getvalue() == "still usable"


def test_the_catcher_stops_the_loop_as_sigpipe_and_lets_the_final_phase_finish():
    catcher = SignalCatcher()
    catcher.reader_gone()
    assert catcher.signum == signal.SIGPIPE and catcher.stop_requested(5)
    catcher.reader_gone()  # again: nothing changes, nothing raises
    assert catcher.signum == signal.SIGPIPE
    late = SignalCatcher()
    late.urgent = True  # final evaluation / export: only the last lines are lost, the run finishes
    late.reader_gone()
    assert late.signum is None and not late.stop_requested(5) and not late.raised


def test_json_output_to_a_closed_pipe_is_exit_141_and_silent(tmp_path):
    """`cnn runs --format json | head -0`: no 'error: Broken pipe' on the terminal, exit 141."""
    r, w = os.pipe()
    os.close(r)
    proc = subprocess.run([sys.executable, "-m", "cnncli.cli", "runs", str(tmp_path), "--format", "json"], stdout=w,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(w)
    assert (proc.returncode, proc.stderr) == (141, "")


@pytest.mark.slow
def test_train_whose_reader_goes_checkpoints_and_says_interrupted(tiny_config, tmp_path):
    """`cnn train 2>&1 | head`: the run was recorded as failed ('SystemExit: 1') with no checkpoint; now it
    finishes its step, checkpoints and says interrupted (SIGPIPE), exit 141, and resumes."""
    from tests.test_train import _train_steps_seen, _wait_for

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "cnncli.cli", "train", str(tiny_config), "--run-dir", str(run),
                             "--set", "train.steps=400", "--set", "train.log_every_steps=1",
                             "--set", "train.checkpoint_every_steps=1000", "--set", "train.eval_every_steps=2"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert _wait_for(lambda: _train_steps_seen(run), proc, timeout=300), proc.communicate()
    proc.stdout.close()  # the reader goes: the next line the run prints (an evaluation's) breaks the pipe
    assert proc.wait(timeout=300) == 141
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and status["reason"].startswith("SIGPIPE at step"), status
    assert 3 <= status["step"] < 400 and (run / "checkpoints" / str(status["step"])).is_dir()
