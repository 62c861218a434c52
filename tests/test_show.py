"""`cnn show filters|features|cam` on an untrained model and on a tiny digits run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cnncli.cli import app
from tests.test_evaluate import trained_tiny_run

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_tiny_run(tmp_path_factory)  # resnet20 width 0.5 on 16x16 digits, 8 steps


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory):
    from cnncli.data.sources import load_digits

    path = tmp_path_factory.mktemp("img") / "digit.png"
    Image.fromarray(load_digits().train[0][7][..., 0], "L").save(path)  # a raw 8x8 digit
    return path


@pytest.fixture(scope="module")
def rgb_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(path)
    return path


def show(*args, tmp_path=None):
    """Run `cnn show ... --format json -o FILE`; (numbers, PNG as a PIL image)."""
    out = tmp_path / "picture.png"
    res = runner.invoke(app, ["show", *map(str, args), "--format", "json", "-o", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["output"] == str(out) and out.stat().st_size > 0
    png = Image.open(out)
    # the picture is the grid the numbers describe: (cols x panel, rows x panel + title) inches at the dpi
    dpi = png.info["dpi"][0]
    assert png.size == tuple(round(v * dpi) for v in data["figure_inches"])
    return data, png


@pytest.mark.slow
def test_filters_of_an_untrained_rgb_model(tmp_path):
    from cnncli.show.subject import load_subject

    data, _ = show("filters", "resnet20", "--input-size", "16", tmp_path=tmp_path)
    assert data["source"] == "untrained" and data["layer"] == "conv1" and data["mode"] == "rgb"
    assert data["kernel_shape"] == [3, 3, 3, 16] and data["shown"] == 16 and data["grid"] == [4, 4]
    kernel = np.asarray(load_subject("resnet20", input_size=16).model.conv1.kernel.value)  # seed 0, as shown
    for f in data["filters"]:
        k = kernel[..., f["index"]]
        assert np.allclose(f["tile"], (k - k.min()) / (k.max() - k.min()), atol=1e-4)
    data, _ = show("filters", "alexnet", "--limit", "10", tmp_path=tmp_path)
    assert data["kernel_shape"] == [11, 11, 3, 96] and data["shown"] == 10 and data["grid"] == [3, 4]


def test_filters_of_a_digits_run(run, tmp_path):
    data, _ = show("filters", run, tmp_path=tmp_path)
    assert data["mode"] == "gray" and data["kernel_shape"] == [3, 3, 1, 8] and data["grid"] == [3, 3]
    data, _ = show("filters", run, "--layer", "layer2.0.conv1", tmp_path=tmp_path)
    assert data["mode"] == "mean" and data["kernel_shape"] == [3, 3, 8, 16] and data["grid"] == [4, 4]
    tiles = np.array([f["tile"] for f in data["filters"]])
    assert tiles.shape == (16, 3, 3, 1) and tiles.min() == 0.0 and tiles.max() == 1.0


def test_features_of_a_digits_run(run, digit_png, tmp_path):
    from cnncli.data.augment import preprocess_eval
    from cnncli.data.files import read_image
    from cnncli.predict import fit_to_input
    from cnncli.show.subject import load_subject

    data, _ = show("features", run, digit_png, "--top-k", "3", tmp_path=tmp_path)
    layers = data["layers"]
    # the first conv, then the last block at each resolution; receptive fields by hand: 3, 3+6x2, +2+4x4, +4+8x4
    assert [(p["layer"], p["output_shape"], p["receptive_field"]) for p in layers] == [
        ("conv1", [16, 16, 8], 3), ("layer1.2", [16, 16, 8], 15), ("layer2.2", [8, 8, 16], 37),
        ("layer3.2", [4, 4, 32], 81)]
    assert data["grid"] == [4, 4]
    # conv1's maps are the convolution of the image prepared as `cnn predict` prepares it
    subject = load_subject(run)
    pixels = fit_to_input(read_image(digit_png), 16, 1)
    x = preprocess_eval(jnp.asarray(pixels[None]), jnp.asarray(subject.mean), jnp.asarray(subject.std))
    kernel = subject.model.conv1.kernel.value
    conv1 = np.asarray(jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                                    dimension_numbers=("NHWC", "HWIO", "NHWC")))[0]
    means = conv1.mean(axis=(0, 1))
    first = layers[0]
    assert first["channels"] == list(np.argsort(-means, kind="stable")[:3])
    for c, fmap in zip(first["channels"], first["maps"]):
        assert np.allclose(fmap, conv1[..., c], atol=1e-4)
    # stage names stand for their last block
    data, _ = show("features", run, digit_png, "--layers", "layer2,layer3.1.conv2", tmp_path=tmp_path)
    assert [p["layer"] for p in data["layers"]] == ["layer2.2", "layer3.1.conv2"]


@pytest.mark.slow  # 8 s: VGG-11's 133M parameters initialised
def test_features_of_an_untrained_model(rgb_png, tmp_path):
    data, _ = show("features", "vgg11", rgb_png, "--input-size", "32", "--top-k", "2", tmp_path=tmp_path)
    assert [p["output_shape"][:2] for p in data["layers"]] == [[32, 32], [16, 16], [8, 8], [4, 4], [2, 2], [1, 1]]
    assert [p["receptive_field"] for p in data["layers"]] == [3, 4, 10, 30, 70, 150]
    assert data["grid"] == [6, 3]


def test_cam_of_a_digits_run_matches_the_closed_form(run, digit_png, tmp_path):
    """ResNet-20 ends in global average pooling and one dense layer, so Grad-CAM has a closed form:
    dy_c/dA = W[:, c] / (h w) everywhere, and the map is ReLU(A . W[:, c]) / (h w) (Zhou et al.'s CAM)."""
    from cnncli.predict import predict_images
    from cnncli.show.subject import load_subject

    data, _ = show("cam", run, digit_png, tmp_path=tmp_path)
    predicted = predict_images(run, [digit_png], top_k=1)[0]["predictions"][0]
    assert data["class"]["index"] == data["predicted"]["index"] == predicted["index"]
    assert data["class"]["probability"] == pytest.approx(predicted["probability"], abs=1e-5)
    assert data["layer"] == "layer3.2" and data["layer_resolution"] == [4, 4] and data["grid"] == [1, 3]
    cam = np.array(data["cam"])
    assert cam.shape == (16, 16) and cam.min() >= 0.0 and cam.max() > 0.0
    features, _ = show("features", run, digit_png, "--layers", "layer3.2", "--top-k", "32", tmp_path=tmp_path)
    maps = features["layers"][0]
    a = np.zeros((4, 4, 32))
    for ch, fmap in zip(maps["channels"], maps["maps"]):
        a[..., ch] = fmap
    w = np.asarray(load_subject(run).model.fc.kernel.value)
    for k in (data["class"]["index"], (data["class"]["index"] + 3) % 10):
        chosen = data if k == data["class"]["index"] else show("cam", run, digit_png, "--class", k,
                                                               tmp_path=tmp_path)[0]
        assert chosen["class"]["index"] == k
        expected = np.maximum(a @ w[:, k], 0) / 16
        assert np.allclose(chosen["cam_layer"], expected, atol=1e-4)
        assert min(map(min, chosen["cam"])) >= 0.0


def _bilinear(a: np.ndarray, size: int) -> np.ndarray:
    """Half-pixel-centred bilinear upsampling of a square map, edges clamped (numpy, written out)."""
    n = a.shape[0]
    src = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    f = src - lo
    rows = a[lo] * (1 - f)[:, None] + a[hi] * f[:, None]
    return rows[:, lo] * (1 - f)[None, :] + rows[:, hi] * f[None, :]


def test_cam_of_an_untrained_model_matches_the_closed_form(rgb_png, tmp_path):
    """ResNet-18 (seed 0) ends in global average pooling and one dense layer: its logits and Grad-CAM
    follow from the last block's activations, computed here by calling the blocks one by one."""
    from cnncli.show.subject import load_subject, prepare_image

    data, _ = show("cam", "resnet18", rgb_png, "--input-size", "64", tmp_path=tmp_path)
    assert data["layer"] == "layer4.1" and data["layer_resolution"] == [2, 2] and data["receptive_field"] == 435
    subject = load_subject("resnet18", input_size=64)
    m = subject.model
    h = m.maxpool(jax.nn.relu(m.bn1(m.conv1(prepare_image(subject, rgb_png)[1]))))
    for stage in (m.layer1, m.layer2, m.layer3, m.layer4):
        for block in stage:
            h = block(h)
    a = np.asarray(h[0], np.float64)  # [2, 2, 512]
    w, b = np.asarray(m.fc.kernel.value, np.float64), np.asarray(m.fc.bias.value, np.float64)
    logits = a.mean(axis=(0, 1)) @ w + b
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    c = int(np.argmax(logits))
    assert data["class"]["index"] == data["predicted"]["index"] == c
    assert data["class"]["probability"] == pytest.approx(probs[c], rel=1e-4)
    expected = np.maximum(a @ w[:, c], 0) / 4
    assert expected.max() > 0  # a map with something on it, or the comparison says little
    np.testing.assert_allclose(data["cam_layer"], expected, rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(data["cam"], _bilinear(expected, 64), rtol=1e-4, atol=2e-6)
    out = tmp_path / "default.png"
    res = runner.invoke(app, ["show", "cam", "resnet18", str(rgb_png), "--input-size", "64", "-o", str(out)])
    assert res.exit_code == 0 and res.stdout.strip() == str(out) and out.stat().st_size > 0


@pytest.mark.parametrize("args,needle", [
    (["filters", "resnet2O"], "neither a run directory nor a model name"),
    (["filters", "resnet20", "--layer", "layer9"], "has no layer 'layer9'"),
    (["filters", "resnet20", "--layer", "bn1"], "not a conv layer"),
    (["cam", "resnet20", "{png}", "--class", "10"], "--class must be between 0 and 9"),
    (["features", "resnet20", "{png}", "--layers", "fc"], "not a feature map"),
    (["cam", "resnet20", "missing.png"], "image file not found"),
])
def test_mistakes_are_one_line_exit_2(args, needle, rgb_png):
    res = runner.invoke(app, ["show", *[a.replace("{png}", str(rgb_png)) for a in args], "--input-size", "16"])
    assert res.exit_code == 2, res.output
    assert needle in res.output and len(res.output.strip().splitlines()) == 1
