"""The test split through the run's best checkpoint, for the page: `cnn eval`'s report
(cnncli.evaluate.evaluate_member: the numbers results.json has, plus per-class metrics and the
confusion matrix), the examples behind it, the most confused pairs, and which examples to show.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np


@dataclasses.dataclass
class SplitView:
    subject: Any  # cnncli.show.subject.Subject: the evaluated model, for cnn show's pictures
    report: dict[str, Any]  # evaluate_member's report: loss, accuracy, per_class, confusion_matrix, ...
    probs: np.ndarray  # [N, K] softmax probabilities
    labels: np.ndarray  # [N]
    class_names: list[str]
    images: np.ndarray  # uint8 [N, H, W, C] as the model sees them, or [N] file paths (image folders)
    file_backed: bool

    @property
    def predictions(self) -> np.ndarray:
        return np.argmax(self.probs, axis=1)


def evaluate_test(run: str | Path) -> SplitView:
    """Evaluate the best checkpoint on the test split (a CnnError where the run has none)."""
    from cnncli.config import load_config, resolve_data_shape
    from cnncli.evaluate import _EvalContext, evaluate_member, load_checkpoint_model
    from cnncli.show.subject import subject_of

    loaded = []

    def load(path, which, overrides):  # restored once: evaluated, then looked into
        loaded.append(load_checkpoint_model(path, which, overrides))
        return loaded[-1]

    context = _EvalContext()
    member = evaluate_member(run, split="test", context=context, load=load)
    cfg = resolve_data_shape(load_config(Path(run) / "config.yaml"))
    data = context.dataset(cfg.data)  # the dataset the evaluation used (cached by its config)
    images, labels = data.split("test")
    if not np.array_equal(np.asarray(labels), member.labels):
        raise AssertionError("the test split read for the pictures differs from the one evaluated")
    return SplitView(subject_of(loaded[-1]), member.report, np.exp(member.log_probs), member.labels,
                    member.class_names, np.asarray(images), bool(data.file_backed))


def confused_pairs(cm: Any, class_names: list[str], limit: int = 10) -> list[dict[str, Any]]:
    """The largest off-diagonal cells of a confusion matrix: (true, predicted, count, share of the true class),
    most frequent first (ties: by true class, then predicted class)."""
    cm = np.asarray(cm, np.int64)
    support = cm.sum(axis=1)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    rows, cols = np.nonzero(off)
    order = np.lexsort((cols, rows, -off[rows, cols]))[:limit]
    return [{"true": class_names[i], "predicted": class_names[j], "count": int(off[i, j]),
             "share": float(off[i, j] / support[i])} for i, j in zip(rows[order], cols[order])]


def pick_examples(view: SplitView, wrong: int, right: int) -> tuple[list[int], list[int]]:
    """(misclassified, correctly classified) test indices to show.

    The misclassified ones, at most `wrong`, most confident mistake first; the correct ones, at
    most `right`, one per class where possible, the most confident first.
    """
    pred, probs = view.predictions, view.probs
    confidence = probs[np.arange(len(pred)), pred]
    order = np.argsort(-confidence, kind="stable")
    mistakes = [int(i) for i in order if pred[i] != view.labels[i]][:wrong]
    correct, seen = [], set()
    for i in order:
        if pred[i] == view.labels[i] and int(pred[i]) not in seen and len(correct) < right:
            correct.append(int(i))
            seen.add(int(pred[i]))
    return mistakes, correct


def example_file(view: SplitView, index: int, folder: Path) -> Path:
    """A file `cnn show` can read for test example `index`: the image file itself (image folders),
    else a lossless PNG of the pixels the model sees (read back unchanged: same size and channels)."""
    if view.file_backed:
        return Path(str(view.images[index]))
    from PIL import Image

    pixels = view.images[index]
    path = folder / f"test-{index}.png"
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)
    return path
