"""`cnn data CONFIG`: the dataset summary (table and JSON) and the sample grid."""

import json
import subprocess
import sys

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from cnncli.cli import app

runner = CliRunner()


def cnn(*args):
    return runner.invoke(app, [str(a) for a in args])


def npz_config(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    y = np.array([0] * 12 + [1] * 8)
    np.savez(tmp_path / "toy.npz", x_train=x, y_train=y, x_test=x[:5], y_test=np.array([1, 1, 1, 0, 0]),
             class_names=np.array(["left", "right"]))
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(f"data:\n  source: npz\n  path: {tmp_path / 'toy.npz'}\n  val_fraction: 0.25\n"
                   "  augment: {random_crop_padding: 2, flip: true}\n")
    return cfg, x, y


def test_data_json_summary(tmp_path):
    cfg, x, y = npz_config(tmp_path)
    res = cnn("data", cfg, "--format", "json")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["source"] == "npz" and s["path"] == str(tmp_path / "toy.npz") and not s["file_backed"]
    assert s["sizes"] == {"train": 15, "val": 5, "test": 5} and s["held_out"] == ["val"]
    assert s["image_shape"] == [8, 8, 3] and s["num_classes"] == 2
    assert sum(c["val"] for c in s["classes"]) == 5
    assert [c["test"] for c in s["classes"]] == [2, 3]
    assert [c["train"] + c["val"] for c in s["classes"]] == [12, 8]
    assert [c["name"] for c in s["classes"]] == ["left", "right"]
    from cnncli.config import load_config
    from cnncli.data.pipeline import prepare_dataset

    train = prepare_dataset(load_config(cfg).data).x_train.reshape(-1, 3) / 255.0
    assert np.allclose(s["mean"], train.mean(axis=0)) and np.allclose(s["std"], train.std(axis=0))
    res = cnn("data", cfg, "--set", "data.mean=[0.5]", "--set", "data.std=[0.2]", "--format", "json")
    assert json.loads(res.stdout)["mean"] == [0.5] * 3 and json.loads(res.stdout)["stats_from"] == "config"


def test_data_table_and_grid(tmp_path):
    cfg, _, _ = npz_config(tmp_path)
    out = tmp_path / "grid.png"
    res = cnn("data", cfg, "--grid", out, "--samples", "6")
    assert res.exit_code == 0, res.output
    assert "train 15 / val 5 / test 5" in res.stdout and "right" in res.stdout and "8x8x3" in res.stdout
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] >= 400 and im.size[1] >= 200


def test_data_grid_for_a_folder(tmp_path):
    for split, cls, n in (("train", "a", 3), ("train", "b", 2), ("val", "a", 1), ("val", "b", 1)):
        (tmp_path / split / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((12, 10, 3), 40 * i, np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    cfg = tmp_path / "f.yaml"
    cfg.write_text(f"data:\n  source: folder\n  path: {tmp_path}\n  image_size: 8\n  test_fraction: 0.2\n")
    res = cnn("data", cfg, "--grid", tmp_path / "g.png", "--format", "json")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["file_backed"] and s["image_shape"] == [8, 8, 3] and s["sizes"] == {"train": 4, "val": 2, "test": 1}
    assert (tmp_path / "g.png").stat().st_size > 0


def test_missing_dataset_is_one_line_exit_2(tmp_path):
    cfg = tmp_path / "m.yaml"
    cfg.write_text(f"data:\n  source: mnist\n  path: {tmp_path / 'nothing'}\n")
    proc = subprocess.run([sys.executable, "-m", "cnncli.cli", "data", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"mnist: dataset not found in {tmp_path / 'nothing'}" in lines[0]
    assert "t10k-labels-idx1-ubyte" in lines[0]


def test_a_fixed_model_input_decides_the_shape_without_touching_the_training_package(tmp_path):
    cfg, _, _ = npz_config(tmp_path)
    res = cnn("data", cfg, "--set", "model.input_size=12", "--set", "model.in_channels=1", "--format", "json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["image_shape"] == [12, 12, 1]
    res = cnn("data", cfg, "--set", "model.input_size=12", "--set", "data.image_size=10")
    assert res.exit_code == 2 and res.stderr.strip().splitlines() == [
        "error: model.input_size=12 contradicts data.image_size=10"]
    import ast

    import cnncli.cli.data

    tree = ast.parse(open(cnncli.cli.data.__file__).read())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert "cnncli.data.pipeline" in imported and not [m for m in imported if m.startswith("cnncli.train")]
