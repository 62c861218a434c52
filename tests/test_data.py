import numpy as np
import pytest

from cnncli.config import DataConfig
from cnncli.data.pipeline import TrainIndexStream, channel_stats, eval_index_batches, prepare_dataset


def test_digits_split_is_deterministic_disjoint_and_complete():
    a = prepare_dataset(DataConfig(source="digits"))
    b = prepare_dataset(DataConfig(source="digits"))
    info = a.split_info
    tr, va, te = (set(info[k]) for k in ("train_indices", "val_indices", "test_indices"))
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert len(tr | va | te) == 1797
    assert (len(te), len(va), len(tr)) == (359, 144, 1294)  # 20% test, then 10% of the rest for val
    assert a.split_info == b.split_info
    assert np.array_equal(a.x_test, b.x_test)
    other = prepare_dataset(DataConfig(source="digits", split_seed=1))
    assert other.split_info["test_indices"] != info["test_indices"]


def test_digits_images_resized_grayscale():
    d = prepare_dataset(DataConfig(source="digits"))
    assert d.image_shape == (32, 32, 1) and d.x_train.dtype == np.uint8
    assert d.class_names == [str(i) for i in range(10)]
    assert d.num_classes == 10
    rgb = prepare_dataset(DataConfig(source="digits", image_size=8, channels=3))
    assert rgb.image_shape == (8, 8, 3)
    assert np.array_equal(rgb.x_train[..., 0], rgb.x_train[..., 2])


def test_channel_stats_against_numpy():
    x = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    mean, std = channel_stats(x)
    f = x.astype(np.float64) / 255
    assert np.allclose(mean, f.mean(axis=(0, 1, 2))) and np.allclose(std, f.std(axis=(0, 1, 2)))


def test_train_stream_is_a_function_of_seed_and_step():
    s1, s2 = TrainIndexStream(100, 32, seed=7), TrainIndexStream(100, 32, seed=7)
    assert s1.steps_per_epoch == 3
    seq = [s1.batch(i).tolist() for i in range(7)]
    assert [s2.batch(i).tolist() for i in reversed(range(7))][::-1] == seq  # random access, same batches
    epoch0 = sum(seq[:3], [])
    assert len(set(epoch0)) == 96  # no repeats within an epoch
    assert seq[3] != seq[0]  # a new permutation each epoch


def test_train_batches_view_is_a_lazy_picklable_sequence():
    import pickle

    stream = TrainIndexStream(100, 32, seed=7)
    view = pickle.loads(pickle.dumps(stream.batches(2, 7)))
    assert len(view) == 5
    assert [view[i].tolist() for i in range(5)] == [stream.batch(s).tolist() for s in range(2, 7)]
    assert view[-1].tolist() == stream.batch(6).tolist()
    with pytest.raises(IndexError):
        view[5]


def test_eval_batches_cover_every_example_once():
    batches = eval_index_batches(10, 4)
    idx = np.concatenate([i[m] for i, m in batches])
    assert idx.tolist() == list(range(10))
    assert [int(m.sum()) for _, m in batches] == [4, 4, 2]
    assert all(len(i) == 4 for i, _ in batches)


def test_expected_shape_matches_the_prepared_data():
    from cnncli.data.sources import expected_shape

    for cfg in (DataConfig(source="digits"), DataConfig(source="digits", image_size=12, channels=3),
                DataConfig(source="synthetic", image_size=20, channels=1, num_classes=4, num_train=64, num_test=16)):
        d = prepare_dataset(cfg)
        assert expected_shape(cfg) == (d.image_shape[0], d.image_shape[2], d.num_classes)
    assert expected_shape(DataConfig(source="cifar100", label="coarse")) == (32, 3, 20)
    assert expected_shape(DataConfig(source="folder")) == (224, 3, None)
