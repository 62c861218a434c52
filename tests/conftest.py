import dataclasses
import json
import os
import signal
from pathlib import Path

import pytest

# Tests run on the CPU unless JAX_PLATFORMS names an accelerator (benchmarks/gpu.sh runs them on a GPU).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if os.environ["JAX_PLATFORMS"].split(",")[0].strip() not in ("", "cpu"):
    # The suite asserts exact equivalences (one batch against accumulated micro-batches, a resumed run
    # against an uninterrupted one). On a GPU, float32 convolutions round through TF32 by default and some
    # reductions use atomics; the tests pin full float32 and deterministic reductions, in this process and
    # in the `cnn` processes they start, as a user who needs reproducible runs would.
    os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true").strip()
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # several test workers share one card

# The tests end `cnn` commands with SIGINT and SIGHUP as Ctrl-C and a closed terminal would. A suite
# started under nohup, or in the background of a script, hands its children those signals ignored, and
# cnn keeps an inherited SIG_IGN (nohup's contract). A handler is reset to the default across exec: this
# process, and its xdist workers (told by the variable), go on ignoring them in effect, while the
# commands the tests start get the default. The price: a terminal that really closes under such a run
# ends the commands running at that moment (their tests fail), never pytest itself.
_IGNORED = "CNN_TESTS_IGNORE_SIGNALS"
_ignored = set(os.environ.get(_IGNORED, "").split())
for _sig in (signal.SIGINT, signal.SIGHUP):
    if signal.getsignal(_sig) is signal.SIG_IGN or _sig.name in _ignored:
        _ignored.add(_sig.name)
        signal.signal(_sig, lambda *_: None)
if _ignored:
    os.environ[_IGNORED] = " ".join(sorted(_ignored))

import cnncli  # noqa: E402

# What the `cnn` command does at start (cnncli/entry.py): cnn's XLA flags before any test starts jax,
# and the oneDNN kernels loaded (built once per machine) before any test traces a convolution.
cnncli.apply_cpu_defaults()

TINY_CONFIG = """\
model:
  name: resnet20
  width: 0.5
data:
  source: digits
  image_size: 16
  augment:
    random_crop_padding: 2
optimizer:
  lr: 0.05
schedule:
  name: cosine
  warmup_steps: 2
train:
  steps: 8
  batch_size: 32
  log_every_steps: 2
  eval_every_steps: 4
  checkpoint_every_steps: 4
  seed: 3
output:
  tensorboard: false
"""


@pytest.fixture(autouse=True)
def pinned_quiet(monkeypatch):
    """The calls a test made to `orbax_io.stay_quiet` (a checkpoint manager closed after a failed write),
    recorded instead of pinning Orbax's quiet scope for the rest of this worker: the tests that check a
    manager leaves no process-wide change behind would otherwise compare a pinned state with itself.
    Commands and scripts run in their own processes pin for real."""
    from cnncli.checkpoint import orbax_io

    calls: list[bool] = []
    monkeypatch.setattr(orbax_io, "stay_quiet", lambda: calls.append(True))
    return calls


@pytest.fixture
def tiny_config(tmp_path):
    """A YAML experiment that trains for a few seconds."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_CONFIG)
    return path


@dataclasses.dataclass(frozen=True)
class TinyRun:
    """The one tiny training of a pytest session: TINY_CONFIG with every step logged."""

    config: Path  # the YAML it was trained from
    run: Path  # its run directory: checkpoints at steps 4 and 8, validation at 4 and 8
    summary: dict  # what `cnn train --format json` printed


_SESSION: dict[str, TinyRun] = {}


def shared_tiny_run(tmp_path_factory) -> TinyRun:
    """Train the session's tiny run on first use. Tests read it and never change it: a test that
    resumes, damages or extends a run works on a copy (shutil.copytree)."""
    if "run" not in _SESSION:
        from typer.testing import CliRunner

        from cnncli.cli import app

        root = tmp_path_factory.mktemp("tiny_run")
        cfg = root / "tiny.yaml"
        cfg.write_text(TINY_CONFIG)
        res = CliRunner().invoke(app, ["train", str(cfg), "--run-dir", str(root / "run"),
                                       "--set", "train.log_every_steps=1", "--format", "json"])
        assert res.exit_code == 0, res.output
        _SESSION["run"] = TinyRun(cfg, root / "run", json.loads(res.stdout))
    return _SESSION["run"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """One trained tiny run per pytest session (see shared_tiny_run)."""
    return shared_tiny_run(tmp_path_factory)
