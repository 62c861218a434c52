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


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A run whose head has 12 classes (more than digits' 10), as weights from another task would.
    Trained once for the module; the tests only read it."""
    from tests.conftest import TINY_CONFIG

    root = tmp_path_factory.mktemp("pretrained")
    (root / "tiny.yaml").write_text(TINY_CONFIG)
    run = root / "pre"
    res = cnn("train", root / "tiny.yaml", "--run-dir", run, "--set", "model.num_classes=12")
    assert res.exit_code == 0, res.output
    return run


def weights(run):
    return load_file(str(run / "model.safetensors"))


@pytest.mark.slow
def test_finetune_keeps_frozen_groups_and_trains_the_new_head(pretrained, tiny_config, tmp_path):
    run = tmp_path / "ft"
    res = cnn("train", tiny_config, "--run-dir", run, "--init-from", pretrained,
              "--set", 'train.freeze=["*", "!fc*"]', "--set", "train.steps=12")
    assert res.exit_code == 0, res.output
    report = json.loads((run / "init.json").read_text())
    assert report["reinitialised"] == ["fc"] and "conv1" in report["loaded"] and "fc" not in report["loaded"]
    assert "conv1" in report["frozen"] and "fc" not in report["frozen"]
    # ResNet-20's BatchNorm layers: the stem's and two per block (convolutions have no inference mode)
    assert report["batchnorm_inference"] == sorted(
        ["bn1"] + [f"layer{s}.{b}.bn{k}" for s in (1, 2, 3) for b in (0, 1, 2) for k in (1, 2)])
    assert "re-initialised: 1 group(s): fc" in res.output
    before, after = weights(pretrained), weights(run)
    frozen = [k for k in after if "fc" not in k.split("/")]
    assert frozen and all(np.array_equal(before[k], after[k]) for k in frozen)  # weights and BN statistics
    fc = next(k for k in after if k.startswith("params/fc/kernel"))
    assert after[fc].shape[-1] == 10 and before[fc].shape[-1] == 12
    losses = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if r["split"] == "train"]
    assert losses[-1] < losses[0]  # the head learns on top of the frozen features


@pytest.mark.slow
def test_temporary_freeze_ends_after_its_epochs(pretrained, tiny_config, tmp_path):
    run = tmp_path / "ft"
    res = cnn("train", tiny_config, "--run-dir", run, "--init-from", pretrained,
              "--set", 'train.freeze=["layer1*"]', "--set", "train.freeze_epochs=0.05", "--set", "train.steps=8")
    assert res.exit_code == 0, res.output
    before, after = weights(pretrained), weights(run)
    layer1 = [k for k in after if k.startswith("params/layer1/")]
    assert layer1 and any(not np.array_equal(before[k], after[k]) for k in layer1)


@pytest.mark.slow
def test_bad_freeze_pattern_and_misfit_weights_are_one_line(pretrained, tiny_config, tmp_path):
    res = cnn("train", tiny_config, "--run-dir", tmp_path / "a", "--set", 'train.freeze=["layr1*"]')
    assert res.exit_code == 2 and "layr1*" in res.output and not (tmp_path / "a").exists()
    res = cnn("train", tiny_config, "--run-dir", tmp_path / "b", "--init-from", pretrained,
              "--set", "model.name=resnet32")
    assert res.exit_code == 2 and "do not fit" in res.output and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_finetune_imported_resnet18_on_digits(tiny_config, tmp_path):
    """The issue's recipe: an imported resnet18 (1000 classes, random weights here), digits at 32x32 RGB, a new
    10-class head, everything but the head frozen for the first epoch."""
    from safetensors.numpy import save_file

    from cnncli.weights.convert import import_weights
    from tests.test_weights import _random_state_dict

    save_file(_random_state_dict("resnet18", seed=4, classes=1000), str(tmp_path / "r18.safetensors"))
    import_weights(tmp_path / "r18.safetensors", "resnet18", out=tmp_path / "w")
    run = tmp_path / "ft"
    res = cnn("train", tiny_config, "--run-dir", run, "--init-from", tmp_path / "w", "--set", "model.name=resnet18",
              "--set", "model.width=1.0", "--set", "data.image_size=32", "--set", "data.channels=3",
              "--set", 'train.freeze=["*", "!fc*"]', "--set", "train.freeze_epochs=0.5", "--set", "train.steps=30",
              "--set", "train.log_every_steps=10", "--set", "train.eval_every_steps=30",
              "--set", "schedule.name=constant", "--set", "optimizer.lr=0.01")
    assert res.exit_code == 0, res.output
    report = json.loads((run / "init.json").read_text())
    assert report["reinitialised"] == ["fc"] and len(report["loaded"]) == 1 + 1 + 8 * 4 + 3 * 2
    assert "layer4.1.conv2" in report["frozen"] and report["frozen_epochs"] == 0.5
    assert "frozen: 40 group(s)" in res.output
    losses = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if r["split"] == "train"]
    assert losses[1] < losses[0]  # the new head learns on the frozen features (the first 20 steps)
    before, after = load_file(str(tmp_path / "r18.safetensors")), weights(run)
    conv1 = next(k for k in after if k.startswith("params/conv1/kernel"))
    imported = before["conv1.weight"].transpose(2, 3, 1, 0)  # OIHW -> HWIO
    assert after[conv1].shape == imported.shape == (7, 7, 3, 64)
    assert not np.array_equal(after[conv1], imported)  # it trains once unfrozen
