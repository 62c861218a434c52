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
    from cnncli.summary import SummaryOptions, summarize_model

    layers = summarize_model(name, SummaryOptions(input_size=16, in_channels=1, advice=False)).layers
    assert sum(r["type"] == "conv" for r in layers) == convs
    assert sum(r["type"] == "add" for r in layers) == adds


@pytest.mark.slow
def test_the_configs_start_and_the_figure_draws(tmp_path):
    """Each config trains its model with the shared recipe; the figure puts the plain nets left and the
    ResNets right, shallower first, with each run's logged errors in percent."""
    import json

    import numpy as np
    from PIL import Image

    from cnncli.plots import plot_runs

    overrides = ["train.steps=2", "train.batch_size=16", "data.image_size=16", "train.eval_every_steps=2",
                 "train.eval_test=true", "output.tensorboard=false", "train.log_every_steps=1"]
    runs = {}
    for name, path in CONFIGS.items():
        run = tmp_path / name
        res = runner.invoke(app, ["train", path, "--run-dir", str(run), *[a for o in overrides for a in ("--set", o)]])
        assert res.exit_code == 0, res.output
        resolved = load_config(run / "config.yaml")
        expected = load_config(path, overrides)
        assert resolved.model.name == name
        assert (resolved.optimizer, resolved.schedule) == (expected.optimizer, expected.schedule)
        assert (resolved.train.steps, resolved.train.batch_size, resolved.data.image_size) == (2, 16, 16)
        runs[name] = run
    out = tmp_path / "he2016.png"
    res = runner.invoke(app, ["plot", *map(str, runs.values()), "--figure", "he2016", "-o", str(out)])
    assert res.exit_code == 0, res.output

    fig = plot_runs(list(runs.values()), figure="he2016", x="step")
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["plain networks", "ResNets"]
    left, right = (ax for ax in fig.axes if ax.get_visible())
    for ax, names in ((left, ("plain20", "plain56")), (right, ("resnet20", "resnet56"))):
        lines = {line.get_label(): line for line in ax.get_lines()}
        pretty = [n.replace("plain", "plain-").replace("resnet", "ResNet-") for n in names]
        assert list(lines) == [f"{p} {m}" for p in pretty for m in ("train_error", "val_error")]
        for name, p in zip(names, pretty):
            records = [json.loads(line) for line in (runs[name] / "metrics.jsonl").read_text().splitlines()]
            for split, metric in (("train", "train_error"), ("val", "val_error")):
                rows = [r for r in records if r["split"] == split]
                np.testing.assert_allclose(lines[f"{p} {metric}"].get_xdata(), [r["step"] for r in rows])
                np.testing.assert_allclose(lines[f"{p} {metric}"].get_ydata(),
                                           [100 * (1 - r["accuracy"]) for r in rows])
    width, height = fig.get_size_inches() * 120  # cnn plot writes at 120 dpi
    assert Image.open(out).format == "PNG" and Image.open(out).size == (round(width), round(height))
