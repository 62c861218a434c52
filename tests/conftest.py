import os

import pytest

# Tests run on the CPU; keep XLA from grabbing every core for its thread pools at once.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
