"""`cnn predict` on image files the test writes: the same numbers as the eval pipeline."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.errors import DataError
from cnncli.data.files import read_image as decode_image
from cnncli.predict import fit_to_input, predict_images
from tests.test_evaluate import trained_tiny_run

runner = CliRunner()
N = 12


@pytest.fixture(scope="module")
def digits_pngs(tmp_path_factory):
    """The run, the first N raw 8x8 test digits as PNG files, and their eval-pipeline probabilities."""
    from cnncli.data.sources import load_digits
    from cnncli.evaluate import evaluate_member

    run = trained_tiny_run(tmp_path_factory)
    test_indices = json.loads((run / "split.json").read_text())["test_indices"][:N]
    raw = load_digits().train[0][test_indices]  # [N, 8, 8, 1]: the pipeline resizes them to 16x16
    folder = tmp_path_factory.mktemp("pngs")
    files = []
    for i, img in enumerate(raw):
        files.append(folder / f"digit{i:02d}.png")
        Image.fromarray(img[..., 0], "L").save(files[-1])
    member = evaluate_member(run)
    return run, files, raw, np.exp(member.log_probs[:N])


def test_preprocessing_equals_the_eval_pipeline(digits_pngs):
    from cnncli.config import load_config
    from cnncli.data.pipeline import prepare_dataset

    run, files, raw, _ = digits_pngs
    x_test = prepare_dataset(load_config(run / "config.yaml").data).split("test")[0][:N]
    fitted = np.stack([fit_to_input(decode_image(f), 16, 1) for f in files])
    assert fitted.dtype == np.uint8 and np.array_equal(fitted, x_test)
    rgb = np.repeat(raw[0], 3, axis=-1)  # an RGB file of a gray image converts back exactly
    assert np.array_equal(fit_to_input(rgb, 16, 1), x_test[0])


def test_resize_then_centre_crop_of_a_wide_image():
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (16, 40, 3), dtype=np.uint8)  # shorter side already 16: only the crop
    assert np.array_equal(fit_to_input(wide, 16, 3), wide[:, 12:28])
    # A vertical ramp (row i = 2i), 64x32: halved to 32x16, then rows 8..23 are kept. A linear
    # filter keeps a ramp linear away from the borders: output row r samples input row 2r + 0.5.
    tall = np.repeat((2 * np.arange(64, dtype=np.uint8))[:, None, None], 32, axis=1)
    out = fit_to_input(tall, 16, 1)
    assert out.shape == (16, 16, 1)
    expected = 2 * (2 * np.arange(8, 24) + 0.5)
    assert np.abs(out[:, :, 0].astype(np.float64) - expected[:, None]).max() <= 1.0


def test_predictions_equal_the_eval_pipeline(digits_pngs):
    run, files, _, probs = digits_pngs
    out = predict_images(run, files, top_k=10)
    assert [r["file"] for r in out] == [str(f) for f in files]
    for r, p in zip(out, probs):
        preds = r["predictions"]
        assert len(preds) == 10 and preds[0]["index"] == int(np.argmax(p))
        assert [q["class"] for q in preds] == [str(q["index"]) for q in preds]
        got = np.zeros(10)
        got[[q["index"] for q in preds]] = [q["probability"] for q in preds]
        np.testing.assert_allclose(got, p, atol=1e-6)
        assert [q["probability"] for q in preds] == sorted((q["probability"] for q in preds), reverse=True)


def test_tta_flip_is_the_mean_of_image_and_mirror(digits_pngs, tmp_path):
    run, files, raw, _ = digits_pngs
    mirror = tmp_path / "mirror.png"
    Image.fromarray(raw[0, :, ::-1, 0], "L").save(mirror)
    plain = predict_images(run, [files[0], mirror], top_k=10)
    tta = predict_images(run, [files[0]], top_k=10, tta="flip")[0]["predictions"]

    def vec(preds):
        v = np.zeros(10)
        v[[q["index"] for q in preds]] = [q["probability"] for q in preds]
        return v

    np.testing.assert_allclose(vec(tta), (vec(plain[0]["predictions"]) + vec(plain[1]["predictions"])) / 2,
                               atol=1e-6)


def test_cli_json_and_table(digits_pngs):
    run, files, _, probs = digits_pngs
    res = runner.invoke(app, ["predict", str(run), str(files[0]), str(files[1]), "--top-k", "3", "--format", "json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert len(out) == 2 and all(len(r["predictions"]) == 3 for r in out)
    assert out[1]["predictions"][0]["index"] == int(np.argmax(probs[1]))
    res = runner.invoke(app, ["predict", str(run), str(files[0])])
    assert res.exit_code == 0 and files[0].name in res.stdout and "probability" in res.stdout


def test_unreadable_images_are_one_line_errors(digits_pngs, tmp_path):
    run, files, _, _ = digits_pngs
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="broken.png: cannot read the image"):
        decode_image(bad)
    res = runner.invoke(app, ["predict", str(run), str(files[0]), str(bad)])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "broken.png" in res.stderr
    res = runner.invoke(app, ["predict", str(run), str(tmp_path / "missing.jpg")])
    assert res.exit_code == 2 and res.stderr == f"error: image file not found: {tmp_path / 'missing.jpg'}\n"
    res = runner.invoke(app, ["predict", str(run), str(files[0]), "--top-k", "0"])
    assert res.exit_code == 2 and "--top-k" in res.output


def test_a_folder_trained_model_decodes_like_its_folder_loader(digits_pngs, tmp_path):
    """A run trained on image files predicts on the folder loader's decoding (PIL resize and crop)."""
    import shutil

    import yaml

    from cnncli.data.files import decode_image as folder_decode

    run, _, _, _ = digits_pngs
    folder_run = tmp_path / "folder_run"
    shutil.copytree(run, folder_run)
    cfg = yaml.safe_load((folder_run / "config.yaml").read_text())
    cfg["data"]["source"] = "folder"
    (folder_run / "config.yaml").write_text(yaml.safe_dump(cfg))
    big = tmp_path / "big.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (40, 24, 3), dtype=np.uint8), "RGB").save(big)
    decoded = tmp_path / "decoded.png"
    Image.fromarray(folder_decode(str(big), 16, 1)[..., 0], "L").save(decoded)  # already 16x16: kept exactly
    via_folder = predict_images(folder_run, [big], top_k=10)[0]["predictions"]
    via_pixels = predict_images(run, [decoded], top_k=10)[0]["predictions"]
    assert [q["index"] for q in via_folder] == [q["index"] for q in via_pixels]
    np.testing.assert_allclose([q["probability"] for q in via_folder], [q["probability"] for q in via_pixels],
                               atol=1e-6)


def test_a_fifo_given_as_an_image_is_refused_not_waited_on(tmp_path):
    import os

    fifo = tmp_path / "cat.png"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=r"image .*cat.png is a FIFO \(named pipe\), not a regular file"):
        predict_images(tmp_path / "no-run", [fifo])  # the old code blocked in open() for ever
    res = CliRunner().invoke(app, ["predict", str(tmp_path / "no-run"), str(fifo)])
    assert res.exit_code == 2 and "FIFO" in res.stderr and res.stderr.count("\n") == 1, res.output
