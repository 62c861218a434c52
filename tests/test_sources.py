"""Each in-memory source read from small files written here in the real on-disk format."""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from cnncli.config import DataConfig
from cnncli.data.cifar import CIFAR10_NAMES
from cnncli.data.pipeline import prepare_dataset
from cnncli.data.sources import load_source
from cnncli.errors import DataError

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- the table


def test_the_table_names_every_source_once_and_the_config_offers_exactly_those():
    import dataclasses
    import importlib

    from cnncli.data.catalog import SOURCE_NAMES, SOURCES

    choices = {f.name: f for f in dataclasses.fields(DataConfig)}["source"].metadata["choices"]
    assert tuple(choices) == SOURCE_NAMES == tuple(SOURCES)
    assert SOURCE_NAMES == ("digits", "mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100", "folder", "npz", "packed",
                            "synthetic")
    for spec in SOURCES.values():
        module, _, function = spec.loader.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), spec.loader
        # a file-backed source needs a default size, except a pack, whose manifest holds the size it was packed for
        assert not spec.file_backed or spec.default_size or spec.name == "packed", \
            f"{spec.name}: file-backed sources need a default size"


def test_the_config_module_imports_no_heavy_library():
    import subprocess
    import sys

    probe = "import sys, cnncli.config; print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'jax'}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_an_unknown_source_is_a_data_error_naming_the_known_ones():
    from cnncli.data.catalog import expected_shape

    with pytest.raises(DataError, match=r"unknown data source 'svhn': expected one of digits, mnist, .*synthetic"):
        load_source(DataConfig(source="svhn"))
    with pytest.raises(DataError, match="unknown data source 'svhn'"):
        expected_shape(DataConfig(source="svhn"))


# ----------------------------------------------------------------------------- IDX


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: 0, 0, type 0x08, ndim, big-endian dims, values."""
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist(directory, n_train=7, n_test=5, compress=False, dotted=False):
    directory.mkdir(parents=True, exist_ok=True)
    data = {"train": (RNG.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), RNG.integers(0, 10, n_train, np.uint8)),
            "t10k": (RNG.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), RNG.integers(0, 10, n_test, np.uint8))}
    for prefix, (x, y) in data.items():
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            name = f"{prefix}-{kind}-ubyte"
            if dotted:
                name = name.replace("-idx", ".idx")
            blob = idx_bytes(arr)
            if compress:
                (directory / (name + ".gz")).write_bytes(gzip.compress(blob))
            else:
                (directory / name).write_bytes(blob)
    return data


@pytest.mark.parametrize("source,compress,dotted", [("mnist", False, False), ("fashion_mnist", True, False),
                                                    ("kmnist", True, True)])
def test_idx_round_trip(tmp_path, source, compress, dotted):
    data = write_mnist(tmp_path / source, compress=compress, dotted=dotted)
    src = load_source(DataConfig(source=source, path=str(tmp_path / source)))
    assert src.train[0].shape == (7, 28, 28, 1) and src.train[0].dtype == np.uint8
    assert np.array_equal(src.train[0][..., 0], data["train"][0])
    assert np.array_equal(src.train[1], data["train"][1]) and src.train[1].dtype == np.int32
    assert np.array_equal(src.test[0][..., 0], data["t10k"][0])
    assert np.array_equal(src.test[1], data["t10k"][1])
    assert src.val is None and len(src.class_names) == 10
    if source == "fashion_mnist":
        assert src.class_names[0] == "T-shirt/top" and src.class_names[9] == "Ankle boot"
    if source == "mnist":
        assert src.class_names == [str(i) for i in range(10)]


def test_idx_found_through_cnn_data_dir(tmp_path, monkeypatch):
    data = write_mnist(tmp_path / "mnist")
    monkeypatch.setenv("CNN_DATA_DIR", str(tmp_path))
    d = prepare_dataset(DataConfig(source="mnist", val_fraction=0.3))
    assert d.sizes() == {"train": 5, "val": 2, "test": 5}  # val held out of the 7 training images
    assert np.array_equal(d.x_test[..., 0], data["t10k"][0])
    held = d.split_info["val_indices"]
    assert np.array_equal(d.x_val[..., 0], data["train"][0][held])
    assert d.image_shape == (28, 28, 1) and d.path == str(tmp_path / "mnist")


def test_missing_dataset_names_directory_files_and_how(tmp_path, monkeypatch):
    monkeypatch.delenv("CNN_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="set data.path.*CNN_DATA_DIR.*train-images-idx3-ubyte"):
        load_source(DataConfig(source="mnist"))
    write_mnist(tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as err:
        load_source(DataConfig(source="mnist", path=str(tmp_path / "m")))
    msg = str(err.value)
    assert str(tmp_path / "m") in msg and "missing: t10k-labels-idx1-ubyte" in msg and "MNIST site" in msg
    monkeypatch.setenv("CNN_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match=r"cifar10: dataset not found in .*cifar10: expected data_batch_1.bin"):
        load_source(DataConfig(source="cifar10"))


def test_idx_corrupt_files_are_named(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="train-images-idx3-ubyte: the IDX header promises shape"):
        load_source(DataConfig(source="mnist", path=str(tmp_path)))
    path.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(DataError, match="not an IDX file"):
        load_source(DataConfig(source="mnist", path=str(tmp_path)))


def idx_header(type_code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, type_code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize("type_code,itemsize,dims,payload", [
    (0x08, 1, (65536, 65536, 65536, 65536), b""),  # 2**64 values: wraps to 0 in int64, matching an empty body
    (0x0E, 8, (2**32 - 1, 2**32 - 1, 2**32 - 1), b"\x00" * 8),  # ~2**99 bytes
    (0x0C, 4, (60000, 28, 28), b"\x01" * 12),
])
def test_idx_dimensions_that_overflow_the_byte_count_are_refused_with_the_real_numbers(
        tmp_path, type_code, itemsize, dims, payload):
    from cnncli.data.idx import read_idx

    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_header(type_code, dims) + payload)
    promised = itemsize
    for d in dims:  # the byte count in exact integer arithmetic, independent of the reader
        promised *= d
    with pytest.raises(DataError) as err:
        read_idx(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert f"shape {dims} ({promised} bytes)" in msg and f"holds {len(payload)} bytes" in msg


def test_idx_truncated_header_names_the_sizes(tmp_path):
    from cnncli.data.idx import read_idx

    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 0x08, 3]) + b"\x00" * 5)
    with pytest.raises(DataError, match=r"3 dimensions need a 16-byte header, the file holds 9 bytes"):
        read_idx(path)


# ----------------------------------------------------------------------------- CIFAR binary


def cifar_records(n, label_bytes, num_labels):
    """n raw records and, independently, the images they encode: byte 1 + c*1024 + y*32 + x is pixel (y, x, c)."""
    labels = RNG.integers(0, num_labels, (n, label_bytes), dtype=np.uint8)
    pixels = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
    images = np.zeros((n, 32, 32, 3), np.uint8)
    for i in range(n):
        for c in range(3):
            for y in range(32):
                images[i, y, :, c] = pixels[i, c * 1024 + y * 32 : c * 1024 + y * 32 + 32]
    return np.concatenate([labels, pixels], axis=1).tobytes(), images, labels


def test_cifar10_binary(tmp_path):
    root = tmp_path / "cifar-10-batches-bin"  # data.path may name the archive's parent folder
    root.mkdir()
    images, labels = [], []
    for i in range(1, 6):
        blob, x, y = cifar_records(2, 1, 10)
        (root / f"data_batch_{i}.bin").write_bytes(blob)
        images.append(x)
        labels.append(y[:, 0])
    blob, x_test, y_test = cifar_records(3, 1, 10)
    (root / "test_batch.bin").write_bytes(blob)
    (root / "batches.meta.txt").write_text("\n".join(n.upper() for n in CIFAR10_NAMES) + "\n\n")
    src = load_source(DataConfig(source="cifar10", path=str(tmp_path)))
    assert np.array_equal(src.train[0], np.concatenate(images)) and src.train[0].shape == (10, 32, 32, 3)
    assert src.train[1].tolist() == np.concatenate(labels).tolist()
    assert np.array_equal(src.test[0], x_test) and src.test[1].tolist() == y_test[:, 0].tolist()
    assert src.class_names[0] == "AIRPLANE" and len(src.class_names) == 10
    assert src.path == str(root)
    (root / "test_batch.bin").write_bytes(blob[:-1])
    with pytest.raises(DataError, match="test_batch.bin: 9218 bytes is not a whole number of 3073-byte"):
        load_source(DataConfig(source="cifar10", path=str(root)))


def test_cifar100_binary_fine_and_coarse(tmp_path):
    blob, x, y = cifar_records(4, 2, 20)  # labels < 20 are valid as both coarse and fine
    (tmp_path / "train.bin").write_bytes(blob)
    blob_t, x_t, y_t = cifar_records(2, 2, 20)
    (tmp_path / "test.bin").write_bytes(blob_t)
    (tmp_path / "fine_label_names.txt").write_text("\n".join(f"fine{i}" for i in range(100)))
    (tmp_path / "coarse_label_names.txt").write_text("\n".join(f"coarse{i}" for i in range(20)))
    fine = load_source(DataConfig(source="cifar100", path=str(tmp_path)))
    assert np.array_equal(fine.train[0], x) and fine.train[1].tolist() == y[:, 1].tolist()
    assert fine.test[1].tolist() == y_t[:, 1].tolist() and fine.class_names[5] == "fine5"
    coarse = load_source(DataConfig(source="cifar100", path=str(tmp_path), label="coarse"))
    assert coarse.train[1].tolist() == y[:, 0].tolist() and len(coarse.class_names) == 20
    assert coarse.class_names[19] == "coarse19"


# ----------------------------------------------------------------------------- CIFAR Python (pickles)


def py2_str(b: bytes) -> bytes:
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)


def py2_int(v: int) -> bytes:
    return b"K" + bytes([v]) if v < 256 else b"J" + struct.pack("<i", v)


def py2_pickle(data: np.ndarray, labels: list[int], label_key: bytes) -> bytes:
    """A dict pickled the way the original (Python 2) CIFAR files are: str keys, numpy.core array, raw str."""
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + py2_int(0) + b"\x85" + py2_str(b"b")
             + b"\x87R(" + py2_int(1) + b"(" + b"".join(py2_int(d) for d in data.shape) + b"t"
             + b"cnumpy\ndtype\n" + py2_str(b"u1") + py2_int(0) + py2_int(1) + b"\x87R"
             + b"(" + py2_int(3) + py2_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff" + py2_int(0) + b"tb"
             + b"\x89" + py2_str(data.tobytes()) + b"tb")
    items = b"".join(py2_int(v) for v in labels)
    return (b"\x80\x02}(" + py2_str(b"batch_label") + py2_str(b"training batch") + py2_str(b"data") + array
            + py2_str(label_key) + b"](" + items + b"eu.")


def test_cifar10_python_distribution(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rows, labels = [], []
    for i in range(1, 6):
        x = RNG.integers(0, 256, (2, 3072), dtype=np.uint8)
        y = RNG.integers(0, 10, 2).tolist()
        if i == 1:  # the original Python 2 encoding
            (root / "data_batch_1").write_bytes(py2_pickle(x, y, b"labels"))
        else:  # as numpy would write it today (bytes keys, protocol 2 and 4)
            (root / f"data_batch_{i}").write_bytes(pickle.dumps({b"data": x, b"labels": y}, protocol=2 + i % 3))
        rows.append(x)
        labels += y
    x_test = RNG.integers(0, 256, (3, 3072), dtype=np.uint8)
    (root / "test_batch").write_bytes(pickle.dumps({"data": x_test, "labels": np.array([1, 2, 3])}))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [n.encode() for n in CIFAR10_NAMES],
                                                      b"num_vis": 3072}, protocol=2))
    src = load_source(DataConfig(source="cifar10", path=str(tmp_path)))
    x = np.concatenate(rows)
    assert src.train[1].tolist() == labels
    # row r: red plane (1024 bytes, row-major), then green, then blue
    assert src.train[0][3, 5, 7, 0] == x[3, 5 * 32 + 7] and src.train[0][3, 5, 7, 2] == x[3, 2048 + 5 * 32 + 7]
    assert np.array_equal(src.train[0], x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert src.test[1].tolist() == [1, 2, 3] and src.class_names == CIFAR10_NAMES
    assert "python" in src.description


def test_cifar100_python_distribution(tmp_path):
    x = RNG.integers(0, 256, (4, 3072), dtype=np.uint8)
    for name, rows in (("train", x), ("test", x[:2])):
        (tmp_path / name).write_bytes(pickle.dumps({"data": rows, "fine_labels": [99, 0, 5, 7][: len(rows)],
                                                    "coarse_labels": [19, 0, 1, 2][: len(rows)]}))
    (tmp_path / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"f{i}" for i in range(100)],
                                                  "coarse_label_names": [f"c{i}" for i in range(20)]}))
    src = load_source(DataConfig(source="cifar100", path=str(tmp_path)))
    assert src.train[1].tolist() == [99, 0, 5, 7] and src.class_names[99] == "f99"
    coarse = load_source(DataConfig(source="cifar100", path=str(tmp_path), label="coarse"))
    assert coarse.train[1].tolist() == [19, 0, 1, 2] and coarse.test[1].tolist() == [19, 0]
    assert coarse.class_names[19] == "c19"


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_tampered_pickle_is_refused_never_executed(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    ok = pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0]})
    for name in [f"data_batch_{i}" for i in range(2, 6)] + ["test_batch"]:
        (root / name).write_bytes(ok)
    marker = tmp_path / "executed"
    (root / "data_batch_1").write_bytes(pickle.dumps({"data": _RunsACommand(marker), "labels": [0]}))
    with pytest.raises(DataError) as err:
        load_source(DataConfig(source="cifar10", path=str(tmp_path)))
    assert not marker.exists()
    msg = str(err.value)
    assert "data_batch_1: refused to unpickle" in msg and "system" in msg
    # object arrays would smuggle arbitrary objects the same way
    (root / "data_batch_1").write_bytes(pickle.dumps({"data": np.array([1, "x"], dtype=object), "labels": [0]}))
    with pytest.raises(DataError, match="refused to unpickle: the file references numpy object arrays"):
        load_source(DataConfig(source="cifar10", path=str(tmp_path)))


# ----------------------------------------------------------------------------- npz


def test_npz_grayscale_hw_with_validation_split(tmp_path):
    x_train = RNG.integers(0, 256, (6, 5, 4), dtype=np.uint8)  # [N, H, W]: one channel
    arrays = dict(x_train=x_train, y_train=np.array([0, 1, 2, 0, 1, 2]), x_test=x_train[:2],
                  y_test=np.array([2, 2]), x_val=x_train[3:], y_val=np.array([1, 1, 0]),
                  class_names=np.array(["cat", "dog", "owl"]))
    np.savez(tmp_path / "set.npz", **arrays)
    d = prepare_dataset(DataConfig(source="npz", path=str(tmp_path)))  # a directory with one .npz
    assert d.image_shape == (5, 4, 1) and d.class_names == ["cat", "dog", "owl"]
    assert np.array_equal(d.x_train[..., 0], x_train) and d.y_train.tolist() == [0, 1, 2, 0, 1, 2]
    assert np.array_equal(d.x_val[..., 0], x_train[3:]) and d.sizes() == {"train": 6, "val": 3, "test": 2}
    assert "val_indices" not in d.split_info
    assert d.class_counts("train") == [2, 2, 2]
    assert np.allclose(d.mean, [x_train.mean() / 255]) and np.allclose(d.std, [(x_train / 255).std()])


def test_npz_rgb_default_names_and_bad_input(tmp_path):
    x = RNG.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    path = tmp_path / "rgb.npz"
    np.savez(path, x_train=x, y_train=np.arange(10) % 4, x_test=x[:3], y_test=np.array([0, 3, 1]))
    src = load_source(DataConfig(source="npz", path=str(path)))
    assert src.class_names == ["0", "1", "2", "3"] and np.array_equal(src.train[0], x)
    np.savez(path, x_train=x.astype(np.float32) / 255, y_train=np.zeros(10), x_test=x, y_test=np.zeros(3))
    with pytest.raises(DataError, match="'x_train' must hold uint8 pixels 0..255, got float32"):
        load_source(DataConfig(source="npz", path=str(path)))
    np.savez(path, x_train=x, y_train=np.zeros(10, int), x_test=x[:3], y_test=np.array([0, 0, 5]),
             class_names=np.array(["a", "b"]))
    with pytest.raises(DataError, match=r"rgb.npz 'y_test' \(class_names lists 2 classes\): labels must lie in "
                                        r"\[0, 1\], found 0..5"):
        prepare_dataset(DataConfig(source="npz", path=str(path)))
    np.savez(path, x_train=x, y_train=np.zeros(10, int))
    with pytest.raises(DataError, match="missing arrays x_test, y_test"):
        load_source(DataConfig(source="npz", path=str(path)))


def _sklearn_digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None], bunch.target.astype(np.int32)


def test_digits_are_read_without_importing_sklearn_and_equal_its_loader(tmp_path):
    import subprocess
    import sys

    probe = ("import sys, numpy as np; from cnncli.data.sources import load_digits; d = load_digits(); "
             "np.savez(sys.argv[1], x=d.train[0], y=d.train[1]); print('sklearn' in sys.modules, 'scipy' in sys.modules)")
    out = str(tmp_path / "digits.npz")
    proc = subprocess.run([sys.executable, "-c", probe, out], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False", "False"]
    with np.load(out) as got:
        x, y = _sklearn_digits()
        assert got["x"].dtype == np.uint8 and got["x"].shape == (1797, 8, 8, 1)
        assert np.array_equal(got["x"], x) and np.array_equal(got["y"], y)


def test_digits_fall_back_to_sklearn_where_its_file_is_elsewhere(monkeypatch):
    import importlib.util

    from cnncli.data import sources

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    d = sources.load_digits()
    x, y = _sklearn_digits()
    assert np.array_equal(d.train[0], x) and np.array_equal(d.train[1], y) and d.class_names == [str(i) for i in range(10)]
