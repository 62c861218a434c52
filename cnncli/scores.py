"""Scores of classifier outputs in plain numpy: top-k accuracy, loss, confusion matrix and
per-class precision / recall / F1, and the mean-probability combination used for ensembles
and test-time augmentation.

Everything works on log-probabilities [N, K] (float64), so that averaging probabilities
stays exact for confident models (a probability of 1e-300 is still a finite log).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def mean_probabilities(log_probs: Sequence[np.ndarray]) -> np.ndarray:
    """log(mean_i p_i) of several [N, K] log-probability arrays (log-sum-exp, float64)."""
    if not log_probs:
        raise ValueError("mean_probabilities needs at least one array")
    stacked = np.stack([np.asarray(lp, np.float64) for lp in log_probs])
    top = stacked.max(axis=0)
    return top + np.log(np.exp(stacked - top).mean(axis=0))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [K, K] counts; row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
    return cm


def per_class_metrics(cm: np.ndarray, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """One {name, accuracy, precision, recall, f1, support} per class of a confusion matrix.

    A class's accuracy is the fraction of its examples classified correctly (equal to its
    recall). A ratio whose denominator is zero (no examples, or never predicted) is 0.0, as
    in scikit-learn's `zero_division=0`.
    """
    cm = np.asarray(cm, np.int64)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return [
        {"name": str(class_names[i]), "accuracy": float(recall[i]), "precision": float(precision[i]),
         "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
        for i in range(cm.shape[0])
    ]


def top_k_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Boolean [N]: is the label among the k highest scores (ties broken towards lower class ids)?"""
    k = min(k, scores.shape[1])
    # A stable sort of -scores keeps equal scores in class order, like jax.lax.top_k.
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.any(top == np.asarray(labels)[:, None], axis=1)


def macro_averages(cm: np.ndarray, per_class: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Unweighted means of per-class precision / recall / F1 over the classes they are defined for.

    A class counts when it has examples or the model predicted it (a class predicted but
    absent from the split counts with precision 0). A class with neither is undefined and
    left out; it is named in `macro_undefined_classes`. This equals scikit-learn's
    `precision_recall_fscore_support(y, p, average="macro")`, and equals it with
    `labels=range(K)` whenever no class is undefined.
    """
    cm = np.asarray(cm, np.int64)
    defined = (cm.sum(axis=1) > 0) | (cm.sum(axis=0) > 0)
    covered = [c for c, d in zip(per_class, defined) if d]
    macro = {f"macro_{m}": float(np.mean([c[m] for c in covered])) if covered else 0.0
             for m in ("precision", "recall", "f1")}
    return {**macro, "macro_classes": len(covered),
            "macro_undefined_classes": [c["name"] for c, d in zip(per_class, defined) if not d]}


def class_breakdown(predictions: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Confusion matrix, per-class metrics and their macro averages for predicted class ids."""
    k = len(class_names)
    cm = confusion_matrix(labels, predictions, k)
    per_class = per_class_metrics(cm, class_names)
    return {**macro_averages(cm, per_class), "per_class": per_class, "confusion_matrix": cm.tolist()}


def score_log_probs(log_probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """The full report of [N, K] log-probabilities against integer labels.

    loss is the mean negative log-probability of the true class (cross-entropy of the
    combined distribution, for an ensemble or augmented views).
    """
    log_probs = np.asarray(log_probs, np.float64)
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    if n == 0:
        raise ValueError("cannot score zero examples")
    top1 = np.argmax(log_probs, axis=1)
    accuracy = float(np.mean(top1 == labels))
    top5 = float(np.mean(top_k_correct(log_probs, labels, 5)))
    loss = float(-np.mean(log_probs[np.arange(n), labels]))
    return {"loss": loss, "accuracy": accuracy, "top5_accuracy": top5, "error": 1.0 - accuracy,
            "top5_error": 1.0 - top5, "num_examples": n, **class_breakdown(top1, labels, class_names)}
