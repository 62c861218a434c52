"""The parts of a run's page that need its trained model: the test evaluation (confusion matrix,
per-class table, confused pairs), the misclassified and correct test examples with Grad-CAM, and
what the network learned (first-layer filters, feature maps with receptive fields).

Figures are `cnn eval --plot`'s (cnncli.plots.plot_confusion) and `cnn show`'s
(cnncli.show: show_cam, show_features, show_filters), run on the test images themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnncli.report import html as h
from cnncli.report.evaluation import SplitView, confused_pairs, example_file
from cnncli.report.sections import value

EXAMPLE_DPI = 64  # the Grad-CAM strips: three 2.2-inch panels each, many of them


def evaluation(view: SplitView, results: dict[str, Any] | None) -> str:
    from cnncli.plots import plot_confusion

    r = view.report
    step = r.get("checkpoint_step")
    check = ""
    if results is not None:
        same = results.get("checkpoint_step") == step and results.get("accuracy") == r["accuracy"]
        check = (" (the accuracy results.json has)" if same else
                 f" (results.json has {h.number(results.get('accuracy'))} from step {results.get('checkpoint_step')})")
    intro = h.note(f"test split through the best checkpoint (step {step}), as `cnn eval` evaluates it: accuracy "
                   f"{h.number(r['accuracy'])}{check}, top-5 {h.number(r['top5_accuracy'])}, loss "
                   f"{h.number(r['loss'])}, {r['num_examples']} examples")
    names = [c["name"] for c in r["per_class"]]
    cm = h.figure(plot_confusion(r["confusion_matrix"], names, title=f"confusion matrix, test split (step {step})"),
                  alt="confusion matrix")
    per_class = h.table(["class", "support", "precision", "recall", "F1"],
                        [(c["name"], c["support"], f"{c['precision']:.4f}", f"{c['recall']:.4f}", f"{c['f1']:.4f}")
                         for c in r["per_class"]], numeric_from=1)
    macro = h.note(f"macro averages over {r['macro_classes']} classes: precision {r['macro_precision']:.4f}, "
                   f"recall {r['macro_recall']:.4f}, F1 {r['macro_f1']:.4f}")
    pairs = confused_pairs(r["confusion_matrix"], names)
    pair_table = h.table(["true class", "predicted as", "examples", "share of the true class"],
                         [(p["true"], p["predicted"], p["count"], f"{p['share']:.1%}") for p in pairs],
                         numeric_from=2) if pairs else h.note("no confusions: every test example is right")
    return (intro + f'<div class="figs">{cm}'
            f"<div><h3>per class</h3>{per_class}{macro}</div><div><h3>most confused pairs</h3>{pair_table}</div>"
            "</div>")


def _file_words(view: SplitView, index: int) -> str:
    """` (class/file.png)` for an image-folder run's example: the file it is."""
    if not view.file_backed:
        return ""
    path = Path(str(view.images[index]))
    return f" ({h.esc(path.parent.name + '/' + path.name)})"


def _card(view: SplitView, index: int, picture: tuple[Any, dict[str, Any]], right: bool) -> str:
    fig, data = picture
    true, pred = int(view.labels[index]), int(view.predictions[index])
    p = float(view.probs[index, pred])
    caption = (f"test #{index}{_file_words(view, index)}: true <b>{h.esc(view.class_names[true])}</b>, predicted "
               f"<b>{h.esc(view.class_names[pred])}</b> with p = "
               + value(f"test.{index}.probability", p, ".3f")
               + (f", p(true) = {float(view.probs[index, true]):.3f}" if not right else "")
               + f"; Grad-CAM of the predicted class at {h.esc(data['layer'])} (receptive field "
               f"{h.esc(data['receptive_field'])} px)")
    img = h.figure(fig, caption, dpi=EXAMPLE_DPI, alt=f"test example {index}")
    return f'<div class="card {"right" if right else "wrong"}">{img}</div>'


def examples(view: SplitView, mistakes: list[int], correct: list[int], folder: Path,
             limit: int) -> str:
    """Grad-CAM strips (input, map, overlay) of the misclassified examples, then of a few correct ones
    (`cnn show cam`'s pictures, computed for all of them in one batch)."""
    from cnncli.show.cam import show_cams

    wrong = int((view.predictions != view.labels).sum())
    shown = mistakes + correct
    pictures = show_cams(view.subject, [example_file(view, i, folder) for i in shown]) if shown else []
    cards = [_card(view, i, pic, k >= len(mistakes)) for k, (i, pic) in enumerate(zip(shown, pictures))]
    parts = [h.note(f"{wrong} of {len(view.labels)} test examples are misclassified; shown: "
                    f"{len(mistakes)} (at most {limit}), the most confident mistakes first")]
    if mistakes:
        parts.append('<div class="cards">' + "".join(cards[:len(mistakes)]) + "</div>")
    if correct:
        parts.append("<h3>correct, for contrast</h3>" + '<div class="cards">' + "".join(cards[len(mistakes):])
                     + "</div>")
    return "".join(parts)


def learned(view: SplitView, index: int, folder: Path) -> str:
    """The first conv layer's filters, and one test example's feature maps from low to high level."""
    from cnncli.show.features import show_features
    from cnncli.show.filters import show_filters

    fig, data = show_filters(view.subject)
    filters = h.figure(fig, f"{h.esc(data['layer'])}: {data['shown']} filters of shape "
                            f"{h.esc('x'.join(map(str, data['kernel_shape'][:2])))}, each scaled to its own range",
                       alt="first-layer filters")
    fig, data = show_features(view.subject, example_file(view, index, folder), top_k=8)
    layers = "; ".join(f"{p['layer']} {'x'.join(map(str, p['output_shape']))}, receptive field "
                       f"{p['receptive_field']} px" for p in data["layers"])
    features = h.figure(fig, f"test #{index} ({h.esc(view.class_names[int(view.labels[index])])}): the 8 strongest "
                             f"channels per layer, low level to high level: {h.esc(layers)}", alt="feature maps")
    return f"<h3>first-layer filters</h3>{filters}<h3>feature maps</h3>{features}"
