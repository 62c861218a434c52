import os

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

import cnncli  # noqa: F401 E402 - cnn's XLA defaults (cnncli/xla_flags.py) before any test starts jax

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


@pytest.fixture
def tiny_config(tmp_path):
    """A YAML experiment that trains for a few seconds."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_CONFIG)
    return path
