"""Packs: `cnn data pack` writes a dataset once into ArrayRecord files; `data.source: packed` reads it."""

import json
import os
import re
import shutil
import socket
import time
import zlib

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.config import DataConfig
from cnncli.data import pack as pack_module
from cnncli.data.files import decode_image
from cnncli.data.pack import pack_dataset
from cnncli.data.packed import PackedBatchLoader, open_pack
from cnncli.data.pipeline import host_loader, prepare_dataset
from cnncli.errors import DataError

RNG = np.random.default_rng(3)


def digits_folder(root, per_split=96, size=16, train_only=False):
    """scikit-learn digits written as PNG files: train/val/test/<label>/NNNNN.png."""
    d = prepare_dataset(DataConfig(source="digits", image_size=size))
    for split in ("train",) if train_only else ("train", "val", "test"):
        x, y = d.split(split)
        for i, (img, label) in enumerate(zip(x[:per_split], y[:per_split])):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[..., 0], "L").save(folder / f"{i:05d}.png")
    return root


@pytest.fixture
def photos(tmp_path):
    """An RGB folder of odd-sized images (PNG and JPEG), train and val, two classes."""
    root = tmp_path / "photos"
    for split, n in (("train", 10), ("val", 4)):
        for i in range(n):
            h, w = RNG.integers(20, 40, 2)
            folder = root / split / ("cat" if i % 2 else "dog")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                folder / f"{i}.{'png' if i % 3 else 'jpg'}")
    return root


def folder_cfg(root, **kw):
    return DataConfig(source="folder", path=str(root), **{"image_size": 24, **kw})


def records(store, split):
    loader = PackedBatchLoader(store, split)
    n = store.manifest["splits"][split]["count"]
    return next(iter(loader.iterate([np.arange(n)])))


def test_pack_stores_centre_squares_split_assignment_and_exact_stats(photos, tmp_path):
    cfg = folder_cfg(photos)
    manifest = pack_dataset(cfg, tmp_path / "pack", side=32)
    data = prepare_dataset(cfg)
    assert manifest["class_names"] == ["cat", "dog"] and manifest["side"] == 32 and manifest["image_size"] == 24
    assert manifest["split_info"] == data.split_info  # the test split held out of train, seeded, as recorded
    store = open_pack(tmp_path / "pack")
    pixels = {}
    for split in ("train", "val", "test"):
        x, y = records(store, split)
        paths, labels = data.split(split)
        assert np.array_equal(y, labels)
        # raw records are the folder decoder's centre square at the stored side, bit for bit
        assert np.array_equal(x, np.stack([decode_image(p, 32, 3) for p in paths]))
        pixels[split] = x
    flat = pixels["train"].reshape(-1, 3) / 255.0
    assert np.allclose(manifest["mean"], flat.mean(0), atol=1e-12)
    assert np.allclose(manifest["std"], flat.std(0), atol=1e-12)
    packed = prepare_dataset(DataConfig(source="packed", path=str(tmp_path / "pack")))
    assert packed.image_shape == (24, 24, 3) and packed.batch_shape == (32, 32, 3) and packed.file_backed
    assert packed.sizes() == data.sizes() and packed.mean == manifest["mean"]
    assert not list(tmp_path.glob("pack.tmp-*"))  # the staging directory became the pack


def test_an_in_memory_source_packs_as_prepared(tmp_path):
    cfg = DataConfig(source="digits", image_size=8)
    manifest = pack_dataset(cfg, tmp_path / "pack", side=256)
    data = prepare_dataset(cfg)
    assert manifest["side"] == 8 and manifest["channels"] == 1  # stored at the prepared size, not --max-side
    store = open_pack(tmp_path / "pack")
    for split in ("train", "val", "test"):
        x, y = records(store, split)
        assert np.array_equal(x, data.split(split)[0]) and np.array_equal(y, data.split(split)[1])
    assert np.allclose(manifest["mean"], data.mean) and np.allclose(manifest["std"], data.std)


def test_jpeg_pack_holds_the_raw_squares_as_pils_jpeg(photos, tmp_path):
    pack_dataset(folder_cfg(photos), tmp_path / "raw", side=32)
    manifest = pack_dataset(folder_cfg(photos), tmp_path / "jpeg", side=32, image_format="jpeg", quality=95)
    assert manifest["image_format"] == "jpeg" and manifest["quality"] == 95
    raw, _ = records(open_pack(tmp_path / "raw"), "train")
    jpeg, _ = records(open_pack(tmp_path / "jpeg"), "train")
    import io

    def roundtrip(img):  # PIL's own JPEG at that quality, independently of the pack
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=95)
        return np.asarray(Image.open(buf))

    assert np.array_equal(jpeg, np.stack([roundtrip(img) for img in raw]))


def test_damage_after_packing_is_found_at_open(photos, tmp_path):
    pack_dataset(folder_cfg(photos), tmp_path / "pack", side=32)
    shard = tmp_path / "pack" / "train-00000.array_record"
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte in the middle of an image
    shard.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"train-00000.array_record fails its checksum .* pack it again$"):
        prepare_dataset(DataConfig(source="packed", path=str(tmp_path / "pack")))
    shard.write_bytes(bytes(blob[:-10]))
    with pytest.raises(DataError, match=r"missing or not the size the manifest records"):
        open_pack(tmp_path / "pack")
    (tmp_path / "pack" / "manifest.json").unlink()
    with pytest.raises(DataError, match=r"is not a pack \(no manifest.json\)"):
        open_pack(tmp_path / "pack")


@pytest.mark.parametrize("mutate, words", [
    (lambda m: m.__setitem__("splits", []), "splits does not hold exactly train, val, test"),
    (lambda m: m["splits"]["train"]["shards"][0].__setitem__("bytes", "196608"), "the train split's entry is not"),
    (lambda m: m["splits"]["val"]["shards"][0].__setitem__("file", "../other/x.array_record"), "the val split's entry"),
    (lambda m: m["splits"]["train"].__setitem__("count", 10 ** 6), "shards do not add up to its count"),
    (lambda m: m.__setitem__("side", "abc"), "side is 'abc', not a size in pixels"),
    (lambda m: m.__setitem__("side", 31), "the first train record of .* is not a 31x31x3 raw image"),
    (lambda m: m.__setitem__("image_format", "jpeg"), "the first train record of .* is not a 32x32x3 jpeg image"),
    (lambda m: m.__setitem__("channels", 5), "channels is 5, not 1 or 3"),
    (lambda m: m.__setitem__("class_names", ["only"]), "train-labels.npy does not hold 8 labels from 0 to 0"),
    (lambda m: m.__setitem__("mean", [0.5]), r"mean is \[0.5\], not 3 finite value"),
    (lambda m: m.__setitem__("std", [0, 0, 0]), "not 3 finite value.* above 0"),
    (lambda m: m.pop("description"), "description is missing"),
    (lambda m: m.__setitem__("version", True), "is not a cnn-pack version 1 manifest"),
])
def test_a_manifest_that_is_not_what_pack_writes_is_refused_in_one_line(photos, tmp_path, mutate, words):
    pack_dataset(folder_cfg(photos), tmp_path / "pack", side=32)
    path = tmp_path / "pack" / "manifest.json"
    m = json.loads(path.read_text())
    mutate(m)
    path.write_text(json.dumps(m))
    with pytest.raises(DataError, match=words) as err:
        prepare_dataset(DataConfig(source="packed", path=str(tmp_path / "pack")))
    assert "\n" not in str(err.value) and str(err.value).startswith("packed: ")


def test_files_that_passed_their_checksum_are_not_read_again_until_they_change(photos, tmp_path, monkeypatch):
    from cnncli.data import packed as packed_module

    monkeypatch.setenv("CNN_CACHE_DIR", str(tmp_path / "cache"))
    pack_dataset(folder_cfg(photos), tmp_path / "pack", side=32)
    read = []
    real_crc = packed_module.file_crc32
    monkeypatch.setattr(packed_module, "file_crc32", lambda path: read.append(path.name) or real_crc(path))
    n_files = len(list((tmp_path / "pack").glob("*.array_record"))) + len(list((tmp_path / "pack").glob("*.npy")))
    # Just written: a change in the same clock tick could hide, so nothing is remembered yet.
    open_pack(tmp_path / "pack")
    open_pack(tmp_path / "pack")
    assert len(read) == 2 * n_files
    assert not list((tmp_path / "cache" / "packs").glob("*.json"))

    monkeypatch.setattr(packed_module, "_CLOCK_SLACK_NS", 20_000_000)
    time.sleep(0.05)
    read.clear()
    open_pack(tmp_path / "pack")
    assert len(read) == n_files
    read.clear()
    open_pack(tmp_path / "pack")
    assert read == []

    # One flipped byte, the modification time put back: the ctime moved, so the file is read again.
    shard = tmp_path / "pack" / "train-00000.array_record"
    st = shard.stat()
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    shard.write_bytes(bytes(blob))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(DataError, match=r"train-00000.array_record fails its checksum"):
        open_pack(tmp_path / "pack")
    assert read == ["train-00000.array_record"]

    # This machine's seal of a pack that is gone is removed when another pack's is written; another
    # machine's (a cache folder shared over NFS) is its own business.
    blob[len(blob) // 2] ^= 0xFF
    shard.write_bytes(bytes(blob))
    shutil.copytree(tmp_path / "pack", tmp_path / "copy")
    shutil.rmtree(tmp_path / "pack")
    (tmp_path / "cache" / "packs" / "other.json").write_text(json.dumps({"host": "elsewhere", "root": "/gone"}))
    time.sleep(0.05)
    open_pack(tmp_path / "copy")
    seals = sorted((s["host"], s["root"]) for s in
                   (json.loads(f.read_text()) for f in (tmp_path / "cache" / "packs").glob("*.json")))
    assert seals == sorted([("elsewhere", "/gone"), (socket.gethostname(), str((tmp_path / "copy").resolve()))])


def test_without_a_writable_cache_every_open_checks_every_file(photos, tmp_path, monkeypatch):
    from cnncli.data import packed as packed_module

    (tmp_path / "cache").write_text("a file where the cache folder would be")
    monkeypatch.setenv("CNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(packed_module, "_CLOCK_SLACK_NS", -10**12)
    pack_dataset(folder_cfg(photos), tmp_path / "pack", side=32)
    read = []
    real_crc = packed_module.file_crc32
    monkeypatch.setattr(packed_module, "file_crc32", lambda path: read.append(path.name) or real_crc(path))
    open_pack(tmp_path / "pack")
    first = len(read)
    open_pack(tmp_path / "pack")
    assert first > 0 and len(read) == 2 * first


def test_an_interrupted_pack_is_never_taken_for_a_pack_and_resumes(photos, tmp_path, monkeypatch):
    monkeypatch.setattr(pack_module, "SHARD_IMAGES", 4)
    monkeypatch.setattr(pack_module, "DECODE_BATCH", 2)
    written = []
    real_encode = pack_module._encode
    monkeypatch.setattr(pack_module, "_encode", lambda im, *a: written.append(1) or real_encode(im, *a))

    def stop_after_two_shards(split, done, total):  # train: 10 files less 2 held out for test = two shards
        if split == "val":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pack_dataset(folder_cfg(photos), tmp_path / "pack", side=32, progress=stop_after_two_shards)
    assert not (tmp_path / "pack").exists()
    staging = list(tmp_path.glob("pack.tmp-*"))
    assert len(staging) == 1 and sorted(p.name for p in staging[0].glob("*.json")) == ["train-00000.json",
                                                                                       "train-00001.json"]
    with pytest.raises(DataError, match=r"pack.tmp-\w+ is an unfinished pack: rerun `cnn data pack`"):
        prepare_dataset(DataConfig(source="packed", path=str(tmp_path / "pack")))
    written.clear()
    manifest = pack_dataset(folder_cfg(photos), tmp_path / "pack", side=32)
    total = sum(s["count"] for s in manifest["splits"].values())
    assert len(written) == total - 8  # the two recorded shards were kept, not written again
    assert [s["file"] for s in manifest["splits"]["train"]["shards"]] == [f"train-{k:05d}.array_record"
                                                                          for k in range(2)]
    fresh = pack_dataset(folder_cfg(photos), tmp_path / "again", side=32)
    for split in ("train", "val", "test"):  # the resumed pack holds what an uninterrupted one does
        assert np.array_equal(records(open_pack(tmp_path / "pack"), split)[0],
                              records(open_pack(tmp_path / "again"), split)[0])
    assert fresh["mean"] == manifest["mean"] and not list(tmp_path.glob("*.tmp-*"))


def test_a_folder_changed_after_an_interrupted_pack_is_packed_afresh(photos, tmp_path, monkeypatch):
    """Files moved between classes before the rerun: the old shards are not mixed with the new listing."""
    monkeypatch.setattr(pack_module, "SHARD_IMAGES", 4)
    monkeypatch.setattr(pack_module, "DECODE_BATCH", 2)

    def stop_at_val(split, done, total):
        if split == "val":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pack_dataset(folder_cfg(photos), tmp_path / "pack", side=32, progress=stop_at_val)
    for f in sorted((photos / "train" / "dog").iterdir())[:3]:
        f.rename(photos / "train" / "cat" / f"moved-{f.name}")
    written = []
    real_encode = pack_module._encode
    monkeypatch.setattr(pack_module, "_encode", lambda im, *a: written.append(1) or real_encode(im, *a))
    manifest = pack_dataset(folder_cfg(photos), tmp_path / "pack", side=32)
    assert len(written) == sum(s["count"] for s in manifest["splits"].values())  # nothing kept
    fresh = pack_dataset(folder_cfg(photos), tmp_path / "again", side=32)
    for split in ("train", "val", "test"):
        assert np.array_equal(open_pack(tmp_path / "pack").labels(split), open_pack(tmp_path / "again").labels(split))
        assert np.array_equal(records(open_pack(tmp_path / "pack"), split)[0],
                              records(open_pack(tmp_path / "again"), split)[0])
    assert fresh["mean"] == manifest["mean"]


def test_pack_refusals_name_the_problem(photos, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(DataError, match=r"taken exists; choose a new output directory"):
        pack_dataset(folder_cfg(photos), tmp_path / "taken")
    (photos / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"broken.png: cannot open image"):
        pack_dataset(folder_cfg(photos), tmp_path / "pack")
    assert not list(tmp_path.glob("pack*"))  # refused before anything was written
    broken = (photos / "train" / "cat" / "broken.png").read_bytes()
    (photos / "train" / "cat" / "broken.png").unlink()
    victim = next(p for p in prepare_dataset(folder_cfg(photos)).split("train")[0] if p.endswith(".png"))
    whole = open(victim, "rb").read()
    open(victim, "wb").write(whole[: len(whole) // 2])  # opens, fails to decode: in the first shard written
    with pytest.raises(DataError, match=re.escape(victim) + r": cannot read the image .*data.skip_corrupt"):
        pack_dataset(folder_cfg(photos), tmp_path / "pack")
    assert not list(tmp_path.glob("pack*"))  # failed in the first shard: nothing to resume, nothing left
    (photos / "train" / "cat" / "broken.png").write_bytes(broken)
    manifest = pack_dataset(folder_cfg(photos, skip_corrupt=True), tmp_path / "pack", side=32)
    assert any("skipped 1 unreadable image" in n for n in manifest["notes"])  # found by the scan
    assert any(n.startswith("left out 1 image(s) that could not be decoded") and n.endswith(victim)
               for n in manifest["notes"])
    stored = sum(s["count"] for s in manifest["splits"].values())
    assert stored == 13  # of 14 readable files: the truncated one is not stored (as black)
    with pytest.raises(DataError, match=r"already packed"):
        pack_dataset(DataConfig(source="packed", path=str(tmp_path / "pack")), tmp_path / "again")


def test_pack_outputs_refused_before_any_work(photos, tmp_path):
    """A dangling link, the dataset's own folder, a stage another packer holds: refused up front (they
    were refused only after the whole pack was written, or, inside the folder, broke the dataset)."""
    import fcntl

    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"dangling exists"):
        pack_dataset(folder_cfg(photos), tmp_path / "dangling", side=32)
    with pytest.raises(DataError, match=r"is inside the dataset it packs"):
        pack_dataset(folder_cfg(photos), photos / "train" / "pk", side=32)
    stage = tmp_path / "pack.tmp-0123456789ab"
    stage.mkdir()
    with open(stage / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DataError, match=r"another `cnn data pack` is writing .*pack.tmp-0123456789ab"):
            pack_dataset(folder_cfg(photos), tmp_path / "pack", side=32)
    assert not (photos / "train" / "pk").exists() and not (tmp_path / "pack").exists()
    assert sorted(p.name for p in tmp_path.glob("pack*")) == ["pack.tmp-0123456789ab"]
    res = CliRunner().invoke(app, ["data", "pack", str(tmp_path / "c.yaml"), "-o", str(tmp_path / "p2"),
                                   "--quality", "50"])
    assert res.exit_code == 2 and "--quality applies to --format jpeg" in res.output, res.output


def test_loader_reads_only_the_rows_asked_for_in_their_order(photos, tmp_path):
    pack_dataset(folder_cfg(photos), tmp_path / "pack", side=32)
    data = prepare_dataset(DataConfig(source="packed", path=str(tmp_path / "pack")))
    every, labels = records(data.packed, "train")
    rows = [np.array([5, 0, 3]), np.array([1, 1])]  # e.g. one process's rows of two global batches
    for workers in (0, 2):
        got = list(host_loader(data, "train", num_workers=workers).iterate(rows))
        for (x, y), idx in zip(got, rows):
            assert np.array_equal(x, every[idx]) and np.array_equal(y, labels[idx])


def test_device_crop_resizes_the_stored_side_to_the_model_input():
    import jax
    import jax.numpy as jnp

    from cnncli.config import AugmentConfig
    from cnncli.data.augment import augment_train, preprocess_eval

    flat = jnp.full((3, 32, 32, 3), 200, jnp.uint8)
    m, s = jnp.zeros(3), jnp.ones(3)
    out = augment_train(jax.random.key(0), flat, AugmentConfig(random_resized_crop=True, flip=True), m, s, 24)
    assert out.shape == (3, 24, 24, 3) and np.allclose(out, 200 / 255, atol=1e-6)
    x = jnp.asarray(RNG.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    # antialiased bilinear halving: a triangle filter two input pixels wide, renormalised at the borders
    centres = (np.arange(16) + 0.5) * 2
    w = np.maximum(0, 1 - np.abs(np.arange(32)[None] + 0.5 - centres[:, None]) / 2)
    w /= w.sum(1, keepdims=True)
    expected = np.einsum("ih,jw,nhwc->nijc", w, w, np.asarray(x, np.float64) / 255)
    assert np.allclose(preprocess_eval(x, m, s, 16), expected, atol=1e-5)
    assert np.array_equal(preprocess_eval(x, m, s, 32), preprocess_eval(x, m, s))  # at its own size: untouched


TRAIN = """\
model: {{name: resnet20, width: 0.25}}
data: {{source: {source}, path: {path}, image_size: 16, channels: 1, num_workers: {workers},
        augment: {{random_crop_padding: 2}}}}
optimizer: {{lr: 0.05}}
train: {{steps: {steps}, batch_size: 32, log_every_steps: 1, eval_every_steps: {every}, seed: 1}}
output: {{tensorboard: false, export: null}}
"""


def train(tmp_path, name, source, path, steps=6, every=3, workers=0):
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(TRAIN.format(source=source, path=path, steps=steps, every=every, workers=workers))
    res = CliRunner().invoke(app, ["train", str(cfg), "--run-dir", str(tmp_path / f"run_{name}")])
    assert res.exit_code == 0, res.output
    run = tmp_path / f"run_{name}"
    return [json.loads(line) for line in (run / "metrics.jsonl").open()], json.loads((run / "results.json").read_text())


@pytest.mark.slow
def test_a_pack_at_the_input_size_trains_exactly_as_its_folder(tmp_path):
    root = digits_folder(tmp_path / "folder")
    train(tmp_path, "folder", "folder", root, workers=2)
    cfg = tmp_path / "folder.yaml"
    res = CliRunner().invoke(app, ["data", "pack", str(cfg), "-o", str(tmp_path / "pack"), "--max-side", "16"])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and "train 96, val 96, test 96 images, 16x16x1 raw" in res.output
    folder_log, folder_results = train(tmp_path, "folder2", "folder", root)
    packed_log, packed_results = train(tmp_path, "packed", "packed", tmp_path / "pack", workers=2)
    key = [(r["step"], r["split"], r["loss"]) for r in folder_log]
    assert key == [(r["step"], r["split"], r["loss"]) for r in packed_log]
    assert folder_results["accuracy"] == packed_results["accuracy"]


@pytest.mark.slow
def test_a_larger_pack_cropped_on_the_device_reaches_the_folders_accuracy(tmp_path):
    root = digits_folder(tmp_path / "folder", per_split=400)  # 10 classes: chance is 0.1
    _, folder = train(tmp_path, "folder", "folder", root, steps=150, every=150)
    res = CliRunner().invoke(app, ["data", "pack", str(tmp_path / "folder.yaml"), "-o", str(tmp_path / "pack"),
                                   "--max-side", "24"])
    assert res.exit_code == 0, res.output
    _, packed = train(tmp_path, "packed", "packed", tmp_path / "pack", steps=150, every=150)
    assert packed["num_examples"] == folder["num_examples"]
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "run_packed"), "--format", "json"])
    assert res.exit_code == 0, res.output  # `cnn eval` reads the pack again through the run's config
    assert abs(json.loads(res.output)["accuracy"] - packed["accuracy"]) < 1e-9
    # The pack must cost no accuracy: it reaches the folder's within noise. Both runs see different
    # augmentation (the pack is cropped from 24 pixels on the device), so at 150 steps either may end
    # ahead: measured 0.77 (folder) and 0.85 (pack) in one run. A pack that lost its labels or
    # split assignment would sit near chance (0.1).
    assert folder["accuracy"] > 0.5, folder
    assert packed["accuracy"] >= folder["accuracy"] - 0.05, (folder, packed)


def test_cli_pack_and_bench(photos, tmp_path):
    cfg = tmp_path / "photos.yaml"
    cfg.write_text(f"data: {{source: folder, path: {photos}, image_size: 24}}\ntrain: {{batch_size: 4}}\n")
    res = CliRunner().invoke(app, ["data", "pack", str(cfg), "-o", str(tmp_path / "pack"), "--max-side", "32",
                                   "--format", "jpeg", "--quality", "80"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "pack" / "manifest.json").read_text())["quality"] == 80
    for bad, message in ((["--format", "png"], "a pack stores raw or jpeg"), ([], "needs -o DIR")):
        res = CliRunner().invoke(app, ["data", "pack", str(cfg), *(bad + ["-o", str(tmp_path / "p2")] if bad else [])])
        assert res.exit_code == 2 and message in res.output and not (tmp_path / "p2").exists()
    packed = tmp_path / "packed.yaml"
    packed.write_text(f"data: {{source: packed, path: {tmp_path / 'pack'}}}\ntrain: {{batch_size: 4}}\n")
    for config in (cfg, packed):
        res = CliRunner().invoke(app, ["data", str(config), "--bench", "--seconds", "0.2", "--workers", "0",
                                       "--format", "json"])
        assert res.exit_code == 0, res.output
        report = json.loads(res.output)
        assert report["workers"] == 0 and report["images_per_second"] > 0 and report["batches"] >= 1
        assert report["batch_shape"] == ([32, 32, 3] if config == packed else [24, 24, 3])
    res = CliRunner().invoke(app, ["data", str(packed), "--format", "jpeg"])
    assert res.exit_code == 2 and "expected table or json" in res.output
