"""Macro averages of cnncli.scores against scikit-learn."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_fscore_support

from cnncli.scores import class_breakdown, log_softmax, score_log_probs


def sklearn_macro(y, p, labels=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about ill-defined ratios (counted as 0)
        prec, rec, f1, _ = precision_recall_fscore_support(y, p, labels=labels, average="macro", zero_division=0)
    return prec, rec, f1


def test_a_class_missing_from_the_split_but_predicted_counts_in_the_macro_average():
    # 4 classes; class 3 has no examples in the split, but the model predicts it twice.
    y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    p = np.array([0, 0, 3, 1, 1, 0, 2, 2, 3, 1])
    got = class_breakdown(p, y, ["a", "b", "c", "d"])
    prec, rec, f1 = sklearn_macro(y, p, labels=[0, 1, 2, 3])
    assert got["macro_precision"] == pytest.approx(prec)
    assert got["macro_recall"] == pytest.approx(rec)
    assert got["macro_f1"] == pytest.approx(f1)
    assert got["macro_f1"] == pytest.approx(f1_score(y, p, average="macro", labels=[0, 1, 2, 3]))
    # by hand: a and b have P = R = 2/3; c has P = 1, R = 1/2 (F1 2/3); d has P = 0; mean over 4 classes
    assert got["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 2 / 3 + 0) / 4)
    assert got["macro_precision"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 0) / 4)
    assert got["macro_classes"] == 4 and got["macro_undefined_classes"] == []


def test_a_class_with_no_examples_and_no_predictions_is_undefined_and_left_out():
    y = np.array([0, 0, 1, 1, 1, 3])
    p = np.array([0, 1, 1, 1, 0, 3])
    got = class_breakdown(p, y, ["a", "b", "c", "d"])
    # scikit-learn's macro over the classes seen in y or p
    prec, rec, f1 = sklearn_macro(y, p)
    assert (got["macro_precision"], got["macro_recall"], got["macro_f1"]) == pytest.approx((prec, rec, f1))
    assert got["macro_classes"] == 3 and got["macro_undefined_classes"] == ["c"]
    assert got["per_class"][2]["f1"] == 0.0 and got["per_class"][2]["support"] == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_predictions_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    k, n = 7, 60
    y = rng.choice([0, 1, 2, 4, 5, 6], size=n)  # class 3 never in the split
    logits = rng.normal(size=(n, k))
    logits[:5, 3] += 10  # ... but predicted for the first five
    report = score_log_probs(log_softmax(logits), y, [str(i) for i in range(k)])
    p = np.argmax(logits, axis=1)
    prec, rec, f1 = sklearn_macro(y, p, labels=list(range(k)))
    assert report["macro_precision"] == pytest.approx(prec)
    assert report["macro_recall"] == pytest.approx(rec)
    assert report["macro_f1"] == pytest.approx(f1)
    assert report["macro_classes"] == k


def test_the_macro_fields_survive_json():
    import json

    report = class_breakdown(np.array([0, 1]), np.array([0, 0]), ["a", "b", "c"])
    again = json.loads(json.dumps(report))
    assert again["macro_classes"] == 2 and again["macro_undefined_classes"] == ["c"]
