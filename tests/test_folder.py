"""The file-backed `folder` source: scanning an ImageFolder tree, decoding, and the Grain batch loader."""

import numpy as np
import pytest
from PIL import Image

from cnncli.config import DataConfig
from cnncli.data.files import FileBatchLoader, decode_image, read_image
from cnncli.data.pipeline import TrainIndexStream, prepare_dataset
from cnncli.data.sources import load_source
from cnncli.errors import DataError

RNG = np.random.default_rng(1)


def save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return array


@pytest.fixture
def tree(tmp_path):
    """train/{cat,dog} and val/{cat,dog}: RGB PNG and JPEG, a grayscale PNG, and a stray text file."""
    root = tmp_path / "pets"
    px = {
        "train/cat/a.png": save(root / "train/cat/a.png", RNG.integers(0, 256, (8, 12, 3), dtype=np.uint8)),
        "train/cat/g.png": save(root / "train/cat/g.png", RNG.integers(0, 256, (10, 8), dtype=np.uint8)),
        "train/cat/j.jpg": save(root / "train/cat/j.jpg", np.full((16, 16, 3), (200, 40, 90), np.uint8)),
        "train/dog/b.png": save(root / "train/dog/b.png", RNG.integers(0, 256, (9, 9, 3), dtype=np.uint8)),
        "train/dog/c.PNG": save(root / "train/dog/c.PNG", RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)),
        "train/dog/d.bmp": save(root / "train/dog/d.bmp", RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)),
        "val/cat/v.png": save(root / "val/cat/v.png", RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)),
        "val/dog/w.png": save(root / "val/dog/w.png", RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)),
    }
    (root / "train/dog/readme.txt").write_text("not an image")
    return root, px


def test_decode_exact_pixels_crop_and_channel_conversion(tree):
    root, px = tree
    rgb = px["train/cat/a.png"]  # 8 high, 12 wide: the shorter side is already 8, the centre crop keeps x 2..9
    assert np.array_equal(decode_image(str(root / "train/cat/a.png"), 8, 3), rgb[:, 2:10])
    gray = px["train/cat/g.png"]  # 10 high, 8 wide: keeps y 1..8, replicated to three channels
    out = decode_image(str(root / "train/cat/g.png"), 8, 3)
    assert out.shape == (8, 8, 3) and all(np.array_equal(out[..., c], gray[1:9]) for c in range(3))
    # RGB -> one channel with ITU-R 601 integer luma, as PIL computes it
    w = rgb.astype(np.int64)
    luma = (w[..., 0] * 19595 + w[..., 1] * 38470 + w[..., 2] * 7471 + 0x8000) >> 16
    assert np.array_equal(decode_image(str(root / "train/cat/a.png"), 8, 1)[..., 0], luma[:, 2:10])
    # resized: a flat JPEG stays flat (within JPEG error), at the requested size
    jpg = decode_image(str(root / "train/cat/j.jpg"), 6, 3)
    assert jpg.shape == (6, 6, 3) and np.abs(jpg.astype(int) - [200, 40, 90]).max() <= 6


def test_read_image_keeps_the_size_and_the_file_channels(tree, tmp_path):
    root, px = tree
    rgb, gray = px["train/cat/a.png"], px["train/cat/g.png"]
    assert np.array_equal(read_image(root / "train/cat/a.png"), rgb)  # 8x12 RGB, as saved
    assert np.array_equal(read_image(root / "train/cat/g.png"), gray[..., None])  # grayscale: one channel
    assert np.array_equal(read_image(root / "train/cat/g.png", 3), np.repeat(gray[..., None], 3, axis=-1))
    deep = RNG.integers(0, 65536, (5, 7), dtype=np.uint16)
    save(tmp_path / "deep.png", deep)
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    assert np.array_equal(read_image(tmp_path / "deep.png"), (deep >> 8).astype(np.uint8)[..., None])
    rgba = RNG.integers(0, 256, (4, 4, 4), dtype=np.uint8)
    save(tmp_path / "rgba.png", rgba, "RGBA")
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgba[..., :3])
    # at its own square size, the loader's decoding is the same pixels
    assert np.array_equal(decode_image(str(root / "train/dog/c.PNG"), 8, 3), read_image(root / "train/dog/c.PNG"))
    with pytest.raises(DataError, match=r"^image file not found: .*nothing.png$"):
        read_image(tmp_path / "nothing.png")
    with pytest.raises(DataError, match=r"is a directory, not a regular file"):
        read_image(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"broken.png: cannot read the image \(cannot identify image file"):
        read_image(tmp_path / "broken.png")


def test_folder_source_scans_classes_and_notes(tree):
    root, _ = tree
    src = load_source(DataConfig(source="folder", path=str(root)))
    assert src.file_backed and src.class_names == ["cat", "dog"]
    paths, labels = src.train
    names = [p[len(str(root)) + 1 :] for p in paths.tolist()]
    assert names == ["train/cat/a.png", "train/cat/g.png", "train/cat/j.jpg", "train/dog/b.png", "train/dog/c.PNG",
                     "train/dog/d.bmp"]
    assert labels.tolist() == [0, 0, 0, 1, 1, 1] and src.val[1].tolist() == [0, 1] and src.test is None
    notes = " | ".join(src.notes)
    assert "1 .txt" in notes and "L: 1" in notes and "RGB: 7" in notes


def test_prepare_folder_is_file_backed_with_decoded_stats(tree):
    root, _ = tree
    d = prepare_dataset(DataConfig(source="folder", path=str(root), image_size=8, test_fraction=0.34))
    assert d.file_backed and d.image_shape == (8, 8, 3) and d.x_train.ndim == 1
    assert d.sizes() == {"train": 4, "val": 2, "test": 2}  # test held out of the 6 training files
    assert sorted(d.x_train.tolist() + d.x_test.tolist()) == sorted(load_source(
        DataConfig(source="folder", path=str(root))).train[0].tolist())
    decoded = np.stack([decode_image(p, 8, 3) for p in d.x_train]).reshape(-1, 3) / 255.0
    assert np.allclose(d.mean, decoded.mean(axis=0)) and np.allclose(d.std, decoded.std(axis=0))
    assert d.stats_from == "train"
    default = prepare_dataset(DataConfig(source="folder", path=str(root), channels=1, mean=[0.5], std=[0.25]))
    assert default.image_shape == (224, 224, 1) and default.stats_from == "config"
    assert default.mean == [0.5] and default.std == [0.25]


def test_loader_yields_batches_in_order(tree):
    root, _ = tree
    d = prepare_dataset(DataConfig(source="folder", path=str(root), image_size=8, test_fraction=0.34))
    stream = TrainIndexStream(len(d.y_train), 2, seed=5)
    loader = FileBatchLoader(d.x_train, d.y_train, image_size=8, channels=3)
    got = list(loader.iterate(stream.batches(0, 5)))
    assert len(got) == 5
    for step, (images, labels) in enumerate(got):
        idx = stream.batch(step)
        assert images.dtype == np.uint8 and images.shape == (2, 8, 8, 3) and labels.dtype == np.int32
        assert np.array_equal(images, np.stack([decode_image(d.x_train[i], 8, 3) for i in idx]))
        assert labels.tolist() == d.y_train[idx].tolist()
    # a plain generator gives the same batches
    again = list(loader.iterate(stream.batch(s) for s in range(5)))
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(got, again))


@pytest.mark.slow
def test_loader_with_two_workers_matches_in_process(tree):
    root, _ = tree
    src = load_source(DataConfig(source="folder", path=str(root)))
    paths, labels = src.train
    stream = TrainIndexStream(len(paths), 3, seed=2)

    def run(workers, channels, batches):
        loader = FileBatchLoader(paths, labels, image_size=6, channels=channels, num_workers=workers)
        return list(loader.iterate(batches))

    # the workers read the lazy sequence of batches themselves and their outputs are interleaved back in order
    inline, workers = run(0, 1, stream.batches(0, 7)), run(2, 1, stream.batches(0, 7))
    assert len(inline) == len(workers) == 7 and inline[0][0].shape == (3, 6, 6, 1)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(inline, workers))


def test_corrupt_file_named_or_skipped_and_counted(tree):
    root, _ = tree
    (root / "train/dog/broken.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg")
    with pytest.raises(DataError, match=r"train/dog/broken.jpg: cannot open image .*data.skip_corrupt: true"):
        load_source(DataConfig(source="folder", path=str(root)))
    src = load_source(DataConfig(source="folder", path=str(root), skip_corrupt=True))
    assert len(src.train[0]) == 6 and not any("broken" in p for p in src.train[0])
    assert any(n.startswith("skipped 1 unreadable image") and "broken.jpg" in n for n in src.notes)


def test_truncated_image_fails_at_decode_time(tree, tmp_path):
    root, _ = tree
    whole = (root / "train/dog/b.png").read_bytes()
    (root / "train/dog/b.png").write_bytes(whole[: len(whole) // 2])  # the header still reads
    src = load_source(DataConfig(source="folder", path=str(root)))
    paths, labels = src.train
    bad = [i for i, p in enumerate(paths) if p.endswith("b.png")][0]
    loader = FileBatchLoader(paths, labels, image_size=8, channels=3)
    with pytest.raises(DataError, match=r"train/dog/b.png: cannot read the image \(image file is truncated"
                                        r".*data.skip_corrupt: true"):
        list(loader.iterate([np.array([0, bad])]))
    skipping = FileBatchLoader(paths, labels, image_size=8, channels=3, skip_corrupt=True)
    images, got = next(iter(skipping.iterate([np.array([bad, 0])])))
    assert images[0].max() == 0 and images[1].max() > 0 and got.tolist() == [1, 0]
    assert skipping.corrupt_files == [str(root / "train/dog/b.png")]


def test_tree_errors(tree):
    root, _ = tree
    (root / "val/owl").mkdir()
    with pytest.raises(DataError, match=r"class folder .*val/owl has no images"):
        load_source(DataConfig(source="folder", path=str(root)))
    save(root / "val/owl/o.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"the classes of .*val differ from those of .*train; not in train: owl"):
        load_source(DataConfig(source="folder", path=str(root)))
    with pytest.raises(DataError, match=r"folder: dataset not found in .*nowhere: expected an ImageFolder tree"):
        load_source(DataConfig(source="folder", path=str(root / "nowhere")))


def test_a_decompression_bomb_warning_is_one_note_not_pils_raw_warning(tree, monkeypatch, recwarn):
    from PIL import Image

    root, _ = tree
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 150)  # the 16x16 JPEG (256) is past it, below twice it
    src = load_source(DataConfig(source="folder", path=str(root)))
    big = [n for n in src.notes if "decompression-bomb" in n]
    assert len(big) == 1 and big[0].startswith("1 image(s) exceed PIL's decompression-bomb limit of 150 pixels")
    assert big[0].endswith("j.jpg")
    decode_image(str(root / "train/cat/j.jpg"), 8, 3)  # decoding it warns no more either
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_a_fifo_in_a_class_folder_is_counted_and_never_opened(tree):
    import os

    root, _ = tree
    os.mkfifo(root / "train/cat/pipe.png")  # opening it for reading would wait for a writer forever
    (root / "train/dog/dangling.png").symlink_to(root / "nowhere.png")
    src = load_source(DataConfig(source="folder", path=str(root)))
    assert len(src.train[0]) == 6
    assert "2 (not a regular file)" in " | ".join(src.notes)
    # a FIFO put in place of a listed image after the scan is refused at decode time, at once
    os.replace(root / "train/cat/pipe.png", root / "train/cat/a.png")
    with pytest.raises(DataError, match=r"a\.png is a FIFO \(named pipe\), not a regular file"):
        decode_image(str(root / "train/cat/a.png"), 8, 3)
