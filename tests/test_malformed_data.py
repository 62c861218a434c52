"""Dataset files that parse but hold the wrong things: refused in one line naming the file and field,
before any run directory exists (issue 25)."""

import gzip
import pickle
import struct

import numpy as np
import pytest
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.config import DataConfig
from cnncli.data.dataset import check_labels
from cnncli.data.pipeline import prepare_dataset
from cnncli.data.sources import load_source
from cnncli.errors import DataError

RNG = np.random.default_rng(25)


def load(source, path, **kw):
    return load_source(DataConfig(source=source, path=str(path), **kw))


# ----------------------------------------------------------------------------- labels in general


@pytest.mark.parametrize("labels,what", [
    (np.array([0, 3.7]), r"floats \(e.g. 0\)"), (np.array([3.0, 1.0]), r"floats \(e.g. 3\)"),
    (np.array(["3", "1"]), r"strings \(e.g. '3'\)"), (np.array([True, False]), "booleans"),
    (np.array([1, "x"], dtype=object), "Python objects")])
def test_labels_must_be_integers_even_integral_floats(labels, what):
    with pytest.raises(DataError, match=f"^somewhere: labels must be integers, got {what}$"):
        check_labels(labels, 10, "somewhere")


def test_a_huge_label_is_refused_before_it_can_wrap_into_range():
    y = np.array([2**32 + 3, 1], np.uint64)  # astype(int32) would make it 3
    with pytest.raises(DataError, match=r"labels must lie in \[0, 9\], found 1\.\.4294967299"):
        check_labels(y, 10, "x")


# ----------------------------------------------------------------------------- CIFAR


def cifar10_python(root, train_labels, test_labels=(1, 2), meta=None):
    root.mkdir(exist_ok=True)
    for i in range(1, 6):
        labels = train_labels if i == 1 else [0, 1]
        x = RNG.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        (root / f"data_batch_{i}").write_bytes(pickle.dumps({"data": x, "labels": labels}))
    x = RNG.integers(0, 256, (len(test_labels), 3072), dtype=np.uint8)
    (root / "test_batch").write_bytes(pickle.dumps({"data": x, "labels": list(test_labels)}))
    if meta is not None:
        (root / "batches.meta").write_bytes(meta)


@pytest.mark.parametrize("labels,expected", [
    ([3.7, 1], r"data_batch_1 'labels': labels must be integers, got floats \(e.g. 3.7\)$"),
    (np.array([3.0, 1.0]), r"data_batch_1 'labels': labels must be integers, got floats \(e.g. 3\)$"),
    (["cat", "dog"], r"data_batch_1 'labels': labels must be integers, got strings \(e.g. 'cat'\)$"),
    (["3", "1"], r"data_batch_1 'labels': labels must be integers, got strings \(e.g. '3'\)$"),
    ([10, 1], r"data_batch_1 'labels': labels must lie in \[0, 9\], found 1\.\.10$"),
    ([-1, 1], r"data_batch_1 'labels': labels must lie in \[0, 9\], found -1\.\.1$"),
    ([2**32 + 3, 1], r"labels must lie in \[0, 9\], found 1\.\.4294967299$"),
    ([[1], [2, 3]], r"data_batch_1: 'labels' must be a list of 2 integers$")])
def test_cifar_python_labels_that_are_not_integers_in_range(tmp_path, labels, expected):
    cifar10_python(tmp_path, labels)
    with pytest.raises(DataError, match=expected):
        load("cifar10", tmp_path)


def test_cifar_python_class_names_must_be_utf8(tmp_path):
    meta = pickle.dumps({b"label_names": [b"plane", b"\xff\xfecar"] + [b"x"] * 8})
    cifar10_python(tmp_path, [0, 1], meta=meta)
    with pytest.raises(DataError, match=r"batches.meta: 'label_names'\[1\] is not UTF-8 text"):
        load("cifar10", tmp_path)
    # a Python 2 str (as the original files hold) is bytes on disk too: not read as latin-1 mojibake
    py2 = b"\x80\x02}U\x0blabel_names](" + b"".join(b"U\x02\xc3\xa9" for _ in range(9)) + b"U\x01\xffes."
    (tmp_path / "batches.meta").write_bytes(py2)
    with pytest.raises(DataError, match=r"'label_names'\[9\] is not UTF-8 text \(b'\\xff'\)"):
        load("cifar10", tmp_path)
    (tmp_path / "batches.meta").write_bytes(py2.replace(b"U\x01\xff", b"U\x02\xc3\xa9"))
    assert load("cifar10", tmp_path).class_names == ["\u00e9"] * 10  # UTF-8 in a Python 2 str: decoded
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(9)] + [7]}))
    with pytest.raises(DataError, match=r"'label_names'\[9\] must be a string, got int"):
        load("cifar10", tmp_path)


def test_cifar_binary_names_file_must_be_utf8_and_labels_in_range(tmp_path):
    record = lambda label: bytes([label]) + bytes(3072)  # noqa: E731
    for i in range(1, 6):
        (tmp_path / f"data_batch_{i}.bin").write_bytes(record(1) + record(2))
    (tmp_path / "test_batch.bin").write_bytes(record(3))
    (tmp_path / "batches.meta.txt").write_bytes(b"airplane\n\xe9car\n" + b"x\n" * 8)
    with pytest.raises(DataError, match=r"batches.meta.txt: the class names are not UTF-8 text \(byte 9: e9\)"):
        load("cifar10", tmp_path)
    (tmp_path / "batches.meta.txt").unlink()
    (tmp_path / "test_batch.bin").write_bytes(record(3) + record(200))
    with pytest.raises(DataError, match=r"test_batch.bin: labels must lie in \[0, 9\], found 3\.\.200"):
        load("cifar10", tmp_path)


# ----------------------------------------------------------------------------- IDX


def idx_file(array: np.ndarray, code: int = 0x08) -> bytes:
    return bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def mnist(tmp_path, train_images=None, train_labels=None, label_code=0x08):
    x = RNG.integers(0, 256, (4, 28, 28), dtype=np.uint8) if train_images is None else train_images
    y = np.array([0, 1, 2, 3], np.uint8) if train_labels is None else train_labels
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_file(x))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_file(y, label_code)))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_file(x[:2]))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_file(np.array([4, 5], np.uint8)))


def test_idx_float_labels_are_refused_naming_the_file(tmp_path):
    mnist(tmp_path, train_labels=np.array([3.7, 1, 2, 0], ">f4"), label_code=0x0D)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz \(IDX type float32\): labels must be integers, "
                                        r"got floats \(e.g. 3.7\)$"):
        load("mnist", tmp_path)
    mnist(tmp_path, train_labels=np.array([3, 1, 2, 0], ">f8"), label_code=0x0E)  # integral floats too
    with pytest.raises(DataError, match=r"\(IDX type float64\): labels must be integers, got floats \(e.g. 3\)$"):
        load("mnist", tmp_path)


def test_idx_labels_out_of_range_and_images_without_pixels(tmp_path):
    mnist(tmp_path, train_labels=np.array([0, 10, 2, 3], np.uint8))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz \(IDX type uint8\): labels must lie in "
                                        r"\[0, 9\], found 0\.\.10"):
        load("mnist", tmp_path)
    mnist(tmp_path, train_images=np.zeros((4, 28, 0), np.uint8))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: holds no pixels: its header gives 4 images of "
                                        r"28x0$"):
        load("mnist", tmp_path)


# ----------------------------------------------------------------------------- npz


def npz(tmp_path, **arrays):
    x = RNG.integers(0, 256, (6, 4, 4), dtype=np.uint8)
    base = dict(x_train=x, y_train=np.array([0, 1, 0, 1, 0, 1]), x_test=x[:2], y_test=np.array([1, 0]))
    np.savez(tmp_path / "set.npz", **{**base, **arrays})
    return tmp_path / "set.npz"


@pytest.mark.parametrize("arrays,expected", [
    (dict(x_train=np.zeros((0, 4, 4), np.uint8), y_train=np.zeros(0, int), x_test=np.zeros((0, 4, 4), np.uint8),
          y_test=np.zeros(0, int)), r"'x_train' holds no images \(shape \(0, 4, 4, 1\)\)"),
    (dict(x_train=np.zeros((6, 0, 4), np.uint8)), r"'x_train' holds no images \(shape \(6, 0, 4, 1\)\)"),
    (dict(x_val=np.zeros((0, 4, 4), np.uint8), y_val=np.zeros(0, int)), "'x_val' holds no images"),
    (dict(x_test=np.zeros((0, 4, 4), np.uint8), y_test=np.zeros(0, int)), "'x_test' holds no images"),
    (dict(y_train=np.array([0, 1, 0, 1, 0, 1.5])), r"'y_train': labels must be integers, got floats \(e.g. 0\)"),
    (dict(y_train=np.array([0, 1, 0, 1, 0, 2**64 - 1], np.uint64)), "'y_train': labels must lie in"),
    (dict(class_names=np.array([b"ok", b"\xff"])), r"'class_names'\[1\] is not UTF-8 text \(b'\\xff'\)"),
    (dict(class_names=np.array([1, 2])), "'class_names' must be a non-empty array of strings, got int64"),
    (dict(class_names=np.array(["one"])), r"'y_train' \(class_names lists 1 classes\): labels must lie in \[0, 0\]"),
])
def test_npz_archives_that_hold_the_wrong_things(tmp_path, arrays, expected):
    path = npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=str(path).replace(".", r"\.") + ".*" + expected):
        load("npz", path)


def test_every_prepared_split_must_hold_an_example(tmp_path):
    from cnncli.data.dataset import SourceData

    x = RNG.integers(0, 256, (6, 4, 4, 1), dtype=np.uint8)
    y = np.arange(6) % 2
    src = SourceData((x, y), (x[:0], y[:0]), (x[:2], y[:2]), ["a", "b"], path="/data/x.npz")
    with pytest.raises(DataError, match=r"^npz \(/data/x.npz\): the val split is empty"):
        prepare_dataset(DataConfig(source="npz"), src)


def test_train_refuses_an_empty_validation_split_without_a_run_directory(tmp_path):
    path = npz(tmp_path, x_val=np.zeros((0, 4, 4), np.uint8), y_val=np.zeros(0, int))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{name: resnet20, width: 0.25}}\ndata: {{source: npz, path: {path}, image_size: 8}}\n"
                   f"train: {{steps: 2, batch_size: 2}}\noutput: {{root: {tmp_path / 'runs'}, tensorboard: false}}\n")
    res = CliRunner().invoke(app, ["train", str(cfg), "--name", "r", "--no-cache"])
    assert res.exit_code == 2, res.output
    assert res.stderr.strip().splitlines() == [f"error: {path}: 'x_val' holds no images (shape (0, 4, 4, 1)); every "
                                               "split needs at least one"]
    assert not (tmp_path / "runs").exists()
