"""`cnn eval`: numbers against plain numpy on a restored tiny model, per-class metrics, TTA, ensembles."""

import csv
import io
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.scores import (
    class_breakdown,
    confusion_matrix,
    log_softmax,
    mean_probabilities,
    per_class_metrics,
    score_log_probs,
)
from tests.conftest import shared_tiny_run

runner = CliRunner()


def trained_tiny_run(tmp_path_factory):
    """The session's tiny trained run (8 steps, checkpoints at steps 4 and 8): tests/conftest.py."""
    return shared_tiny_run(tmp_path_factory).run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_tiny_run(tmp_path_factory)


def cnn(*args):
    return runner.invoke(app, [str(a) for a in args])


# ----------------------------------------------------------------------------- numpy reference


def reference_log_probs(path, x_uint8=None, split="test"):
    """Log-probabilities computed outside the Evaluator: restored model called directly, numpy preprocessing."""
    import jax.numpy as jnp
    from flax import nnx

    from cnncli.data.pipeline import prepare_dataset
    from cnncli.evaluate import load_checkpoint_model

    loaded = load_checkpoint_model(path)
    x, y = prepare_dataset(loaded.config.data).split(split)
    if x_uint8 is not None:
        x = x_uint8
    mean, std = np.asarray(loaded.mean, np.float32), np.asarray(loaded.std, np.float32)
    xf = (x.astype(np.float32) / 255.0 - mean) / std
    model = nnx.merge(loaded.parts.eval_graph, loaded.params, loaded.batch_stats, loaded.parts.rng_state)
    logits = np.asarray(model(jnp.asarray(xf)), np.float64)
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True)), y, x


def numpy_scores(log_probs, y):
    n = len(y)
    order = np.argsort(-log_probs, axis=1)
    ranked = np.sort(log_probs, axis=1)[:, ::-1]
    return {"loss": float(-log_probs[np.arange(n), y].mean()),
            "accuracy": float(np.mean(order[:, 0] == y)),
            "top5_accuracy": float(np.mean((order[:, :5] == y[:, None]).any(axis=1))),
            "confusion": np.array([[np.sum((y == i) & (order[:, 0] == j)) for j in range(10)] for i in range(10)]),
            # Near-ties that float rounding of a different batch size may order either way.
            "ties_top1": int(np.sum(ranked[:, 0] - ranked[:, 1] < 1e-5)),
            "ties_top5": int(np.sum(ranked[:, 4] - ranked[:, 5] < 1e-5))}


def assert_matches(report, ref, n, loss_rel=1e-5):
    """Report == numpy reference; an example whose top classes tie within 1e-5 may count either way."""
    assert abs(report["accuracy"] - ref["accuracy"]) * n <= ref["ties_top1"]
    assert abs(report["top5_accuracy"] - ref["top5_accuracy"]) * n <= ref["ties_top5"]
    assert np.abs(np.array(report["confusion_matrix"]) - ref["confusion"]).sum() <= 2 * ref["ties_top1"]
    assert report["loss"] == pytest.approx(ref["loss"], rel=loss_rel)
    assert ref["ties_top1"] <= 2 and ref["ties_top5"] <= 2  # otherwise the comparison says little


# ----------------------------------------------------------------------------- scores on constructed inputs


def test_per_class_metrics_on_a_constructed_confusion_matrix():
    cm = np.array([[5, 1, 0],
                   [2, 3, 0],
                   [0, 0, 0]])  # class 2: no examples and never predicted
    pc = per_class_metrics(cm, ["a", "b", "c"])
    assert [c["name"] for c in pc] == ["a", "b", "c"]
    assert [c["support"] for c in pc] == [6, 5, 0]
    assert pc[0]["precision"] == pytest.approx(5 / 7) and pc[0]["recall"] == pytest.approx(5 / 6)
    assert pc[0]["f1"] == pytest.approx(2 * (5 / 7) * (5 / 6) / (5 / 7 + 5 / 6))
    assert pc[1]["precision"] == pytest.approx(3 / 4) and pc[1]["recall"] == pytest.approx(3 / 5)
    assert pc[1]["accuracy"] == pc[1]["recall"]
    assert (pc[2]["precision"], pc[2]["recall"], pc[2]["f1"]) == (0.0, 0.0, 0.0)

    from sklearn.metrics import precision_recall_fscore_support

    y_true = np.repeat([0, 0, 1, 1], [5, 1, 2, 3])
    y_pred = np.repeat([0, 1, 0, 1], [5, 1, 2, 3])
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2], zero_division=0)
    np.testing.assert_allclose([c["precision"] for c in pc], p)
    np.testing.assert_allclose([c["recall"] for c in pc], r)
    np.testing.assert_allclose([c["f1"] for c in pc], f)
    assert confusion_matrix(y_true, y_pred, 3).tolist() == cm.tolist()
    macro = class_breakdown(y_pred, y_true, ["a", "b", "c"])
    assert macro["macro_f1"] == pytest.approx((pc[0]["f1"] + pc[1]["f1"]) / 2)  # classes without examples excluded


def test_score_log_probs_by_hand():
    # 3 examples, 6 classes; true classes 0, 1, 5.
    p = np.array([[0.50, 0.10, 0.10, 0.10, 0.10, 0.10],  # right at top-1
                  [0.30, 0.05, 0.25, 0.20, 0.15, 0.05],  # true class 1 ranks 5th (tie with 5 broken by id)
                  [0.40, 0.20, 0.15, 0.10, 0.10, 0.05]])  # true class 5 ranks 6th
    y = np.array([0, 1, 5])
    r = score_log_probs(np.log(p), y, list("abcdef"))
    assert r["accuracy"] == pytest.approx(1 / 3)
    assert r["top5_accuracy"] == pytest.approx(2 / 3)
    assert r["loss"] == pytest.approx(-(np.log(0.5) + np.log(0.05) + np.log(0.05)) / 3)
    assert r["error"] == pytest.approx(2 / 3) and r["top5_error"] == pytest.approx(1 / 3)
    assert r["num_examples"] == 3
    assert r["confusion_matrix"][0][0] == 1 and r["confusion_matrix"][1][0] == 1 and r["confusion_matrix"][5][0] == 1


def test_mean_probabilities_is_the_log_of_the_mean_softmax():
    rng = np.random.default_rng(0)
    a, b, c = (rng.normal(size=(7, 4)) * 5 for _ in range(3))
    soft = [np.exp(v) / np.exp(v).sum(1, keepdims=True) for v in (a, b, c)]
    np.testing.assert_allclose(np.exp(mean_probabilities([log_softmax(v) for v in (a, b, c)])),
                               (soft[0] + soft[1] + soft[2]) / 3, rtol=1e-12)
    # Extreme logits stay finite (a probability far below float64's smallest normal number).
    extreme = mean_probabilities([np.array([[0.0, -2000.0]]), np.array([[0.0, -1000.0]])])
    assert np.isfinite(extreme).all() and extreme[0, 1] == pytest.approx(-1000 - np.log(2))


# ----------------------------------------------------------------------------- a restored model


def test_eval_matches_numpy_and_results_json(run):
    from cnncli.evaluate import evaluate_run

    log_probs, y, _ = reference_log_probs(run)
    ref = numpy_scores(log_probs, y)
    results = json.loads((run / "results.json").read_text())
    for bs in (None, 100):  # 100: the last batch of 359 is padded (59 real + 41 masked)
        r = evaluate_run(run, batch_size=bs)
        assert r["num_examples"] == 359
        assert_matches(r, ref, 359)
        assert [c["support"] for c in r["per_class"]] == np.bincount(y, minlength=10).tolist()
        assert [c["name"] for c in r["per_class"]] == [str(i) for i in range(10)]
        if bs is None:  # the same batches as training's final evaluation: the same numbers
            for key in ("accuracy", "top5_accuracy", "loss", "num_examples", "checkpoint_step"):
                assert r[key] == results[key], key


def test_tta_flip_averages_the_image_and_its_mirror(run):
    from cnncli.evaluate import evaluate_run

    lp, y, x = reference_log_probs(run)
    lp_mirror, _, _ = reference_log_probs(run, x[:, :, ::-1])
    mean_p = (np.exp(lp) + np.exp(lp_mirror)) / 2
    ref = numpy_scores(np.log(mean_p), y)
    r = evaluate_run(run, tta="flip")
    assert r["tta"] == "flip" and r["num_examples"] == 359
    assert_matches(r, ref, 359)


def test_ensemble_of_identical_checkpoints_equals_one(run):
    from cnncli.evaluate import evaluate_models, evaluate_run

    single = evaluate_run(run)
    ens = evaluate_models([run, run])
    assert len(ens["members"]) == 2 and ens["ensemble"]["num_members"] == 2
    assert ens["accuracy"] == single["accuracy"] and ens["top5_accuracy"] == single["top5_accuracy"]
    assert ens["loss"] == pytest.approx(single["loss"], rel=1e-6)
    assert ens["confusion_matrix"] == single["confusion_matrix"]
    assert ens["per_class"] == single["per_class"]
    assert ens["gain"]["accuracy"] == 0.0
    for m in ens["members"]:
        assert m["accuracy"] == single["accuracy"] and m["loss"] == single["loss"]


def test_ensemble_of_different_members_is_the_mean_probability(run):
    from cnncli.evaluate import evaluate_models

    a, b = run / "checkpoints" / "4", run / "checkpoints" / "8"
    lp_a, y, _ = reference_log_probs(a)
    lp_b, _, _ = reference_log_probs(b)
    assert not np.allclose(lp_a, lp_b)  # the two steps really are different models
    ref = numpy_scores(np.log((np.exp(lp_a) + np.exp(lp_b)) / 2), y)
    ens = evaluate_models([a, b])
    assert ens["num_examples"] == 359
    assert_matches(ens, ref, 359)
    assert ens["ensemble"]["accuracy"] == ens["accuracy"]
    assert [m["checkpoint_step"] for m in ens["members"]] == [4, 8]
    for got, lp in zip(ens["members"], (lp_a, lp_b)):
        assert_matches(got, numpy_scores(lp, y), 359)
    members = ens["members"]
    best = max(members, key=lambda m: (m["accuracy"], -m["loss"]))
    assert ens["gain"]["best_member"] == best["path"]
    assert ens["gain"]["accuracy"] == pytest.approx(ens["accuracy"] - best["accuracy"])
    assert ens["gain"]["loss"] == pytest.approx(ens["loss"] - best["loss"])


def test_ensemble_refuses_members_that_saw_different_examples():
    from cnncli.errors import DataError
    from cnncli.evaluate import MemberResult, combine_members

    lp = np.log(np.full((3, 2), 0.5))
    a = MemberResult({"path": "a", "split": "test", "tta": None}, lp, np.array([0, 1, 0]), ["x", "y"])
    b = MemberResult({"path": "b", "split": "test", "tta": None}, lp, np.array([0, 1, 1]), ["x", "y"])
    with pytest.raises(DataError, match="a and b see different test examples"):
        combine_members([a, b])


# ----------------------------------------------------------------------------- the command


def test_cli_json_contract_single_and_ensemble(run, tmp_path):
    res = cnn("eval", run, "--format", "json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    for key in ("accuracy", "top5_accuracy", "error", "top5_error", "loss", "num_examples", "per_class",
                "confusion_matrix"):
        assert key in out, key
    assert set(out["per_class"][0]) == {"name", "accuracy", "precision", "recall", "f1", "support"}
    assert np.array(out["confusion_matrix"]).shape == (10, 10)
    assert np.array(out["confusion_matrix"]).sum() == out["num_examples"] == 359
    assert out["error"] == pytest.approx(1 - out["accuracy"])

    res = cnn("eval", run, run / "checkpoints" / "4", "--format", "json", "--output", tmp_path / "ens.csv",
              "--plot", tmp_path / "cm.png")
    assert res.exit_code == 0, res.output
    ens = json.loads(res.stdout)
    assert len(ens["members"]) == 2 and {"ensemble", "gain"} <= set(ens)
    assert ens["members"][0]["per_class"] and ens["ensemble"]["confusion_matrix"] == ens["confusion_matrix"]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "ens.csv").read_text())))
    assert [r["model"] for r in rows] == [str(run), str(run / "checkpoints" / "4"), "ensemble"]
    assert float(rows[2]["accuracy"]) == ens["accuracy"]
    png = (tmp_path / "cm.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_cli_csv_and_table(run):
    res = cnn("eval", run, "--format", "csv", "--split", "val")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 1 and rows[0]["split"] == "val" and rows[0]["num_examples"] == "144"
    res = cnn("eval", run, "--tta", "flip")
    assert res.exit_code == 0, res.output
    assert "per class" in res.stdout and "confusion matrix" in res.stdout and "TTA flip" in res.stdout


def test_cli_bad_input_is_one_line(run, tmp_path):
    res = cnn("eval", run, "--split", "holdout")
    assert res.exit_code == 2 and res.stderr.strip().count("\n") == 0
    assert "unknown split 'holdout'" in res.stderr
    res = cnn("eval", run, "--set", "data.image_size=8")
    assert res.exit_code == 2 and "model.input_size=16 contradicts data.image_size=8" in res.stderr
    res = cnn("eval", tmp_path / "nothing")
    assert res.exit_code == 2 and "nothing" in res.stderr
    res = cnn("eval", run, "--batch-size", "0")
    assert res.exit_code == 2 and "--batch-size" in res.output


@pytest.mark.slow
def test_data_path_evaluates_the_same_images_from_an_image_folder(run, tmp_path):
    """--data-path with the folder source: file-backed decoding gives the in-memory numbers."""
    from PIL import Image

    from cnncli.evaluate import evaluate_run

    _, y, x = reference_log_probs(run)
    root = tmp_path / "digits_folder"
    one_per_class = [int(np.argmax(y == c)) for c in range(10)]
    for split, idx in (("train", one_per_class), ("val", one_per_class), ("test", range(len(y)))):
        for i in idx:
            target = root / split / str(y[i]) / f"{i:03d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i, :, :, 0], "L").save(target)
    in_memory = evaluate_run(run)
    from_files = evaluate_run(run, data_path=root, overrides=["data.source=folder"])
    assert from_files["num_examples"] == 359
    assert from_files["accuracy"] == in_memory["accuracy"]
    assert from_files["top5_accuracy"] == in_memory["top5_accuracy"]
    assert from_files["loss"] == pytest.approx(in_memory["loss"], rel=1e-6)
    assert from_files["confusion_matrix"] == in_memory["confusion_matrix"]
    flipped = evaluate_run(run, data_path=root, overrides=["data.source=folder"], tta="flip")
    assert flipped["loss"] == pytest.approx(evaluate_run(run, tta="flip")["loss"], rel=1e-6)


@pytest.mark.slow
def test_ensemble_of_different_architectures(run, tmp_path):
    """The lecture's ensemble of CNNs with different architectures: members of different models on the same
    data combine their softmax probabilities; checked against each member's own log-probabilities."""
    from cnncli.evaluate import evaluate_member
    from tests.conftest import TINY_CONFIG

    cfg = tmp_path / "plain.yaml"
    cfg.write_text(TINY_CONFIG.replace("name: resnet20", "name: plain20"))
    other = tmp_path / "plain"
    assert cnn("train", cfg, "--run-dir", other).exit_code == 0
    res = cnn("eval", run, other, "--format", "json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert [m["path"] for m in report["members"]] == [str(run), str(other)]
    a, b = evaluate_member(run), evaluate_member(other)
    p = (np.exp(a.log_probs) + np.exp(b.log_probs)) / 2  # plain numpy: the mean of the two softmaxes
    labels = a.labels
    assert report["accuracy"] == pytest.approx(np.mean(p.argmax(1) == labels), abs=1e-12)
    assert report["loss"] == pytest.approx(-np.mean(np.log(p[np.arange(len(labels)), labels])), rel=1e-9)
    assert report["num_examples"] == len(labels) == 359
