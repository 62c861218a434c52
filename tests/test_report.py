"""`cnn report`: the page of a tiny digits run, checked as HTML, with PIL, and in a real browser."""

import base64
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.report.evaluation import SplitView, confused_pairs, pick_examples

runner = CliRunner()
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def cnn(*args):
    return runner.invoke(app, [str(a) for a in args])


class Page(HTMLParser):
    """What a test reads off a page: every src/href, the images, the tagged values, the tags and the text."""

    def __init__(self, text):
        super().__init__()
        self.links, self.images, self.values, self.tags, self.text = [], [], {}, set(), []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        self.links += [v for k, v in attrs if k in ("src", "href", "action", "poster", "srcset", "data")]
        if tag == "img":
            self.images.append(a.get("src", ""))
        if "data-key" in a:
            self.values[a["data-key"]] = json.loads(a["data-value"])

    def handle_data(self, data):
        self.text.append(data)

    @property
    def plain(self):
        return " ".join(" ".join(self.text).split())


def decoded(uri):
    """The PIL image of a data URI (fully decoded)."""
    head, _, payload = uri.partition(",")
    assert head == "data:image/png;base64", head[:40]
    image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
    image.load()
    return image


def assert_self_contained(text, page):
    assert not re.search(r"https?://|ftp://|//[a-z0-9.-]+\.[a-z]{2,}/", text, re.IGNORECASE)
    assert all(v.startswith(("data:", "#")) for v in page.links), [v[:60] for v in page.links
                                                                   if not v.startswith(("data:", "#"))]
    assert not page.tags & {"script", "link", "iframe", "object", "embed"}
    assert "@import" not in text and "url(" not in text


# ----------------------------------------------------------------------------- fast checks


def test_confused_pairs_and_the_examples_picked():
    cm = np.array([[5, 2, 0], [3, 4, 3], [0, 1, 6]])
    pairs = confused_pairs(cm, ["a", "b", "c"])
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("b", "a", 3), ("b", "c", 3), ("a", "b", 2),
                                                                        ("c", "b", 1)]
    assert pairs[0]["share"] == pytest.approx(3 / 10)
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.7, 0.3], [0.45, 0.55], [0.95, 0.05]])
    labels = np.array([0, 0, 1, 1, 0, 0])
    view = SplitView(None, {}, probs, labels, ["x", "y"], np.zeros((6, 2, 2, 1), np.uint8), False)
    # mistakes: 1 (p .6), 3 (p .7), 4 (p .55); most confident first
    assert pick_examples(view, 2, 3) == ([3, 1], [5, 2])  # correct: one per class, most confident first
    assert pick_examples(view, 10, 0) == ([3, 1, 4], [])


@pytest.fixture
def fake_run(tmp_path):
    from tests.conftest import TINY_CONFIG

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(TINY_CONFIG)
    (run / ".cnn-run").write_text("{}\n")
    (run / "metrics.jsonl").write_text("")
    return run


@pytest.mark.parametrize("where", ["run/report.html", "run/sub/report.html", "run"])
def test_refuses_an_output_inside_a_run_directory(fake_run, where):
    out = fake_run.parent / where
    before = sorted(p.name for p in fake_run.rglob("*"))
    res = cnn("report", fake_run, "-o", out)
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and len(res.output.strip().splitlines()) == 1
    assert "run directory" in res.output or "is a folder" in res.output
    assert sorted(p.name for p in fake_run.rglob("*")) == before


def test_refuses_what_is_not_a_run(tmp_path):
    res = cnn("report", tmp_path, "-o", tmp_path / "r.html")
    assert res.exit_code == 2 and "is not a run directory" in res.output
    assert not (tmp_path / "r.html").exists()


# ----------------------------------------------------------------------------- a trained run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run, what `cnn train` printed): the tiny digits run (resnet20 width 0.5, 16x16, 8 steps)."""
    from tests.conftest import TINY_CONFIG

    root = tmp_path_factory.mktemp("report_run")
    (root / "tiny.yaml").write_text(TINY_CONFIG)
    res = cnn("train", root / "tiny.yaml", "--run-dir", root / "run")
    assert res.exit_code == 0, res.output
    return root / "run", res.output


@pytest.fixture(scope="module")
def page(trained, tmp_path_factory):
    run, _ = trained
    out = tmp_path_factory.mktemp("page") / "report.html"
    res = cnn("report", run, "-o", out, "--examples", "5")
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(str(out))
    return out


@pytest.mark.slow
def test_train_prints_the_report_command(trained):
    run, output = trained
    assert f"cnn report {run} -o {run}.html" in output


@pytest.mark.slow
def test_the_page_is_self_contained_and_its_numbers_are_the_runs(trained, page):
    from tests.test_evaluate import numpy_scores, reference_log_probs

    run, _ = trained
    text = page.read_text()
    parsed = Page(text)
    assert_self_contained(text, parsed)
    # every picture decodes: curves, confusion matrix, 5 mistakes + 4 correct, filters, feature maps
    images = [decoded(uri) for uri in parsed.images]
    assert all(im.size[0] > 50 and im.size[1] > 50 for im in images)
    results = json.loads((run / "results.json").read_text())
    for key in ("accuracy", "top5_accuracy", "loss", "num_examples"):
        assert parsed.values[f"results.{key}"] == results[key]
    plain = parsed.plain
    assert f"test accuracy {results['accuracy']:.4f} test top-5 accuracy {results['top5_accuracy']:.4f} " \
           f"test loss {results['loss']:.4f}" in plain
    assert f"accuracy {results['accuracy']:.4f} (the accuracy results.json has)" in plain
    # the per-class table and the confused pairs against an independent evaluation
    log_probs, y, _ = reference_log_probs(run)
    ref = numpy_scores(log_probs, y)
    assert ref["ties_top1"] == 0
    cm = ref["confusion"]
    for k in range(10):
        recall = cm[k, k] / cm[k].sum()
        precision = cm[k, k] / cm[:, k].sum() if cm[:, k].sum() else 0.0
        assert f" {k} {cm[k].sum()} {precision:.4f} {recall:.4f} " in plain
    worst = max((cm[i, j], -i, -j) for i in range(10) for j in range(10) if i != j)
    assert f"{-worst[1]} {-worst[2]} {worst[0]} {worst[0] / cm[-worst[1]].sum():.1%}" in plain
    # the examples: the most confident mistakes, their probabilities the model's, and up to 4 correct
    # ones of different classes; 5 curves, the confusion matrix, filters and feature maps besides
    probs = np.exp(log_probs)
    pred = probs.argmax(axis=1)
    wrong = [i for i in np.argsort(-probs.max(axis=1), kind="stable") if pred[i] != y[i]][:5]
    for i in wrong:
        assert parsed.values[f"test.{i}.probability"] == pytest.approx(probs[i].max(), abs=1e-5)
    right = min(4, len(set(pred[pred == y])))
    assert len(images) == 5 + 1 + len(wrong) + right + 2
    # the layer table is cnn summarize's; the environment is the one training recorded
    status = json.loads((run / "status.json").read_text())
    assert f"jax {status['environment']['jax']}" in plain and "layer3.2 block" in plain
    assert "model.width 0.5 1.0" in plain
    assert 'class="missing"' not in text  # a finished run lacks nothing


def _browser():
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None:
        why = "no Chromium on this machine (apt-get install chromium)"
        if os.environ.get("CNN_REQUIRE_BROWSER") == "1":  # CI (.ci/run) installs it: there, its absence fails
            pytest.fail(why + ", and CNN_REQUIRE_BROWSER=1")
        pytest.skip(why + "; CI installs it")
    return found


def _headless(browser, *args, timeout=120):
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_the_page_renders_in_a_headless_browser(page, tmp_path):
    browser = _browser()
    # The browser decodes every image: a copy of the page with a one-line check counts them.
    probe = tmp_path / "probe.html"
    check = ("<script>window.onload=function(){var i=[].slice.call(document.images);"
             "document.body.setAttribute('data-decoded',i.filter(function(m){return m.complete&&m.naturalWidth>0})"
             ".length+'/'+i.length);}</script>")
    probe.write_text(page.read_text().replace("</body>", check + "</body>"))
    dom = _headless(browser, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    count = re.search(r'data-decoded="(\d+)/(\d+)"', dom.stdout)
    assert count and count.group(1) == count.group(2) == str(len(Page(page.read_text()).images)), dom.stdout[:300]
    assert "test evaluation" in dom.stdout and "what the network learned" in dom.stdout
    # and draws it: a screenshot of the top of the page is not blank
    shot = tmp_path / "shot.png"
    res = _headless(browser, "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri())
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), np.float64)
    assert pixels.shape == (1600, 1200) and pixels.std() > 20


@pytest.mark.slow
def test_a_run_without_checkpoints_or_test_gets_a_page_saying_so(trained, tmp_path):
    run, _ = trained
    killed = tmp_path / "killed"
    shutil.copytree(run, killed)
    shutil.rmtree(killed / "checkpoints")
    (killed / "results.json").unlink()
    status = json.loads((killed / "status.json").read_text())
    (killed / "status.json").write_text(json.dumps({**status, "status": "interrupted", "reason": "SIGTERM"}))
    out = tmp_path / "killed.html"
    res = cnn("report", killed, "-o", out)
    assert res.exit_code == 0, res.output
    text = out.read_text()
    parsed = Page(text)
    assert_self_contained(text, parsed)
    plain = parsed.plain
    assert "no test evaluation (results.json): the run was interrupted" in plain
    assert plain.count("no checkpoint to evaluate") == 3  # evaluation, examples, pictures of the model
    assert "status interrupted (SIGTERM)" in plain and "results.accuracy" not in parsed.values
    assert len(parsed.images) == 5 and all(decoded(u) for u in parsed.images)  # the curves still
    assert "layer3.2 block" in plain  # the model's table needs no checkpoint


@pytest.mark.slow
def test_a_running_run_shows_its_best_checkpoint_so_far(trained, tmp_path):
    from cnncli.rundir import RunDir

    run, _ = trained
    live = tmp_path / "live"
    shutil.copytree(run, live)
    (live / "results.json").unlink()
    status = json.loads((live / "status.json").read_text())
    (live / "status.json").write_text(json.dumps({**status, "status": "running"}))
    owner = RunDir(live).acquire()  # a live owner: `cnn runs` says running, not dead
    try:
        out = tmp_path / "live.html"
        res = cnn("report", live, "-o", out, "--examples", "0")
    finally:
        owner.release()
    assert res.exit_code == 0, res.output
    plain = Page(out.read_text()).plain
    assert "no test evaluation (results.json): the run is still training" in plain
    assert "the run is running: this is its best checkpoint so far (step 8)" in plain


@pytest.mark.slow
def test_comparison_page_with_an_ensemble_only_where_test_sets_agree(trained, tmp_path):
    run, _ = trained
    twin, other = tmp_path / "twin", tmp_path / "other"
    shutil.copytree(run, twin)
    shutil.copytree(run, other)
    cfg = (other / "config.yaml").read_text()
    (other / "config.yaml").write_text(cfg.replace("split_seed: 0", "split_seed: 1"))
    out = tmp_path / "compare.html"
    res = cnn("report", run, twin, "-o", out)
    assert res.exit_code == 0, res.output
    text = out.read_text()
    parsed = Page(text)
    assert_self_contained(text, parsed)
    results = json.loads((run / "results.json").read_text())
    assert parsed.values["run.results.accuracy"] == parsed.values["twin.results.accuracy"] == results["accuracy"]
    # two copies of one model: the mean of equal probabilities is that model
    assert parsed.values["ensemble.accuracy"] == pytest.approx(results["accuracy"], abs=1e-12)
    assert len(parsed.images) == 3 and all(decoded(u) for u in parsed.images)
    res = cnn("report", run, other, "-o", out)
    assert res.exit_code == 0, res.output
    assert "no ensemble: ensemble members" in Page(out.read_text()).plain


FOLDER_CONFIG = """\
model: {{name: resnet20, width: 0.25}}
data: {{source: folder, path: {path}, image_size: 16, channels: 1, num_workers: 0}}
optimizer: {{lr: 0.05}}
train: {{steps: 4, batch_size: 16, log_every_steps: 2, eval_every_steps: 2, seed: 1}}
output: {{tensorboard: false, export: null}}
"""


@pytest.mark.slow
def test_an_image_folder_run_shows_its_files(tmp_path):
    """A file-backed run: the examples are its image files, read as `cnn show` and `cnn predict` read them."""
    from cnncli.config import DataConfig
    from cnncli.data.pipeline import prepare_dataset
    from cnncli.predict import predict_images

    digits = prepare_dataset(DataConfig(source="digits", image_size=16))
    root = tmp_path / "images"
    for split in ("train", "val", "test"):
        x, y = digits.split(split)
        for i, (img, label) in enumerate(zip(x[:40], y[:40])):
            (root / split / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[..., 0], "L").save(root / split / str(label) / f"{i:05d}.png")
    (tmp_path / "folder.yaml").write_text(FOLDER_CONFIG.format(path=root))
    run = tmp_path / "run"
    assert cnn("train", tmp_path / "folder.yaml", "--run-dir", run).exit_code == 0
    out = tmp_path / "folder.html"
    res = cnn("report", run, "-o", out, "--examples", "2")
    assert res.exit_code == 0, res.output
    text = out.read_text()
    parsed = Page(text)
    assert_self_contained(text, parsed)
    assert all(decoded(u) for u in parsed.images)
    results = json.loads((run / "results.json").read_text())
    assert parsed.values["results.accuracy"] == results["accuracy"] and results["num_examples"] == 40
    shown = re.findall(r"test #(\d+) \((\d)/(\d{5}\.png)\)", parsed.plain)
    assert shown
    for index, label, name in shown:
        top = predict_images(run, [root / "test" / label / name], top_k=1)[0]["predictions"][0]
        assert parsed.values[f"test.{index}.probability"] == pytest.approx(top["probability"], abs=1e-5)
