"""What a command allocates is bounded by what it needs, and what it cannot do is refused up front in one
line (issue 25): `cnn data --grid`, `cnn eval --batch-size`, `cnn predict` on extreme images, `cnn show` and
`cnn summarize` input sizes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cnncli.cli import app

runner = CliRunner()


def cnn(*args):
    return runner.invoke(app, [str(a) for a in args])


# ----------------------------------------------------------------------------- cnn data --grid


@pytest.mark.parametrize("name,why", [("grid.xyz", "has an unknown format '.xyz': name it *.png (or "),
                                      ("grid", "has no format suffix: name it *.png"),
                                      ("adir", "is a directory; give the image file to write")])
def test_data_grid_needs_an_image_file_name(tmp_path, name, why):
    (tmp_path / "adir").mkdir()
    cfg = tmp_path / "d.yaml"
    cfg.write_text("data:\n  source: digits\n")
    res = cnn("data", cfg, "--grid", tmp_path / name)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --grid {tmp_path / name} {why}"), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "d.yaml"]  # nothing written, not adir.png
    assert list((tmp_path / "adir").iterdir()) == []


# ----------------------------------------------------------------------------- cnn eval --batch-size


def test_the_eval_batch_is_at_most_the_split():
    from cnncli.evaluate import split_batch_size

    assert split_batch_size(100_000_000, 360, 1) == 360
    assert split_batch_size(100_000_000, 361, 4) == 364  # a multiple of the devices
    assert split_batch_size(64, 360, 1) == 64


def test_out_of_memory_is_one_line_saying_what_and_how():
    from cnncli.errors import CnnError
    from cnncli.evaluate import out_of_memory_named

    with pytest.raises(CnnError, match=r"^out of memory evaluating r at batch size 9: lower --batch-size "
                                       r"\(RESOURCE_EXHAUSTED: Out of memory allocating 123 bytes\.\)$"):
        with out_of_memory_named("evaluating r at batch size 9", "lower --batch-size"):
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 123 bytes.\n  more XLA text")
    with pytest.raises(ValueError, match="unrelated"):
        with out_of_memory_named("x", "y"):
            raise ValueError("unrelated")


@pytest.mark.slow
def test_eval_with_a_huge_batch_size_gives_the_same_numbers(tmp_path_factory):
    import json

    from tests.test_evaluate import trained_tiny_run

    run = trained_tiny_run(tmp_path_factory)
    default = cnn("eval", run, "--format", "json")
    huge = cnn("eval", run, "--batch-size", "100000000", "--format", "json")
    assert default.exit_code == 0 and huge.exit_code == 0, huge.output
    a, b = json.loads(default.stdout), json.loads(huge.stdout)
    assert a["accuracy"] == b["accuracy"] and a["num_examples"] == b["num_examples"]
    assert abs(a["loss"] - b["loss"]) < 1e-6


# ----------------------------------------------------------------------------- cnn predict on extreme images


@pytest.mark.parametrize("shape", [(1, 20000, 3), (10000, 1, 1), (300000, 1, 3)])
def test_an_extreme_aspect_ratio_is_cropped_not_resized_whole(shape):
    from cnncli.predict import fit_to_input

    out = fit_to_input(np.full(shape, 200, np.uint8), 16, 3)  # resized whole: 16x320000 ... 4.8M x 16
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8 and (out == 200).all()


def test_the_crop_of_an_extreme_image_is_the_crop_of_its_full_resize():
    import jax
    import jax.numpy as jnp

    from cnncli.predict import fit_to_input

    x = np.random.default_rng(0).integers(0, 256, (3, 300, 3), dtype=np.uint8)  # -> 8x800 (12.5 crops of 8x8)
    full = jax.image.resize(jnp.asarray(x, jnp.float32), (8, 800, 3), "linear")
    expected = np.asarray(jnp.clip(jnp.round(full), 0, 255).astype(jnp.uint8))[:, 396:404]
    got = fit_to_input(x, 8, 3)
    assert np.abs(got.astype(int) - expected).max() <= 1 and (got == expected).mean() > 0.95


def test_folder_decoding_of_an_extreme_image_resizes_only_the_crop(tmp_path):
    from cnncli.data.files import decode_image

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (2, 400, 3), dtype=np.uint8)
    Image.fromarray(x).save(tmp_path / "wide.png")
    full = Image.fromarray(x).resize((4800, 24), Image.BILINEAR).crop((2388, 0, 2412, 24))
    got = decode_image(str(tmp_path / "wide.png"), 24, 3)
    assert np.abs(got.astype(int) - np.asarray(full)).max() <= 1
    Image.fromarray(np.full((1, 200000), 77, np.uint8)).save(tmp_path / "line.png")
    assert (decode_image(str(tmp_path / "line.png"), 224, 1) == 77).all()  # whole: 224 x 44.8M pixels


# ----------------------------------------------------------------------------- input sizes


@pytest.mark.parametrize("args,model,size,minimum", [
    (["show", "filters", "resnet20", "--input-size", "0"], "resnet20", 0, 3),
    (["summarize", "resnet20", "--input-size", "1", "--no-compile"], "resnet20", 1, 3),
    (["summarize", "resnet18", "--input-size", "16", "--no-compile"], "resnet18", 16, 17)])
def test_a_too_small_input_is_refused_naming_the_minimum(tmp_path, args, model, size, minimum):
    res = cnn(*args, *(["-o", tmp_path / "f.png"] if args[0] == "show" else []))
    assert res.exit_code == 2, res.output
    assert res.stderr.strip().splitlines() == [
        f"error: input {size}x{size} is too small for {model}: the minimum is {minimum}x{minimum}"]
    assert not (tmp_path / "f.png").exists()


def test_the_minimum_input_gives_every_downsampling_layer_its_stride():
    from cnncli.models import create_model, minimum_input_size

    # resnet18: conv1 and the max pool, then layer2..4, each halve (stride 2): 17 -> 9 -> 5 -> 3 -> 2 -> 1;
    # at 16 the last stride-2 convolution would see a 1x1 map. CIFAR ResNets: two stride-2 stages, 3 -> 2 -> 1.
    assert minimum_input_size("resnet18") == 17 and minimum_input_size("resnet20") == 3
    assert minimum_input_size("vgg11") == 32 and minimum_input_size("alexnet") == 67  # as before
    assert create_model("resnet18", input_shape=(17, 17, 3), abstract=True).input_shape == (17, 17, 3)


def test_show_refuses_an_input_size_past_the_configs_bound(tmp_path):
    res = cnn("show", "filters", "resnet20", "--input-size", "100000", "-o", tmp_path / "f.png")
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [
        "error: --input-size 100000 is larger than 4096, the largest model.input_size a config takes"]


def test_show_cam_refuses_up_front_what_memory_cannot_hold(tmp_path, monkeypatch):
    from cnncli.show import subject

    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "i.png")
    monkeypatch.setattr(subject, "available_memory", lambda: 10**9)
    read = []
    monkeypatch.setattr("cnncli.data.files.read_image", lambda *a, **k: read.append(a) or np.zeros((4, 4, 3)))
    res = cnn("show", "cam", "resnet20", tmp_path / "i.png", "--input-size", "1024", "-o", tmp_path / "c.png")
    assert res.exit_code == 2, res.output
    # resnet20 at 1024x1024: 477,102,154 stored activations (cnn summarize's count, input included), 3 float32
    # copies for Grad-CAM, plus the image as uint8 and float32
    need = 4 * (3 * 477_102_154 + 2 * 1024 * 1024 * 3)
    assert res.stderr.strip().splitlines() == [
        f"error: cnn show cam of resnet20 at 1024x1024 needs about {need / 1e9:.2f} GB of memory, more than the "
        "1.00 GB available; use a smaller --input-size"]
    assert read == [] and not (tmp_path / "c.png").exists()  # refused before the image was even prepared
