"""Training on an image folder (host decoding in Grain workers) sees exactly the in-memory batches."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.config import DataConfig
from cnncli.data.pipeline import prepare_dataset

CONFIG = """\
model: {{name: resnet20, width: 0.25}}
data: {{source: {source}, path: {path}, image_size: 16, num_workers: {workers}, augment: {{random_crop_padding: 2}}}}
optimizer: {{lr: 0.05}}
train: {{steps: 6, batch_size: 16, log_every_steps: 1, eval_every_steps: 3, seed: 1}}
output: {{tensorboard: false, export: null}}
"""


@pytest.mark.slow
def test_folder_and_npz_of_the_same_images_train_identically(tmp_path):
    d = prepare_dataset(DataConfig(source="digits", image_size=16))
    root = tmp_path / "folder"
    arrays = {}
    for split in ("train", "val", "test"):
        x, y = d.split(split)
        x, y = x[:96], y[:96]  # a small, fixed subset of each split
        # file names sort in the same order as the arrays, so both sources index alike
        order = np.argsort([f"{y[i]}/{i:05d}" for i in range(len(y))], kind="stable")
        x, y = x[order], y[order]
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
        for i, (img, label) in enumerate(zip(x, y)):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[..., 0], "L").save(folder / f"{i:05d}.png")
    np.savez(tmp_path / "same.npz", class_names=np.array([str(i) for i in range(10)]), **arrays)

    runs = {}
    for name, source, path, workers in (("folder", "folder", root, 2), ("npz", "npz", tmp_path / "same.npz", 0)):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(CONFIG.format(source=source, path=path, workers=workers))
        res = CliRunner().invoke(app, ["train", str(cfg), "--run-dir", str(tmp_path / f"run_{name}"), "--set",
                                       "data.channels=1"])
        assert res.exit_code == 0, res.output
        runs[name] = tmp_path / f"run_{name}"

    def losses(run):
        return [(r["step"], r["split"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").open())]

    folder_losses = losses(runs["folder"])
    assert [s for s, split, _ in folder_losses if split == "train"] == [1, 2, 3, 4, 5, 6]
    assert folder_losses == losses(runs["npz"])
    results = json.loads((runs["folder"] / "results.json").read_text())
    assert results["num_examples"] == len(arrays["y_test"])
    assert results == json.loads((runs["npz"] / "results.json").read_text())
