"""experiments.data: IDX parsing, source selection, TFDS (mock data), scaling and batching."""

import gzip
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments import data


def _write_idx(path, array, *, compress):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as handle:
        handle.write(header + array.tobytes())


def _fake_mnist_dir(directory, *, train=12, test=5, compress=True):
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    arrays = {}
    for prefix, count in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count).astype(np.uint8)
        _write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, compress=compress)
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress=compress)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_load_idx_reads_what_was_written(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=">i4").reshape(2, 3, 4)
    path = tmp_path / ("x.idx.gz" if compress else "x.idx")
    _write_idx(path, array, compress=compress)
    np.testing.assert_array_equal(data.load_idx(path), array)


def test_load_idx_rejects_other_files(tmp_path):
    path = tmp_path / "not.idx"
    path.write_bytes(b"\x89PNG....")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.load_idx(path)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_directory_scaling_and_split(tmp_path, compress):
    arrays = _fake_mnist_dir(tmp_path, compress=compress)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        loaded = data.load_dataset("mnist", split, data_dir=str(tmp_path))
        images, labels = arrays[prefix]
        assert loaded.images.dtype == np.float32 and loaded.labels.dtype == np.int32
        np.testing.assert_allclose(loaded.images[..., 0], images / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(loaded.labels, labels)
        assert loaded.source.startswith("idx:") and loaded.num_classes == 10


def test_fashion_mnist_is_found_in_the_debian_directory(tmp_path, monkeypatch):
    arrays = _fake_mnist_dir(tmp_path)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path))
    loaded = data.load_dataset("fashion_mnist", "test")
    assert loaded.source == f"idx:{tmp_path}"
    np.testing.assert_array_equal(loaded.labels, arrays["t10k"][1])


def test_fashion_mnist_without_idx_files_goes_to_tfds(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "missing"))
    with tfds.testing.mock_data(num_examples=6):
        loaded = data.load_dataset("fashion_mnist", "train")
    assert loaded.source == "tfds" and loaded.images.shape == (6, 28, 28, 1)


@pytest.mark.parametrize(
    ("name", "shape", "classes"),
    [("mnist", (28, 28, 1), 10), ("cifar10", (32, 32, 3), 10), ("cifar100", (32, 32, 3), 100)],
)
def test_tfds_path_with_mock_data(name, shape, classes):
    with tfds.testing.mock_data(num_examples=9):
        loaded = data.load_dataset(name, "test", source="tfds", limit=7)
        reference = tfds.data_source(name, split="test")
        expected = np.stack([reference[i]["image"] for i in range(7)]) / 255.0
    assert loaded.images.shape == (7, *shape) and loaded.num_classes == classes
    np.testing.assert_allclose(loaded.images, expected, rtol=1e-6)
    assert loaded.images.min() >= 0 and loaded.images.max() <= 1
    assert loaded.labels.dtype == np.int32 and loaded.labels.max() < classes


def test_digits_split_is_stratified_disjoint_and_complete():
    from sklearn.datasets import load_digits

    train = data.load_dataset("digits", "train")
    test = data.load_dataset("digits", "test")
    assert train.images.shape == (1437, 8, 8, 1) and test.images.shape == (360, 8, 8, 1)
    assert 0.0 <= train.images.min() and train.images.max() == 1.0
    everything = np.concatenate([train.images, test.images]).reshape(1797, 64) * 16
    reference = load_digits().data
    as_set = lambda rows: sorted(map(tuple, np.round(rows).astype(int)))
    assert as_set(everything) == as_set(reference)
    np.testing.assert_allclose(
        np.bincount(test.labels) / 360, np.bincount(train.labels) / 1437, atol=0.01
    )


def test_standardize_uses_training_statistics():
    rng = np.random.default_rng(1)
    train = rng.uniform(size=(50, 4, 4, 3)).astype(np.float32) * np.array([1, 2, 3], np.float32)
    test = rng.uniform(size=(10, 4, 4, 3)).astype(np.float32)
    train_std, test_std = data.standardize(train, test)
    mean = train.reshape(-1, 3).mean(0)
    std = train.reshape(-1, 3).std(0)
    np.testing.assert_allclose(train_std.reshape(-1, 3).mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(train_std.reshape(-1, 3).std(0), 1, atol=1e-5)
    np.testing.assert_allclose(test_std, (test - mean) / std, rtol=1e-5, atol=1e-5)


def test_batches_are_a_seeded_permutation():
    images = np.arange(10, dtype=np.float32)[:, None]
    labels = np.arange(10, dtype=np.int32)

    def order(**kwargs):
        return np.concatenate(
            [y for _, y in data.iterate_batches(images, labels, 3, drop_remainder=False, **kwargs)]
        )

    first = order(seed=0, epoch=0)
    assert sorted(first) == list(range(10))
    np.testing.assert_array_equal(first, order(seed=0, epoch=0))
    assert not np.array_equal(first, order(seed=0, epoch=1))
    assert not np.array_equal(first, order(seed=1, epoch=0))
    np.testing.assert_array_equal(order(shuffle=False), np.arange(10))
    batches = list(data.iterate_batches(images, labels, 3, seed=0, epoch=0))
    assert [len(y) for _, y in batches] == [3, 3, 3] == [len(x) for x, _ in batches]
    for x, y in batches:
        np.testing.assert_array_equal(x[:, 0], y)
    skipped = list(data.iterate_batches(images, labels, 3, seed=0, epoch=0, start=2))
    np.testing.assert_array_equal(skipped[0][1], batches[2][1])
    assert data.num_batches(10, 3) == 3 and data.num_batches(10, 3, drop_remainder=False) == 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "imagenet", "split": "train"}, "name"),
        ({"name": "digits", "split": "validation"}, "split"),
        ({"name": "digits", "split": "train", "source": "web"}, "source"),
        ({"name": "digits", "split": "train", "source": "idx"}, "source='idx'"),
        ({"name": "cifar10", "split": "train", "source": "idx"}, "source='idx'"),
        ({"name": "mnist", "split": "train", "source": "sklearn"}, "source='sklearn'"),
        ({"name": "digits", "split": "train", "limit": 0}, "limit"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.load_dataset(**kwargs)


def test_missing_idx_files_raise(tmp_path):
    with pytest.raises(ValueError, match="data_dir"):
        data.load_dataset("mnist", "train", data_dir=str(tmp_path), source="idx")


def test_bad_batching_raises():
    with pytest.raises(ValueError, match="batch_size"):
        next(data.iterate_batches(np.zeros(3), np.zeros(3), 0))
    with pytest.raises(ValueError, match="labels"):
        next(data.iterate_batches(np.zeros(3), np.zeros(4), 2))


def test_truncated_idx_file_is_named(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    array = np.zeros((4, 28, 28), dtype=np.uint8)
    _write_idx(path, array, compress=False)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*truncated"):
        data.load_idx(path)


def test_image_label_count_mismatch_raises(tmp_path):
    _fake_mnist_dir(tmp_path, compress=False)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11, dtype=np.uint8), compress=False)
    with pytest.raises(ValueError, match=r"12 images but .*train-labels.* 11 labels"):
        data.load_dataset("mnist", "train", source="idx", data_dir=str(tmp_path))


def test_out_of_range_labels_raise(tmp_path):
    _fake_mnist_dir(tmp_path, compress=False)
    labels = np.full(12, 10, dtype=np.uint8)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", labels, compress=False)
    with pytest.raises(ValueError, match=r"train-labels.*outside \[0, 9\]"):
        data.load_dataset("mnist", "train", source="idx", data_dir=str(tmp_path))


def _indexed(count):
    """A dataset whose images and labels are the example's index."""
    index = np.arange(count)
    images = index.astype(np.float32).reshape(count, 1, 1, 1)
    return data.ArrayDataset(images, index.astype(np.int32), 10, "test")


def test_split_validation_is_a_fixed_partition():
    train, val = data.split_validation(_indexed(50), 7)
    assert len(val.labels) == 7 and len(train.labels) == 43
    assert set(train.labels).isdisjoint(val.labels)
    assert sorted([*train.labels, *val.labels]) == list(range(50))
    # Both keep the original order; the same call gives the same split.
    assert list(train.labels) == sorted(train.labels) and list(val.labels) == sorted(val.labels)
    np.testing.assert_array_equal(train.images[:, 0, 0, 0], train.labels)
    again, _ = data.split_validation(_indexed(50), 7)
    np.testing.assert_array_equal(again.labels, train.labels)
    # Not simply the first or last examples.
    assert list(val.labels) not in (list(range(7)), list(range(43, 50)))


def test_split_validation_of_zero_keeps_everything():
    train, val = data.split_validation(_indexed(5), 0)
    assert list(train.labels) == [0, 1, 2, 3, 4] and len(val.labels) == 0


@pytest.mark.parametrize("size", [-1, 5, 6])
def test_split_validation_rejects_sizes_that_leave_no_training_data(size):
    with pytest.raises(ValueError, match=f"size must be in \\[0, 5\\).*got {size}"):
        data.split_validation(_indexed(5), size)


def test_default_val_size():
    assert data.default_val_size("digits") == 143
    assert data.default_val_size("fashion_mnist") == data.default_val_size("mnist") == 5000


def test_a_data_dir_that_is_no_directory_raises(tmp_path):
    # Not silently replaced by a (mock) download.
    with tfds.testing.mock_data(num_examples=4), pytest.raises(ValueError, match="not a dir"):
        data.load_dataset("mnist", "train", data_dir=str(tmp_path / "missing"))


def test_tfds_that_cannot_load_says_what_to_do(tmp_path, monkeypatch):
    def unavailable(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'importlib_resources'")

    monkeypatch.setattr(tfds, "data_source", unavailable)
    with pytest.raises(ImportError, match=r"install tensorflow-datasets.*idx3-ubyte"):
        data.load_dataset("mnist", "train", data_dir=str(tmp_path))
    with pytest.raises(ImportError, match=r"'cifar10'.*install tensorflow-datasets"):
        data.load_dataset("cifar10", "test")


@pytest.mark.parametrize("name", [name for name in data.DATASETS if name != "digits"])
def test_tfds_builders_find_their_code_without_the_network(name, tmp_path):
    # mock_data skips the builder's own files; a real download first reads the checksums
    # beside the builder's code, which needs every import tensorflow-datasets makes for it.
    builder = tfds.builder(name, data_dir=str(tmp_path))
    assert builder.code_path.exists()
