"""`cnn plot` and the confusion-matrix figure: the data handed to matplotlib, not only the file."""

import json
import random

import numpy as np
import pytest
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.errors import ConfigError
from cnncli.plots import plot_confusion, plot_runs, pretty_model_name, save_figure
from tests.test_evaluate import trained_tiny_run
from tests.test_runs import make_run, rec

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"

# Per model: training accuracy and held-out accuracy at epochs 1..4 (deeper plain nets are worse,
# deeper ResNets better, as in He et al. 2016).
CURVES = {
    "plain20": ([0.50, 0.70, 0.80, 0.85], [0.45, 0.65, 0.72, 0.76]),
    "plain56": ([0.40, 0.55, 0.65, 0.70], [0.38, 0.52, 0.60, 0.64]),
    "resnet20": ([0.55, 0.75, 0.85, 0.90], [0.50, 0.70, 0.78, 0.81]),
    "resnet56": ([0.60, 0.80, 0.90, 0.95], [0.55, 0.74, 0.82, 0.86]),
}


def he_run(root, model, *, periodic_test=False):
    train, held = CURVES[model]
    records = []
    for e, (tr, va) in enumerate(zip(train, held), start=1):
        records.append(rec(10 * e, float(e), "train", loss=2.0 / e, accuracy=tr))
        records.append(rec(10 * e, float(e), "val", loss=2.5 / e, accuracy=va, error=1 - va))
        if periodic_test:
            records.append(rec(10 * e, float(e), "test", loss=2.4 / e, accuracy=va - 0.01, error=1 - (va - 0.01)))
    return make_run(root / f"run_{model}", model=model, status={"status": "finished"}, records=records)


@pytest.fixture
def he_runs(tmp_path):
    runs = [he_run(tmp_path, m) for m in CURVES]
    random.Random(0).shuffle(runs)  # the preset groups and orders by model name, not by argument order
    return runs


def lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_he2016_figure_reproduces_the_layout_and_the_data(he_runs, tmp_path):
    fig = plot_runs(he_runs, figure="he2016")
    axes = [ax for ax in fig.axes if ax.get_lines()]
    assert [ax.get_title() for ax in axes] == ["plain networks", "ResNets"]
    for ax, models in zip(axes, (("plain20", "plain56"), ("resnet20", "resnet56"))):
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "error (%)"
        lines = lines_by_label(ax)
        expected = [f"{pretty_model_name(m)} {k}" for m in models for k in ("train_error", "val_error")]
        assert list(lines) == expected
        assert [t.get_text() for t in ax.get_legend().get_texts()] == expected
        for m in models:
            train, held = CURVES[m]
            tr, va = lines[f"{pretty_model_name(m)} train_error"], lines[f"{pretty_model_name(m)} val_error"]
            np.testing.assert_allclose(tr.get_xdata(), [1, 2, 3, 4])
            np.testing.assert_allclose(tr.get_ydata(), 100 * (1 - np.array(train)))
            np.testing.assert_allclose(va.get_ydata(), 100 * (1 - np.array(held)))
            assert tr.get_linestyle() == "--" and va.get_linestyle() == "-"
            assert tr.get_color() == va.get_color()  # one colour per run
    # deeper is worse for plain nets and better for ResNets, in the plotted data
    final = {label: line.get_ydata()[-1] for ax in axes for label, line in lines_by_label(ax).items()}
    assert final["plain-56 val_error"] > final["plain-20 val_error"]
    assert final["ResNet-56 val_error"] < final["ResNet-20 val_error"]
    out = save_figure(fig, tmp_path / "figs" / "he2016.png")
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 10_000


def test_he2016_uses_test_error_when_the_runs_evaluated_the_test_split(tmp_path):
    runs = [he_run(tmp_path, m, periodic_test=True) for m in CURVES]
    fig = plot_runs(runs, figure="he2016", x="step")
    ax = fig.axes[0]
    line = lines_by_label(ax)["plain-20 test_error"]
    np.testing.assert_allclose(line.get_xdata(), [10, 20, 30, 40])
    np.testing.assert_allclose(line.get_ydata(), 100 * (1.01 - np.array(CURVES["plain20"][1])))
    assert ax.get_xlabel() == "step"


def test_default_layout_one_panel_per_metric(he_runs):
    fig = plot_runs(he_runs[:2], metrics=["train_loss", "val_error"], x="step")
    assert [ax.get_title() for ax in fig.axes] == ["train_loss", "val_error"]
    assert [ax.get_ylabel() for ax in fig.axes] == ["train_loss", "val_error"]
    loss_lines = lines_by_label(fig.axes[0])
    assert list(loss_lines) == [p.name for p in he_runs[:2]]
    np.testing.assert_allclose(loss_lines[he_runs[0].name].get_xdata(), [10, 20, 30, 40])
    np.testing.assert_allclose(loss_lines[he_runs[0].name].get_ydata(), [2.0, 1.0, 2 / 3, 0.5])
    model = he_runs[1].name.removeprefix("run_")
    np.testing.assert_allclose(lines_by_label(fig.axes[1])[he_runs[1].name].get_ydata(), 1 - np.array(CURVES[model][1]))


def test_panels_by_name_and_errors(he_runs, tmp_path):
    by_name = {p.name: p for p in he_runs}
    fig = plot_runs(list(by_name.values()), metrics=["train_error"],
                    panels=["run_plain20,run_plain56", "run_resnet56"], percent=True)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [list(lines_by_label(ax)) for ax in shown] == [
        ["run_plain20 train_error", "run_plain56 train_error"], ["run_resnet56 train_error"]]
    assert shown[0].get_ylabel() == "error (%)"
    # a panel may name run directories directly
    fig = plot_runs([], metrics=["val_loss"], panels=[str(by_name["run_resnet20"])])
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), [2.5, 1.25, 2.5 / 3, 0.625])
    with pytest.raises(ConfigError, match="'nope' is neither one of the RUN arguments nor a run directory"):
        plot_runs(he_runs, panels=["nope"])
    with pytest.raises(ConfigError, match="has the metric 'val_eror'.*did you mean 'val_error'"):
        plot_runs(he_runs, metrics=["val_eror"])
    with pytest.raises(ConfigError, match="--figure must be one of he2016"):
        plot_runs(he_runs, figure="lenet")


def test_curves_of_a_real_run(tmp_path_factory, tmp_path):
    run = trained_tiny_run(tmp_path_factory)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in records if r["split"] == "train"}  # the last record of a step wins
    fig = plot_runs([run], metrics=["train_loss", "val_accuracy"], x="step")
    loss = fig.axes[0].get_lines()[0]
    np.testing.assert_allclose(loss.get_xdata(), sorted(train))
    np.testing.assert_allclose(loss.get_ydata(), [train[s]["loss"] for s in sorted(train)])
    val = [r for r in records if r["split"] == "val"]
    np.testing.assert_allclose(fig.axes[1].get_lines()[0].get_ydata(), [r["accuracy"] for r in val])

    out = tmp_path / "curves.png"
    res = runner.invoke(app, ["plot", str(run), "--metric", "train_loss,val_error", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(out) and out.read_bytes()[:8] == PNG
    res = runner.invoke(app, ["plot", str(run), "--metric", "val_f1", "-o", str(out)])
    assert res.exit_code == 2 and res.stderr.startswith("error: no run among")
    res = runner.invoke(app, ["plot", str(tmp_path), "-o", str(out)])
    assert res.exit_code == 2 and "is not a run directory" in res.stderr


def test_confusion_figure_shows_row_rates_and_counts():
    cm = np.array([[8, 2, 0], [1, 3, 0], [0, 0, 0]])
    fig = plot_confusion(cm, ["cat", "dog", "eel"], title="t")
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.get_images()[0].get_array(), [[0.8, 0.2, 0], [0.25, 0.75, 0], [0, 0, 0]])
    assert sorted(t.get_text() for t in ax.texts) == ["1", "2", "3", "8"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "eel"]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("predicted class", "true class", "t")
