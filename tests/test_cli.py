"""End-to-end: the CLI trains, evaluates and summarizes; bad input is one line and exit 2."""

import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cnncli.cli import app

runner = CliRunner()


def cnn(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def trained_run(tiny_run):
    """The session's tiny run (tests/conftest.py), trained with --set train.log_every_steps=1 --format json."""
    return tiny_run.config, tiny_run.run, tiny_run.summary


def test_train_writes_the_run_directory(trained_run):
    _, run, summary = trained_run
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "results.json", "split.json", "data.json",
                 "status.json", "model.safetensors"):
        assert (run / name).is_file(), name
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert 8 in steps  # the latest is always kept
    results = json.loads((run / "results.json").read_text())
    assert {"accuracy", "top5_accuracy", "loss", "num_examples"} <= set(results)
    assert results["num_examples"] == 359
    assert summary["test"] == results
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all({"step", "epoch", "split"} <= set(r) for r in records)
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == list(range(1, 9))
    assert [r["step"] for r in records if r["split"] == "val"] == [4, 8]
    assert all({"loss", "accuracy", "lr"} <= set(r) for r in records if r["split"] == "train")
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "finished"


def test_resolved_config_holds_defaults_overrides_and_data_sizes(trained_run):
    from cnncli.config import load_config

    _, run, _ = trained_run
    cfg = load_config(run / "config.yaml")
    assert cfg.train.log_every_steps == 1  # the --set override
    assert cfg.optimizer.momentum == 0.9  # a default
    assert (cfg.model.num_classes, cfg.model.input_size, cfg.model.in_channels) == (10, 16, 1)


def test_eval_reproduces_results_json(trained_run):
    _, run, _ = trained_run
    res = cnn("eval", run, "--format", "json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    results = json.loads((run / "results.json").read_text())
    for key in ("accuracy", "top5_accuracy", "loss", "num_examples", "checkpoint_step"):
        assert out[key] == results[key], key
    step_dir = run / "checkpoints" / str(results["checkpoint_step"])
    res2 = cnn("eval", step_dir, "--format", "json")
    assert json.loads(res2.stdout)["accuracy"] == results["accuracy"]


def test_existing_run_dir_is_not_overwritten(trained_run):
    cfg, run, _ = trained_run
    before = (run / "results.json").read_text()
    res = cnn("train", cfg, "--run-dir", run)
    assert res.exit_code == 2
    assert "already exists" in res.output and "--resume" in res.output
    assert (run / "results.json").read_text() == before


def test_resume_is_bitwise_identical(trained_run, tmp_path):
    """Lose the last checkpoint (as after kill -9), resume, and get exactly the same losses."""
    _, run, _ = trained_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoints" / "8")
    res = cnn("train", "--resume", copy, "--format", "json")
    assert res.exit_code == 0, res.output

    def train_losses(path):
        return [(r["step"], r["loss"]) for r in map(json.loads, (path / "metrics.jsonl").read_text().splitlines())
                if r["split"] == "train"]

    assert train_losses(copy) == train_losses(run)
    assert json.loads((copy / "results.json").read_text()) == json.loads((run / "results.json").read_text())


def test_print_config(tiny_config):
    res = cnn("train", tiny_config, "--set", "optimizer.lr=0.3", "--print-config")
    assert res.exit_code == 0
    assert "lr: 0.3" in res.stdout and "momentum: 0.9" in res.stdout


def test_summarize_json(tmp_path):
    res = cnn("summarize", "resnet20", "--format", "json")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["model"] == "resnet20" and s["input_shape"] == [32, 32, 3]
    assert s["trainable_params"] == 269_722
    assert s["non_trainable_params"] == 2 * (16 * 7 + 32 * 6 + 64 * 6)
    assert s["total_params"] == s["trainable_params"] + s["non_trainable_params"]
    assert sum(layer["params"] for layer in s["layers"]) == s["trainable_params"]
    assert s["layers"][0] == {**s["layers"][0], "name": "conv1", "type": "conv", "output_shape": [32, 32, 16],
                              "params": 432}
    assert s["layers"][-1]["output_shape"] == [10]


@pytest.mark.parametrize("args,needle", [
    (["train", "missing.yaml"], "config file not found: missing.yaml"),
    (["train", "configs/digits_resnet20.yaml", "--set", "optimizer.lrr=1"], "unknown key 'optimizer.lrr'"),
    (["summarize", "resnet5"], "unknown model 'resnet5'"),
    (["eval", "no/such/run"], "no such run directory or checkpoint"),
    (["predict", "no/such/run"], "Missing argument 'images'"),
    (["train", "--bogus"], "No such option: --bogus"),
    (["train", "configs/digits_resnet20.yaml", "--name", "../../escape"], "must be a plain folder name"),
    (["train", "configs/digits_resnet20.yaml", "--set", "optimizer.lr=1e39"], "optimizer.lr"),
    (["summarize", "x" * 5000], "File name too long: xxxx"),
    (["summarize", "x" * 200], "unknown model 'xxxxxxxx"),
])
def test_bad_input_is_one_line_exit_2(args, needle):
    proc = subprocess.run([sys.executable, "-m", "cnncli.cli", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_help_lists_commands():
    proc = subprocess.run([sys.executable, "-m", "cnncli.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for cmd in ("train", "eval", "summarize", "models"):
        assert cmd in proc.stdout
    # heavy libraries stay unimported for --help
    check = "import sys, cnncli.cli; assert not any(m in sys.modules for m in ('jax', 'flax', 'orbax.checkpoint'))"
    assert subprocess.run([sys.executable, "-c", check]).returncode == 0
