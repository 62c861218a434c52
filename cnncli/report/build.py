"""`cnn report`: one self-contained HTML page for a run, or a comparison page for several.

A run's page shows whatever exists: a run still training, killed before its first checkpoint or
without a test evaluation gets its page with the missing parts named. The page is written only
after it is built, through a temporary file and a rename, and never into a run directory.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from cnncli.atomic import write_text_atomic
from cnncli.errors import CnnError, ConfigError, RunDirError, WriteError, one_line
from cnncli.report import html as h
from cnncli.report import sections
from cnncli.report.facts import RunFacts, read_run

DEFAULT_EXAMPLES = 12
CORRECT_EXAMPLES = 4


def check_output(output: Path, runs: Sequence[Path]) -> None:
    """Refuse an output inside a run directory (one of `runs` or any other) or one that is a folder."""
    from cnncli.runs import is_run_dir

    target = Path(os.path.abspath(output))
    if target.is_dir():
        raise ConfigError(f"-o {output} is a folder; give the HTML file to write, e.g. {output / 'report.html'}")
    resolved = target.parent.resolve() / target.name
    inside = [Path(r).resolve() for r in runs if Path(r).resolve() in resolved.parents]
    inside += [p for p in resolved.parents if p not in inside and p.is_dir() and is_run_dir(p)]
    if inside:
        raise RunDirError(f"-o {output} is inside the run directory {inside[0]}; a run directory holds what "
                          "training wrote, so write the page elsewhere (e.g. -o report.html)")


def _test_view(f: RunFacts):
    """(SplitView, None), or (None, why) where the run has no checkpoint to evaluate."""
    from cnncli.report.evaluation import evaluate_test

    try:
        return evaluate_test(f.path), None
    except CnnError as exc:
        return None, f"no checkpoint to evaluate, so no confusion matrix, examples or pictures of the model: {exc}"


def _model_sections(f: RunFacts, examples: int) -> list[tuple[str, str, str]]:
    from cnncli.report import pictures
    from cnncli.report.evaluation import pick_examples

    titles = (("evaluation", "test evaluation"), ("examples", "misclassified examples"),
              ("learned", "what the network learned"))
    view, why = _test_view(f)
    if view is None:
        return [(a, t, h.missing(why)) for a, t in titles]
    prefix = ""
    if f.row["status"] != "finished":
        prefix = h.missing(f"the run is {f.row['status']}: this is its best checkpoint so far "
                           f"(step {view.report['checkpoint_step']})")
    mistakes, correct = pick_examples(view, examples, min(CORRECT_EXAMPLES, examples) if examples else 0)
    with tempfile.TemporaryDirectory(prefix="cnn-report-") as tmp:
        folder = Path(tmp)
        first = correct[0] if correct else 0
        bodies = [prefix + pictures.evaluation(view, f.results),
                  pictures.examples(view, mistakes, correct, folder, examples),
                  pictures.learned(view, first, folder)]
    return [(a, t, b) for (a, t), b in zip(titles, bodies)]


def run_page(path: str | Path, *, examples: int = DEFAULT_EXAMPLES) -> str:
    """The HTML of one run's page."""
    f = read_run(path)
    parts = [("run", "run", sections.header(f)), ("curves", "learning curves", sections.curves(f))]
    parts += _model_sections(f, examples)
    parts += [("model", "model", sections.model(f)), ("config", "config", sections.config(f)),
              ("environment", "environment", sections.environment(f))]
    r = f.row
    subtitle = (f"{r['model'] or '?'} on {r['dataset'] or '?'}, {r['status']}; page made "
                f"{time.strftime('%Y-%m-%d %H:%M')} by cnn report")
    return h.page(f"cnn report: {f.name}", subtitle, parts)


def write_report(runs: Sequence[str | Path], output: str | Path, *, examples: int = DEFAULT_EXAMPLES) -> Path:
    """Build the page of one run (or the comparison of several) and write it to `output`."""
    if not runs:
        raise ConfigError("give at least one run directory: cnn report RUN [RUN ...] -o report.html")
    if examples < 0:
        raise ConfigError(f"--examples must be 0 or more, got {examples}")
    paths, output = [Path(r) for r in runs], Path(output)
    for p in paths:
        read_run(p)  # every argument is a run before any work
    check_output(output, paths)
    if len(paths) == 1:
        text = run_page(paths[0], examples=examples)
    else:
        from cnncli.report.compare import comparison_page

        text = comparison_page(paths)
    return _write(output, text)


def _write(output: Path, text: str) -> Path:
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output, text)
    except OSError as exc:
        raise WriteError(f"could not write {output}: {one_line(exc)}") from None
    return output
