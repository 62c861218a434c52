"""Weight files that lie about their sizes or shapes, and exports that cannot be written: one line each,
nothing allocated beyond what the file really holds, nothing written (issue 25)."""

from __future__ import annotations

import re
import tracemalloc
import zipfile

import numpy as np
import pytest
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.errors import CheckpointError
from cnncli.weights import torch_file
from cnncli.weights.torch_file import read_state_dict
from tests.test_weights import Tensor, write_pth

runner = CliRunner()


def test_a_stride_zero_view_larger_than_its_storage_is_refused_without_allocating(tmp_path):
    path = tmp_path / "tiny.pth"
    write_pth(path, {"w": Tensor("0", "FloatStorage", 1, 0, (2**28,), (0,))}, {"0": np.float32(1).tobytes()})
    assert path.stat().st_size < 1000
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=r"tiny.pth: a tensor of 268,435,456 elements \(shape "
                                                  r"\(268435456,\)\) views a storage of 1 \(damaged or tampered\)"):
            read_state_dict(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 << 20  # the old reader copied the view: 1 GiB


def test_tensors_are_views_of_their_storage_not_copies(tmp_path):
    path = tmp_path / "shared.pth"
    base = np.arange(12, dtype=np.float32)
    entries = {f"t{i}": Tensor("0", "FloatStorage", 12, 0, (3, 4), (4, 1)) for i in range(3)}
    entries["row"] = Tensor("0", "FloatStorage", 12, 4, (4,), (1,))
    write_pth(path, entries, {"0": base.tobytes()})
    got = read_state_dict(path)
    np.testing.assert_array_equal(got["t2"], base.reshape(3, 4))
    np.testing.assert_array_equal(got["row"], base[4:8])
    assert all(np.shares_memory(got["t0"], v) for v in got.values())  # one storage in memory, however many views


def _bomb(path, size: int, compression=zipfile.ZIP_DEFLATED):
    """A .pth whose one storage is `size` zero bytes, deflated (a zip bomb) or stored (as torch.save writes)."""
    from tests.test_weights import _emit

    numel = size // 4
    body = (b"\x80\x02" + b"ccollections\nOrderedDict\n)R(" + _emit("w")
            + _emit(Tensor("0", "FloatStorage", numel, 0, (numel,), (1,))) + b"u.")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", body)
        z.writestr("archive/byteorder", "little")
        z.writestr(zipfile.ZipInfo("archive/data/0"), bytes(size), compress_type=compression)


def test_a_zip_bomb_storage_is_refused_from_its_declared_sizes(tmp_path, monkeypatch):
    monkeypatch.setattr(torch_file, "EXPANSION_FLOOR", 1 << 20)  # the real floor is 64 MiB: a 3 GB bomb's scale
    path = tmp_path / "bomb.pth"
    _bomb(path, 8 << 20)
    assert path.stat().st_size < 64 << 10
    with pytest.raises(CheckpointError, match=r"bomb.pth: storage 'archive/data/0' expands [\d,]+ compressed bytes to "
                                              r"8,388,608 \(more than 20x\): refused as a zip bomb"):
        read_state_dict(path)
    _bomb(path, 8 << 20, zipfile.ZIP_STORED)  # as torch.save writes it: the same size, stored, is read
    assert read_state_dict(path)["w"].shape == (2 << 20,)


def test_a_storage_shorter_than_the_pickle_says_is_refused(tmp_path):
    path = tmp_path / "short.pth"
    write_pth(path, {"w": Tensor("0", "FloatStorage", 4, 0, (4,), (1,))}, {"0": bytes(8)})
    with pytest.raises(CheckpointError, match="storage 'archive/data/0' holds 8 bytes, the pickle says 16"):
        read_state_dict(path)


@pytest.mark.parametrize("value", [np.zeros((1, 1), np.int64), np.zeros(2, np.int64), np.array(3.5)])
def test_a_batchnorm_counter_must_be_an_integer_scalar(value):
    from cnncli.weights.convert import _counters

    assert _counters({"bn1.num_batches_tracked": np.array(7), "fc.weight": np.zeros((2, 3))}, "f") == {"bn1": 7}
    with pytest.raises(CheckpointError, match="^" + re.escape(
            f"f.pth: layer1.0.bn1.num_batches_tracked must be an integer scalar (shape ()), got {value.dtype} of "
            f"shape {tuple(value.shape)}") + "$"):
        _counters({"layer1.0.bn1.num_batches_tracked": value}, "f.pth")


def test_import_refuses_input_channels_cnn_cannot_feed(tmp_path):
    from safetensors.numpy import save_file

    sd = {"conv1.weight": np.zeros((64, 7, 7, 7), np.float32), "fc.weight": np.zeros((10, 512), np.float32)}
    src = tmp_path / "seven.safetensors"
    save_file(sd, str(src))
    r = runner.invoke(app, ["weights", "import", str(src), "--model", "resnet18", "-o", str(tmp_path / "w")])
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().splitlines() == [
        f"error: {src}: conv1.weight has shape (64, 7, 7, 7), but resnet18 takes RGB (64, 3, 7, 7) (or grayscale, "
        "1 input channel): 7 input channels cannot be fed"]
    assert not (tmp_path / "w").exists()


def test_export_to_a_folder_that_is_missing_or_a_directory_is_one_line(tmp_path):
    (tmp_path / "d.safetensors").mkdir()
    for out, why in ((tmp_path / "missing" / "x.safetensors", f"the folder {tmp_path / 'missing'} does not exist"),
                     (tmp_path / "d.safetensors", "it is a directory; name the .safetensors file to write")):
        r = runner.invoke(app, ["weights", "export", "resnet18-weights", "-o", str(out)])
        assert r.exit_code == 2, r.output
        assert r.stderr.strip().splitlines() == [f"error: cannot write {out}: {why}"]
    assert [p.name for p in tmp_path.iterdir()] == ["d.safetensors"]
    assert list((tmp_path / "d.safetensors").iterdir()) == []


def test_export_reports_a_write_the_safetensors_library_fails_in_one_line(tmp_path, monkeypatch):
    import safetensors.numpy

    from cnncli.weights import convert

    def fail(*args, **kwargs):
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    class Tree:
        def to_pure_dict(self):
            return {"w": np.zeros(2, np.float32)}

    monkeypatch.setattr(safetensors.numpy, "save_file", fail)
    monkeypatch.setattr(convert, "load_any", lambda src: ("m", Tree(), Tree(), {}))
    with pytest.raises(convert.WriteError, match=re.escape(
            f"cannot write {tmp_path / 'o.safetensors'}: Error while serializing: I/O error: No space left on device")):
        convert.export_weights("src", tmp_path / "o.safetensors", "cnn")
    assert list(tmp_path.iterdir()) == []
