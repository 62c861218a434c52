"""Pretrained weights: the restricted .pth reader, import / export of torchvision and timm layouts.

PyTorch is optional (the `weights-test` extra): with it, torchvision-layout reference modules
written here are saved as .pth / .safetensors, imported and compared logit for logit; without
it those tests skip, and the reader is tested on .pth archives written here byte by byte.
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile

import numpy as np
import pytest
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.errors import CheckpointError, ModelError
from cnncli.weights import layouts
from cnncli.weights.convert import (
    convert_state_dict,
    export_weights,
    import_weights,
    torch_tensors,
)
from cnncli.weights.store import abstract_model, imagenet_class_names, load_weights
from cnncli.weights.torch_file import read_state_dict

runner = CliRunner()


# -- a .pth archive written without torch ---------------------------------------------------

class Tensor:
    """What _rebuild_tensor_v2 is called with: storage key, dtype, offset, size, stride."""

    def __init__(self, key, storage, numel, offset, size, stride):
        self.key, self.storage, self.numel = key, storage, numel
        self.offset, self.size, self.stride = offset, size, stride


def _op_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _emit(obj) -> bytes:
    """Protocol-2 opcodes for str, int, bool, tuple and Tensor, as torch.save writes them."""
    if isinstance(obj, bool):
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        return b"J" + struct.pack("<i", obj)
    if isinstance(obj, str):
        data = obj.encode()
        return b"X" + struct.pack("<I", len(data)) + data
    if isinstance(obj, tuple):
        return b"(" + b"".join(_emit(v) for v in obj) + b"t"
    assert isinstance(obj, Tensor)
    pid = (b"(" + _emit("storage") + _op_global("torch", obj.storage) + _emit(obj.key) + _emit("cpu")
           + _emit(obj.numel) + b"tQ")
    hooks = _op_global("collections", "OrderedDict") + b")R"
    return (_op_global("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + _emit(obj.offset) + _emit(obj.size)
            + _emit(obj.stride) + _emit(False) + hooks + b"tR")


def write_pth(path, entries: dict, storages: dict[str, bytes], pickle_bytes: bytes | None = None) -> None:
    body = (b"\x80\x02" + _op_global("collections", "OrderedDict") + b")R("
            + b"".join(_emit(k) + _emit(v) for k, v in entries.items()) + b"u.")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle_bytes if pickle_bytes is not None else body)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for key, raw in storages.items():
            z.writestr(f"archive/data/{key}", raw)


def test_hand_written_pth_is_read_with_offsets_strides_and_dtypes(tmp_path):
    base = np.arange(24, dtype=np.float32)
    half = np.array([1.5, -2.0, 3.25], np.float16)
    entries = {
        "w": Tensor("0", "FloatStorage", 24, 0, (2, 3, 4), (12, 4, 1)),
        "wt": Tensor("0", "FloatStorage", 24, 4, (3, 4), (1, 3)),  # a transposed view at an offset
        "h": Tensor("1", "HalfStorage", 3, 0, (3,), (1,)),
        "n": Tensor("2", "LongStorage", 1, 0, (), ()),
    }
    path = tmp_path / "hand.pth"
    write_pth(path, entries, {"0": base.tobytes(), "1": half.tobytes(), "2": np.int64(7).tobytes()})
    got = read_state_dict(path)
    assert set(got) == {"w", "wt", "h", "n"}
    np.testing.assert_array_equal(got["w"], base.reshape(2, 3, 4))
    np.testing.assert_array_equal(got["wt"], np.array([[base[4 + r + 3 * c] for c in range(4)] for r in range(3)]))
    assert got["h"].dtype == np.float16 and got["h"].tolist() == [1.5, -2.0, 3.25]
    assert got["n"].shape == () and got["n"].dtype == np.int64 and int(got["n"]) == 7
    try:
        import torch
    except ImportError:
        return
    ref = torch.load(path, weights_only=True)  # the format written here is the real one
    for k, v in ref.items():
        np.testing.assert_array_equal(got[k], v.numpy())


def test_view_past_the_end_of_its_storage_is_refused(tmp_path):
    path = tmp_path / "bad.pth"
    write_pth(path, {"w": Tensor("0", "FloatStorage", 4, 2, (4,), (1,))}, {"0": np.zeros(4, np.float32).tobytes()})
    with pytest.raises(CheckpointError, match="past the end of its storage"):
        read_state_dict(path)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_tampered_pth_is_refused_and_its_code_does_not_run(tmp_path):
    marker = tmp_path / "ran"
    payload = pickle.dumps({"conv1.weight": _RunsCode(marker)}, protocol=2)
    assert b"system" in payload
    path = tmp_path / "evil.pth"
    write_pth(path, {}, {}, pickle_bytes=payload)
    with pytest.raises(CheckpointError, match=r"refused to unpickle.*(posix|os)\.system"):
        read_state_dict(path)
    assert not marker.exists()
    r = runner.invoke(app, ["weights", "import", str(path), "--model", "resnet18", "-o", str(tmp_path / "w")])
    assert r.exit_code == 2 and "refused to unpickle" in r.output and "Traceback" not in r.output
    assert not marker.exists() and not (tmp_path / "w").exists()


def test_not_a_zip_is_one_line(tmp_path):
    path = tmp_path / "old.pth"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="not a torch.save zip archive"):
        read_state_dict(path)


# -- layouts ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,shape,grid,four_d", [
    ("conv", (5, 3, 7, 7), None, False), ("linear", (6, 4), None, False), ("conv1x1", (6, 4, 1, 1), None, False),
    ("flat", (5, 3 * 2 * 2), (3, 2, 2), False), ("flat", (5, 3, 2, 2), (3, 2, 2), True), ("vector", (4,), None, False),
])
def test_layout_kinds_invert_each_other(kind, shape, grid, four_d):
    e = layouts.Entry("k", ("params", "k"), kind, grid, four_d)
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    k = layouts.to_cnn(e, w)
    assert layouts.torch_shape(e, k.shape) == shape
    np.testing.assert_array_equal(layouts.to_torch(e, k), w)


def test_conv_kernel_is_hwio_and_flat_layer_sees_nhwc():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((5, 3, 2, 4)).astype(np.float32)  # O I H W
    k = layouts.to_cnn(layouts.Entry("c", (), "conv"), w)
    assert k[1, 3, 2, 4] == w[4, 2, 1, 3]
    # the first dense layer after a conv stack: torch flattens N C H W, cnn N H W C
    fmap = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    dense = rng.standard_normal((7, 3 * 36)).astype(np.float32)
    kernel = layouts.to_cnn(layouts.Entry("f", (), "flat", (3, 6, 6)), dense)
    torch_out = fmap.reshape(2, -1) @ dense.T
    cnn_out = fmap.transpose(0, 2, 3, 1).reshape(2, -1) @ kernel
    np.testing.assert_allclose(cnn_out, torch_out, rtol=1e-5, atol=1e-5)


def test_vgg_layouts_name_torchvision_and_timm_keys():
    model = abstract_model("vgg11_bn", 1000, (224, 224, 3))[0]
    tv = {e.torch_key: e for e in layouts.layout("vgg11_bn", model, "torchvision")}
    assert tv["features.4.weight"].path == ("params", "features", 3, "kernel")  # torch: conv bn relu pool conv
    assert tv["features.26.running_var"].path == ("batch_stats", "features", 19, "var")
    assert tv["classifier.0.weight"].grid == (512, 7, 7)
    assert {"classifier.3.weight", "classifier.6.bias"} <= set(tv)
    timm = {e.torch_key: e for e in layouts.layout("vgg11_bn", model, "timm")}
    assert timm["pre_logits.fc1.weight"].four_d and timm["pre_logits.fc2.weight"].kind == "conv1x1"
    assert len(tv) == len(timm) == 8 * 6 + 6
    with pytest.raises(ModelError, match="timm has no AlexNet"):
        layouts.layout("alexnet_tv", None, "timm")
    with pytest.raises(ModelError, match="supports vgg11-19"):
        layouts.layout("resnet20", None)


@pytest.mark.parametrize("name,keys", [("resnet18", 122), ("resnet50", 320), ("vgg16", 32), ("vgg16_bn", 97)])
def test_layouts_have_torchvisions_state_dict_sizes(name, keys):
    # len(torchvision.models.<name>().state_dict()), num_batches_tracked included (one per BatchNorm)
    entries = layouts.layout(name, abstract_model(name, 1000, (224, 224, 3))[0])
    bns = sum(e.torch_key.endswith("running_var") for e in entries)
    assert len(entries) + bns == keys
    if name == "resnet50":
        names = {e.torch_key for e in entries}
        assert {"layer1.0.downsample.0.weight", "layer4.2.conv3.weight", "layer3.5.bn3.running_mean"} <= names
        assert "layer1.1.downsample.0.weight" not in names


def test_imagenet_class_names_ship_with_the_package():
    names = imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    # spot checks along the list: one slip would shift every later label
    for index, name in ((0, "tench"), (151, "Chihuahua"), (207, "golden retriever"), (281, "tabby"),
                        (340, "zebra"), (386, "African elephant"), (409, "analog clock"), (504, "coffee mug"),
                        (517, "crane (machine)"), (817, "sports car"), (948, "Granny Smith"), (999, "toilet tissue")):
        assert names[index] == name


# -- import / export without torch --------------------------------------------------------------

def _random_state_dict(name: str, seed: int = 0, classes: int = 10) -> dict[str, np.ndarray]:
    """A torchvision-layout state dict of a freshly initialised cnn model, with varied BatchNorm statistics."""
    from flax import nnx

    from cnncli.models import create_model

    model = create_model(name, num_classes=classes, input_shape=(32, 32, 3), seed=seed, check_input=False)
    _, params, stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    sd = torch_tensors(name, params, stats, {"num_classes": classes, "input_shape": [32, 32, 3]})
    rng = np.random.default_rng(seed)
    for k in sd:
        if k.endswith(("running_mean", "running_var")):
            sd[k] = rng.uniform(0.5, 1.5, sd[k].shape).astype(np.float32)
        elif k.endswith("num_batches_tracked"):
            sd[k] = np.array(rng.integers(0, 1000), np.int64)
    return sd


def test_export_after_import_gives_the_file_back_bit_for_bit(tmp_path):
    from safetensors.numpy import load_file, save_file

    sd = _random_state_dict("resnet18", classes=1000)
    src = tmp_path / "r18.safetensors"
    save_file(sd, str(src))
    r = runner.invoke(app, ["weights", "import", str(src), "--model", "resnet18", "-o", str(tmp_path / "w")])
    assert r.exit_code == 0, r.output
    w = load_weights(tmp_path / "w")
    assert w.info["num_classes"] == 1000 and w.info["input_shape"] == [224, 224, 3]
    assert w.info["class_names"][281] == "tabby" and w.info["mean"] == [0.485, 0.456, 0.406]
    kernel = np.asarray(w.params["layer2"][0]["conv1"]["kernel"].value)
    np.testing.assert_array_equal(kernel, sd["layer2.0.conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(np.asarray(w.batch_stats["bn1"]["var"].value), sd["bn1.running_var"])
    r = runner.invoke(app, ["weights", "export", str(tmp_path / "w"), "-o", str(tmp_path / "back.safetensors")])
    assert r.exit_code == 0, r.output
    back = load_file(str(tmp_path / "back.safetensors"))
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and back[k].tobytes() == v.tobytes(), k
    cnn = load_file(str(export_weights(tmp_path / "w", tmp_path / "cnn.safetensors", "cnn")[0]))
    np.testing.assert_array_equal(cnn["params/layer2/0/conv1/kernel"], kernel)


def test_missing_unexpected_and_misshaped_keys_in_one_error():
    sd = _random_state_dict("resnet18")
    del sd["layer1.0.bn1.weight"], sd["layer3.1.conv2.weight"]
    sd["extra.weight"] = np.zeros(3, np.float32)
    sd["layer4.0.conv1.weight"] = np.zeros((512, 256, 1, 1), np.float32)
    with pytest.raises(CheckpointError) as err:
        convert_state_dict(sd, "resnet18", where="f.pth")
    msg = str(err.value)
    assert "2 missing (layer1.0.bn1.weight, layer3.1.conv2.weight)" in msg
    assert "1 unexpected (extra.weight)" in msg
    assert "1 mis-shaped (layer4.0.conv1.weight (512, 256, 1, 1) != (512, 256, 3, 3))" in msg
    assert "\n" not in msg


def test_integer_and_bool_weights_are_refused_not_converted():
    """An int8 kernel (quantized, or saved with the wrong dtype) would become other numbers as float32."""
    import ml_dtypes

    sd = _random_state_dict("resnet18")
    sd["conv1.weight"] = np.ones(sd["conv1.weight"].shape, np.int8)
    sd["bn1.running_var"] = np.ones(sd["bn1.running_var"].shape, bool)
    with pytest.raises(CheckpointError) as err:
        convert_state_dict(sd, "resnet18", where="q.pth")
    assert "2 not float16/32/64 or bfloat16 (bn1.running_var bool, conv1.weight int8)" in str(err.value)
    sd = _random_state_dict("resnet18")
    for k, dtype in (("conv1.weight", np.float16), ("fc.weight", ml_dtypes.bfloat16), ("fc.bias", np.float64)):
        sd[k] = sd[k].astype(dtype)
    params, _, _ = convert_state_dict(sd, "resnet18")
    np.testing.assert_array_equal(np.asarray(params["fc"]["bias"].value), sd["fc.bias"].astype(np.float32))


def test_non_finite_weights_and_counters_that_count_nothing_are_refused():
    """A NaN in a kernel makes every prediction uniform, an infinite variance one class at 1.0: refused, as are
    counters outside int64 (export would crash on them) and counters of layers the model does not have."""
    sd = _random_state_dict("resnet18")
    sd["conv1.weight"][0, 0, 0, 0] = np.nan
    sd["bn1.running_var"][3] = np.inf
    sd["foo.num_batches_tracked"] = np.array(5, np.int64)
    with pytest.raises(CheckpointError) as err:
        convert_state_dict(sd, "resnet18", where="n.pth")
    assert "1 unexpected (foo.num_batches_tracked)" in str(err.value)
    assert "2 with NaN or infinite values (bn1.running_var, conv1.weight)" in str(err.value)
    for bad in (np.array(2 ** 64 - 1, np.uint64), np.array(-1, np.int64)):
        sd = _random_state_dict("resnet18")
        sd["bn1.num_batches_tracked"] = bad
        with pytest.raises(CheckpointError, match="bn1.num_batches_tracked is .*not a count of batches"):
            convert_state_dict(sd, "resnet18", where="c.pth")


def test_export_replaces_an_existing_file_only_with_force(tmp_path):
    from safetensors.numpy import save_file

    src = tmp_path / "r18.safetensors"
    save_file(_random_state_dict("resnet18"), str(src))
    assert runner.invoke(app, ["weights", "import", str(src), "--model", "resnet18", "-o", str(tmp_path / "w")]
                         ).exit_code == 0
    before = src.read_bytes()
    r = runner.invoke(app, ["weights", "export", str(tmp_path / "w"), "-o", str(src), "--layout", "cnn"])
    assert r.exit_code == 2 and "already exists: add --force" in r.output and src.read_bytes() == before, r.output
    r = runner.invoke(app, ["weights", "export", str(tmp_path / "w"), "-o", str(src), "--layout", "cnn", "--force"])
    assert r.exit_code == 0 and src.read_bytes() != before, r.output


def test_import_refusals_are_one_line_and_write_nothing(tmp_path):
    from safetensors.numpy import save_file

    src = tmp_path / "r18.safetensors"
    save_file(_random_state_dict("resnet18"), str(src))
    for args, expected in (
        (["--model", "resnet34"], "missing"),
        (["--model", "resnet20"], "supports vgg11-19"),
        (["--model", "resnet19"], "unknown model"),
    ):
        r = runner.invoke(app, ["weights", "import", str(src), "-o", str(tmp_path / "w"), *args])
        assert r.exit_code == 2 and expected in r.output and "Traceback" not in r.output, r.output
        assert not (tmp_path / "w").exists()
    (tmp_path / "taken").mkdir()
    r = runner.invoke(app, ["weights", "import", str(src), "--model", "resnet18", "-o", str(tmp_path / "taken")])
    assert r.exit_code == 2 and "already exists" in r.output


@pytest.mark.slow
def test_two_imports_into_one_folder_at_once_leave_one_whole_result(tmp_path):
    """Both commands start before either has written: one result, whole; the other refused in one line
    (or, with --force, both succeed and the last one wins whole)."""
    import os
    import subprocess
    import sys

    from safetensors.numpy import save_file

    src = tmp_path / "r18.safetensors"
    save_file(_random_state_dict("resnet18"), str(src))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    for extra in ([], ["--force"]):
        out = tmp_path / f"w{len(extra)}"
        procs = [subprocess.Popen([sys.executable, "-m", "cnncli.cli", "weights", "import", str(src), "--model",
                                   "resnet18", "-o", str(out), *extra], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [(p.wait(timeout=300), p.stdout.read() + p.stderr.read()) for p in procs]
        assert all("Traceback" not in text for _, text in results), results
        codes = sorted(rc for rc, _ in results)
        if extra:
            assert codes == [0, 0], results
        else:
            assert codes in ([0, 0], [0, 2]), results  # [0, 0]: the second began only after the first ended
            refused = [text for rc, text in results if rc == 2]
            assert all(t.startswith("error: ") and ("already exists" in t or "another command" in t) and
                       t.count("\n") == 1 for t in refused), refused
        w = load_weights(out)
        assert w.info["num_classes"] == 10
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f".w{len(extra)}")) == []


def test_a_folder_filled_while_importing_is_not_mixed_with_it(tmp_path, monkeypatch):
    from cnncli.errors import WriteError
    from cnncli.weights import store

    sd = _random_state_dict("resnet18")
    from safetensors.numpy import save_file

    save_file(sd, str(tmp_path / "r18.safetensors"))
    out = tmp_path / "w"
    real = store._check_free
    calls = []

    def other_command_meanwhile(path, force):  # the second check: another import finished first
        calls.append(path)
        if len(calls) == 2:
            (path / "model").mkdir(parents=True)
            (path / "weights.json").write_text("{}")
        return real(path, force) if len(calls) == 1 else None

    monkeypatch.setattr(store, "_check_free", other_command_meanwhile)
    with pytest.raises(WriteError, match="was written by another command while this one ran"):
        import_weights(tmp_path / "r18.safetensors", "resnet18", out=out)
    assert sorted(p.name for p in out.iterdir()) == ["model", "weights.json"]  # theirs, untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# -- against PyTorch ---------------------------------------------------------------------------------

def _torch_modules():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e '.[weights-test]')")
    nn = torch.nn

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                               if stride != 1 or cin != cout else None)

        def forward(self, x):
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

    class ResNet18(nn.Module):
        def __init__(self, classes):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
            cin = 64
            for i, cout in enumerate((64, 128, 256, 512)):
                blocks = [Basic(cin, cout, 1 if i == 0 else 2), Basic(cout, cout, 1)]
                setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
                cin = cout
            self.fc = nn.Linear(512, classes)

        def forward(self, x):
            x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 3, 2, 1)
            for i in range(4):
                x = getattr(self, f"layer{i + 1}")(x)
            return self.fc(x.mean((2, 3)))

    def vgg11_bn(classes):
        layers, cin = [], 3
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
                cin = v
        m = nn.Module()
        m.features, m.avgpool = nn.Sequential(*layers), nn.AdaptiveAvgPool2d(7)
        m.classifier = nn.Sequential(nn.Linear(512 * 49, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 4096),
                                     nn.ReLU(), nn.Dropout(), nn.Linear(4096, classes))
        m.forward = lambda x: m.classifier(torch.flatten(m.avgpool(m.features(x)), 1))
        return m

    def alexnet(classes):
        m = nn.Module()
        m.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(),
            nn.MaxPool2d(3, 2), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(), nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
        m.avgpool = nn.AdaptiveAvgPool2d(6)
        m.classifier = nn.Sequential(nn.Dropout(), nn.Linear(256 * 36, 4096), nn.ReLU(), nn.Dropout(),
                                     nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, classes))
        m.forward = lambda x: m.classifier(torch.flatten(m.avgpool(m.features(x)), 1))
        return m

    def timm_vgg11(classes):  # timm's names: FC6/FC7 as 7x7 and 1x1 convolutions, then the head
        layers, cin = [], 3
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
                cin = v
        m = nn.Module()
        m.features, m.pre_logits, m.head = nn.Sequential(*layers), nn.Module(), nn.Module()
        m.pre_logits.fc1, m.pre_logits.fc2 = nn.Conv2d(512, 4096, 7), nn.Conv2d(4096, 4096, 1)
        m.head.fc = nn.Linear(4096, classes)

        def forward(x):  # 224x224 input: the features are 7x7, FC6 makes them 1x1
            x = torch.relu(m.pre_logits.fc2(torch.relu(m.pre_logits.fc1(m.features(x)))))
            return m.head.fc(x.mean((2, 3)))

        m.forward = forward
        return m

    return torch, {"resnet18": ResNet18, "vgg11_bn": vgg11_bn, "alexnet_tv": alexnet, "vgg11": timm_vgg11}


@pytest.mark.parametrize("name,suffix,size,source", [
    ("resnet18", ".pth", 64, "torchvision"), ("resnet18", ".safetensors", 64, "torchvision"),
    pytest.param("vgg11_bn", ".pth", 64, "torchvision", marks=pytest.mark.slow),  # ~14 s here
    ("alexnet_tv", ".safetensors", 127, "torchvision"),
    pytest.param("vgg11", ".pth", 224, "timm", marks=pytest.mark.slow),  # ~12 s here
])
def test_imported_torch_model_gives_the_same_logits(tmp_path, name, suffix, size, source):
    torch, builders = _torch_modules()
    torch.manual_seed(0)
    ref = builders[name](12)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and m.weight.shape[1] >= 512:
                m.weight.normal_(0, 0.05)  # large enough that a wrong flatten order shows
    ref.eval()
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".pth":
        torch.save(ref.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(ref.state_dict(), str(path))
    out, info = import_weights(path, name, source=source, out=tmp_path / "w")
    assert info["num_classes"] == 12
    x = np.random.default_rng(0).standard_normal((1 if size > 128 else 2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    got = np.asarray(load_weights(out).model()(x.transpose(0, 2, 3, 1)))
    assert np.abs(expected).max() > 1e-3
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-4


@pytest.mark.slow
def test_a_trained_run_exports_in_torchvision_layout(tmp_path, tiny_config):
    from safetensors.numpy import load_file

    from cnncli.evaluate import load_checkpoint_model

    run = tmp_path / "run"
    r = runner.invoke(app, ["train", str(tiny_config), "--set", "model.name=resnet18", "--set", "model.width=0.25",
                            "--set", "data.image_size=32", "--set", "train.steps=2", "--run-dir", str(run)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["weights", "export", str(run), "-o", str(tmp_path / "run.safetensors")])
    assert r.exit_code == 0, r.output
    sd = load_file(str(tmp_path / "run.safetensors"))
    loaded = load_checkpoint_model(run)
    kernel = np.asarray(loaded.params["conv1"]["kernel"].value)  # H W I O, digits: one channel, width 0.25: 16
    assert kernel.shape == (7, 7, 1, 16)
    np.testing.assert_array_equal(sd["conv1.weight"], kernel.transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(sd["fc.weight"], np.asarray(loaded.params["fc"]["kernel"].value).T)
    assert sd["layer2.0.downsample.1.num_batches_tracked"].dtype == np.int64
    assert len([k for k in sd if k.endswith("running_var")]) == 20


# -- fine-tuning hooks ---------------------------------------------------------------------------

def test_freeze_mask_patterns_last_match_wins():
    from cnncli.errors import ConfigError
    from cnncli.weights.finetune import freeze_mask, frozen_groups

    params = {"conv1": {"kernel": np.zeros(2)}, "layer1": {0: {"conv1": {"kernel": np.zeros(2)}}},
              "layer2": {0: {"bn1": {"scale": np.zeros(2), "bias": np.zeros(2)}}},
              "fc": {"kernel": np.zeros(2), "bias": np.zeros(2)}}
    mask = freeze_mask(params, ["*", "!fc*"])
    assert mask["conv1"]["kernel"] and mask["layer1"][0]["conv1"]["kernel"] and mask["layer2"][0]["bn1"]["bias"]
    assert not mask["fc"]["kernel"] and not mask["fc"]["bias"]
    assert frozen_groups(mask) == (["conv1", "layer1.0.conv1", "layer2.0.bn1"], ["fc"])
    mask = freeze_mask(params, ["layer1*", "fc.bias"])
    assert frozen_groups(mask) == (["layer1.0.conv1"], ["conv1", "fc", "layer2.0.bn1"])
    assert mask["fc"]["bias"] and not mask["fc"]["kernel"]
    with pytest.raises(ConfigError, match="'layr1\\*' match no parameter group"):
        freeze_mask(params, ["layr1*"])


def test_init_weights_keep_all_but_a_new_head(tmp_path):
    import jax
    from flax import nnx
    from safetensors.numpy import save_file

    from cnncli.models import create_model
    from cnncli.weights.finetune import freeze_mask, load_init_weights

    sd = _random_state_dict("resnet18", seed=1, classes=10)
    save_file(sd, str(tmp_path / "r18.safetensors"))
    import_weights(tmp_path / "r18.safetensors", "resnet18", out=tmp_path / "w")
    model = create_model("resnet18", num_classes=4, input_shape=(32, 32, 3), seed=5)
    _, params, stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    head_before = np.array(params["fc"]["kernel"][...])
    tree, report = load_init_weights({"params": params, "batch_stats": stats}, tmp_path / "w", num_classes=4)
    assert report["reinitialised"] == ["fc"] and "fc" not in report["loaded"]
    assert "layer4.1.bn2" in report["loaded"] and len(report["loaded"]) == 1 + 1 + 8 * 4 + 3 * 2
    np.testing.assert_array_equal(tree["params"]["fc"]["kernel"][...], head_before)
    np.testing.assert_array_equal(tree["params"]["layer3"][0]["conv2"]["kernel"][...],
                                  sd["layer3.0.conv2.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(tree["batch_stats"]["bn1"]["mean"][...], sd["bn1.running_mean"])
    assert not np.array_equal(stats["bn1"]["mean"][...], sd["bn1.running_mean"])  # the template is untouched
    flags = jax.tree.leaves(freeze_mask(tree["params"], ["*", "!fc*"]))
    assert sum(map(bool, flags)) == len(flags) - 2  # all but fc.kernel and fc.bias
    grey = create_model("resnet18", num_classes=4, input_shape=(32, 32, 1), seed=5, abstract=True)
    _, gp, gs, _ = nnx.split(grey, nnx.Param, nnx.BatchStat, ...)
    with pytest.raises(CheckpointError, match=r"do not fit the model being trained: 1 variables \(params/conv1"):
        load_init_weights({"params": gp, "batch_stats": gs}, tmp_path / "w", num_classes=4)


def test_predict_on_imported_imagenet_weights_prints_class_names(tmp_path):
    from PIL import Image

    from cnncli.weights.store import imagenet_class_names

    from safetensors.numpy import save_file

    save_file(_random_state_dict("resnet18", seed=2, classes=1000), str(tmp_path / "r18.safetensors"))
    import_weights(tmp_path / "r18.safetensors", "resnet18", out=tmp_path / "w")
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(photo)
    r = runner.invoke(app, ["predict", str(tmp_path / "w"), str(photo), "--top-k", "3", "--format", "json"])
    assert r.exit_code == 0, r.output
    (result,) = json.loads(r.stdout)
    names = imagenet_class_names()
    preds = result["predictions"]
    assert len(preds) == 3 and all(p["class"] == names[p["index"]] for p in preds)
    assert preds[0]["probability"] >= preds[1]["probability"] >= preds[2]["probability"] > 0


@pytest.mark.slow
def test_eval_of_imported_weights_on_a_named_dataset(tmp_path):
    """`cnn eval WEIGHTS_DIR --set data.source=...`: the weights' normalisation and model, any data."""
    import dataclasses

    from safetensors.numpy import save_file

    from cnncli.config import DataConfig
    from cnncli.data.pipeline import prepare_dataset
    from cnncli.weights.store import IMAGENET_MEAN, IMAGENET_STD, load_weights

    save_file(_random_state_dict("resnet18", seed=3, classes=10), str(tmp_path / "r18.safetensors"))
    import_weights(tmp_path / "r18.safetensors", "resnet18", out=tmp_path / "w")
    data = ["--set", "data.source=synthetic", "--set", "data.num_test=12", "--set", "data.num_train=12"]
    r = runner.invoke(app, ["eval", str(tmp_path / "w"), *data, "--format", "json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    # independently: the synthetic test images at the weights' 224x224x3, normalised with ImageNet's statistics
    cfg = dataclasses.replace(DataConfig(), source="synthetic", num_test=12, num_train=12, image_size=224, channels=3)
    x, y = prepare_dataset(cfg).split("test")
    z = (x.astype(np.float32) / 255.0 - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    logits = np.asarray(load_weights(tmp_path / "w").model()(z), np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    assert report["num_examples"] == 12
    assert report["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == y))
    assert report["loss"] == pytest.approx(-np.mean(logp[np.arange(12), y]), rel=1e-4)
    r = runner.invoke(app, ["eval", str(tmp_path / "w"), "--set", "model.width=2"])
    assert r.exit_code == 2 and "fixed by weights.json" in r.output
