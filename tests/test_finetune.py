"""Fine-tuning: start from stored weights, re-initialise a re-sized head, freeze parameter groups."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from cnncli.cli import app

runner = CliRunner()


def cnn(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def pretrained(tiny_config, tmp_path):
    """A run whose head has 12 classes (more than digits' 10), as weights from another task would."""
    run = tmp_path / "pre"
    res = cnn("train", tiny_config, "--run-dir", run, "--set", "model.num_classes=12")
    assert res.exit_code == 0, res.output
    return run


def weights(run):
    return load_file(str(run / "model.safetensors"))


def test_finetune_keeps_frozen_groups_and_trains_the_new_head(pretrained, tiny_config, tmp_path):
    run = tmp_path / "ft"
    res = cnn("train", tiny_config, "--run-dir", run, "--init-from", pretrained,
              "--set", 'train.freeze=["*", "!fc*"]', "--set", "train.steps=12")
    assert res.exit_code == 0, res.output
    report = json.loads((run / "init.json").read_text())
    assert report["reinitialised"] == ["fc"] and "conv1" in report["loaded"] and "fc" not in report["loaded"]
    assert "conv1" in report["frozen"] and "fc" not in report["frozen"]
    assert "re-initialised: 1 group(s): fc" in res.output
    before, after = weights(pretrained), weights(run)
    frozen = [k for k in after if "fc" not in k.split("/")]
    assert frozen and all(np.array_equal(before[k], after[k]) for k in frozen)  # weights and BN statistics
    fc = next(k for k in after if k.startswith("params/fc/kernel"))
    assert after[fc].shape[-1] == 10 and before[fc].shape[-1] == 12
    losses = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if r["split"] == "train"]
    assert losses[-1] < losses[0]  # the head learns on top of the frozen features


def test_temporary_freeze_ends_after_its_epochs(pretrained, tiny_config, tmp_path):
    run = tmp_path / "ft"
    res = cnn("train", tiny_config, "--run-dir", run, "--init-from", pretrained,
              "--set", 'train.freeze=["layer1*"]', "--set", "train.freeze_epochs=0.05", "--set", "train.steps=8")
    assert res.exit_code == 0, res.output
    before, after = weights(pretrained), weights(run)
    layer1 = [k for k in after if k.startswith("params/layer1/")]
    assert layer1 and any(not np.array_equal(before[k], after[k]) for k in layer1)


def test_bad_freeze_pattern_and_misfit_weights_are_one_line(pretrained, tiny_config, tmp_path):
    res = cnn("train", tiny_config, "--run-dir", tmp_path / "a", "--set", 'train.freeze=["layr1*"]')
    assert res.exit_code == 2 and "layr1*" in res.output and not (tmp_path / "a").exists()
    res = cnn("train", tiny_config, "--run-dir", tmp_path / "b", "--init-from", pretrained,
              "--set", "model.name=resnet32")
    assert res.exit_code == 2 and "do not fit" in res.output and not (tmp_path / "b").exists()
