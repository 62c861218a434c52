"""The degradation-experiment configs (He et al. 2016, Fig. 1/6 on digits): one recipe, four models.

Only a few steps are trained here, to check that the configs start and that `cnn plot
--figure he2016` draws their runs; the full runs' errors are not part of the tests.
"""

import dataclasses

import pytest
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.config import load_config

runner = CliRunner()
CONFIGS = {name: f"configs/digits_{name}.yaml" for name in ("plain20", "plain56", "resnet20", "resnet56")}


def recipe(path):
    d = dataclasses.asdict(load_config(path))
    d["model"].pop("name")
    d["train"].pop("eval_test")  # evaluation only; digits_resnet20.yaml takes it from --set
    return d


def test_the_four_configs_share_one_recipe():
    base = recipe(CONFIGS["resnet20"])
    for name, path in CONFIGS.items():
        assert load_config(path).model.name == name
        assert recipe(path) == base, name
    assert all(load_config(CONFIGS[n]).train.eval_test for n in ("plain20", "plain56", "resnet56"))


@pytest.mark.parametrize("name,convs,adds", [("plain20", 19, 0), ("plain56", 55, 0), ("resnet20", 19, 9),
                                             ("resnet56", 55, 27)])
def test_plain_twins_have_the_same_layers_without_shortcuts(name, convs, adds):
    from cnncli.summary import summarize_model

    layers = summarize_model(name, input_size=16, in_channels=1, advice=False)["layers"]
    assert sum(r["type"] == "conv" for r in layers) == convs
    assert sum(r["type"] == "add" for r in layers) == adds


@pytest.mark.slow
def test_the_configs_start_and_the_figure_draws(tmp_path):
    runs = []
    for name, path in CONFIGS.items():
        run = tmp_path / name
        res = runner.invoke(app, ["train", path, "--run-dir", str(run), "--set", "train.steps=2",
                                  "--set", "train.batch_size=16", "--set", "data.image_size=16",
                                  "--set", "train.eval_every_steps=2", "--set", "train.eval_test=true",
                                  "--set", "output.tensorboard=false"])
        assert res.exit_code == 0, res.output
        runs.append(str(run))
    out = tmp_path / "he2016.png"
    res = runner.invoke(app, ["plot", *runs, "--figure", "he2016", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 0
