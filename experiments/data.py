"""Datasets as in-memory NumPy arrays, and a fast shuffling batch iterator.

Three sources, chosen automatically (``source="auto"``) or by name:

* ``"sklearn"`` — scikit-learn's bundled 8x8 ``digits`` (1797 images, no download): the
  embedded default. The split is a fixed stratified 80/20 (1437 train, 360 test).
* ``"idx"`` — the IDX files of MNIST / Fashion-MNIST (``train-images-idx3-ubyte[.gz]`` ...) in
  ``data_dir``; for ``fashion_mnist`` the Debian package ``dataset-fashion-mnist`` location
  :data:`DEBIAN_FASHION_MNIST_DIR` is used when ``data_dir`` is not given.
* ``"tfds"`` — ``tfds.data_source`` (TensorFlow Datasets' random-access API, which works
  without TensorFlow; ``tfds.load`` does not). It downloads and prepares the dataset on first
  use when the machine has a network.

Every loader returns ``images`` float32 NHWC scaled to [0, 1] and ``labels`` int32;
:func:`standardize` then applies per-channel statistics of the training split.

Example:
  >>> train = load_dataset("digits", "train")
  >>> train.images.shape, train.images.dtype.name, train.num_classes
  ((1437, 8, 8, 1), 'float32', 10)
  >>> batches = iterate_batches(train.images, train.labels, 256, seed=0, epoch=0)
  >>> [images.shape[0] for images, _ in batches]
  [256, 256, 256, 256, 256]
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "VALIDATION_SEED",
    "ArrayDataset",
    "default_val_size",
    "iterate_batches",
    "load_dataset",
    "load_idx",
    "num_batches",
    "split_validation",
    "standardize",
]

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# name -> (image shape, number of classes)
DATASETS = {
    "digits": ((8, 8, 1), 10),
    "mnist": ((28, 28, 1), 10),
    "fashion_mnist": ((28, 28, 1), 10),
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
}
# The validation examples are drawn with this fixed seed, never with the run's --seed: every
# seed of a configuration sees the same split, and a seed never selects on its own data.
VALIDATION_SEED = 20200916
# Held-out examples by dataset: 5,000 (a twelfth of (Fashion-)MNIST's 60,000), and 10% of the
# 1,437 training digits.
_VAL_SIZE = {"digits": 143}
_DEFAULT_VAL_SIZE = 5000
_SPLITS = ("train", "test")
_SOURCES = ("auto", "sklearn", "idx", "tfds")
_IDX_PREFIX = {"train": "train", "test": "t10k"}
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class ArrayDataset(NamedTuple):
    """One split of a dataset held in memory.

    Attributes:
      images: float32 ``(n, height, width, channels)``.
      labels: int32 ``(n,)``.
      num_classes: number of classes.
      source: where the data came from (recorded in result files).
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    source: str


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (optionally gzip-compressed) into an array of its stored shape."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"path={str(path)!r} is not an IDX file")
    ndim = raw[3]
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"path={str(path)!r} is truncated: its IDX header is incomplete")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    expected = 4 + 4 * ndim + int(np.prod(shape)) * dtype.itemsize
    if len(raw) < expected:
        raise ValueError(
            f"path={str(path)!r} is truncated: shape {shape} needs {expected} bytes, "
            f"the file has {len(raw)}"
        )
    data = np.frombuffer(raw, dtype, count=int(np.prod(shape)), offset=4 + 4 * ndim)
    return data.reshape(shape)


def _idx_file(directory: str, stem: str) -> str | None:
    for candidate in (stem, stem + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _idx_paths(directory: str | None, split: str) -> tuple[str, str] | None:
    if directory is None:
        return None
    prefix = _IDX_PREFIX[split]
    images = _idx_file(directory, f"{prefix}-images-idx3-ubyte")
    labels = _idx_file(directory, f"{prefix}-labels-idx1-ubyte")
    return (images, labels) if images and labels else None


def _to_float_images(images: np.ndarray, scale: float) -> np.ndarray:
    if images.ndim == 3:
        images = images[..., None]
    return np.ascontiguousarray(images, dtype=np.float32) / np.float32(scale)


def _load_from_idx(name: str, split: str, directory: str | None) -> ArrayDataset:
    paths = _idx_paths(directory, split)
    if paths is None:
        raise ValueError(
            f"data_dir={directory!r} has no {_IDX_PREFIX[split]}-images-idx3-ubyte[.gz] and "
            f"{_IDX_PREFIX[split]}-labels-idx1-ubyte[.gz] for dataset {name!r}"
        )
    raw_images, raw_labels = load_idx(paths[0]), load_idx(paths[1])
    if len(raw_images) != len(raw_labels):
        raise ValueError(
            f"{paths[0]!r} has {len(raw_images)} images but {paths[1]!r} has "
            f"{len(raw_labels)} labels"
        )
    classes = DATASETS[name][1]
    if raw_labels.size and (raw_labels.min() < 0 or raw_labels.max() >= classes):
        raise ValueError(
            f"{paths[1]!r} has labels in [{raw_labels.min()}, {raw_labels.max()}], "
            f"outside [0, {classes - 1}] for dataset {name!r}"
        )
    images = _to_float_images(raw_images, 255.0)
    labels = raw_labels.astype(np.int32)
    return ArrayDataset(images, labels, DATASETS[name][1], f"idx:{os.path.dirname(paths[0])}")


def _load_digits(split: str) -> ArrayDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32)[..., None] / np.float32(16.0)
    labels = digits.target.astype(np.int32)
    parts = train_test_split(images, labels, test_size=0.2, random_state=0, stratify=labels)
    index = 0 if split == "train" else 1
    return ArrayDataset(parts[index], parts[2 + index], 10, "sklearn:load_digits")


_IDX_NAMES = ("mnist", "fashion_mnist")


def _load_from_tfds(name: str, split: str, directory: str | None) -> ArrayDataset:
    try:
        import tensorflow_datasets as tfds

        source = tfds.data_source(name, split=split, data_dir=directory)
    except ImportError as err:
        # TFDS imports some of its dependencies only here: say what to do, not which module.
        instead = (
            f", or give data_dir= a directory holding the {_IDX_PREFIX[split]}-images-idx3-ubyte"
            f"[.gz] and {_IDX_PREFIX[split]}-labels-idx1-ubyte[.gz] files (none in "
            f"data_dir={directory!r})"
            if name in _IDX_NAMES
            else ""
        )
        raise ImportError(
            f"dataset {name!r} comes from TensorFlow Datasets here, which cannot load ({err}): "
            f"install tensorflow-datasets and its dependencies (pip install "
            f"'sparsejax[experiments]'){instead}"
        ) from err
    examples = [source[i] for i in range(len(source))]
    images = np.stack([example["image"] for example in examples])
    labels = np.asarray([example["label"] for example in examples], dtype=np.int32)
    return ArrayDataset(_to_float_images(images, 255.0), labels, DATASETS[name][1], "tfds")


def _resolve_source(name: str, split: str, data_dir: str | None) -> tuple[str, str | None]:
    if name == "digits":
        return "sklearn", None
    if name in _IDX_NAMES:
        if _idx_paths(data_dir, split) is not None:
            return "idx", data_dir
        if data_dir is None and name == "fashion_mnist":
            if _idx_paths(DEBIAN_FASHION_MNIST_DIR, split) is not None:
                return "idx", DEBIAN_FASHION_MNIST_DIR
    return "tfds", data_dir


def load_dataset(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    source: str = "auto",
    limit: int | None = None,
) -> ArrayDataset:
    """Loads one split of a dataset into memory.

    Args:
      name: one of :data:`DATASETS` (``digits``, ``mnist``, ``fashion_mnist``, ``cifar10``,
        ``cifar100``).
      split: ``"train"`` or ``"test"``.
      data_dir: a directory with IDX files (``mnist``, ``fashion_mnist``) or the TFDS data
        directory (``source="tfds"``).
      source: ``"auto"`` (digits -> scikit-learn; (fashion_)mnist -> IDX files in ``data_dir``,
        or Debian's Fashion-MNIST directory, else TFDS; cifar -> TFDS), or one of
        ``"sklearn"``, ``"idx"``, ``"tfds"`` to force it.
      limit: keep only the first ``limit`` examples (tests, quick runs).

    Returns:
      An :class:`ArrayDataset` with float32 images in [0, 1] and int32 labels.

    Raises:
      ValueError: on an unknown name, split or source, a source the dataset does not have,
        missing IDX files, a ``data_dir`` that is not a directory (IDX datasets; a TFDS
        directory may be created by the download), or a non-positive ``limit``.
      ImportError: when the data must come from TensorFlow Datasets and it cannot load; the
        message says what to install (and, for the IDX datasets, which files would do).
    """
    if name not in DATASETS:
        raise ValueError(f"name must be one of {tuple(DATASETS)}, got {name!r}")
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    if source not in _SOURCES:
        raise ValueError(f"source must be one of {_SOURCES}, got {source!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if source != "auto" and (source == "sklearn") != (name == "digits"):
        raise ValueError(f"source={source!r} does not provide dataset {name!r}")
    if source == "idx" and name not in _IDX_NAMES:
        raise ValueError(f"source='idx' does not provide dataset {name!r}")
    if source in ("auto", "idx") and name in _IDX_NAMES and data_dir is not None:
        # A mistyped directory must not fall through to a download (TFDS may create it).
        if not os.path.isdir(data_dir):
            raise ValueError(
                f"data_dir={data_dir!r} is not a directory; give the directory of the IDX files"
            )
    if source == "auto":
        source, data_dir = _resolve_source(name, split, data_dir)
    if source == "sklearn":
        dataset = _load_digits(split)
    elif source == "idx":
        dataset = _load_from_idx(name, split, data_dir)
    else:
        dataset = _load_from_tfds(name, split, data_dir)
    if limit is not None:
        dataset = dataset._replace(images=dataset.images[:limit], labels=dataset.labels[:limit])
    return dataset


def default_val_size(name: str) -> int:
    """The default number of held-out validation examples: 143 (10%) for ``digits``, else
    5,000."""
    return _VAL_SIZE.get(name, _DEFAULT_VAL_SIZE)


def split_validation(dataset: ArrayDataset, size: int) -> tuple[ArrayDataset, ArrayDataset]:
    """Holds out ``size`` examples of a training split as a validation set.

    The held-out examples are a fixed random subset: the first ``size`` indices of a
    permutation drawn with :data:`VALIDATION_SEED`, independent of any training seed, so
    every seed of a configuration has the same split. The remaining training examples keep
    their original order (a later ``limit`` keeps the first of them), and so do the validation
    examples.

    Args:
      dataset: the whole training split.
      size: number of examples to hold out; 0 gives an empty validation set and the
        training split unchanged.

    Returns:
      ``(train, validation)``.

    Raises:
      ValueError: if ``size`` is negative or not smaller than the number of examples.

    >>> train = load_dataset("digits", "train")
    >>> train, validation = split_validation(train, 143)
    >>> len(train.labels), len(validation.labels)
    (1294, 143)
    """
    count = len(dataset.labels)
    if not 0 <= size < count:
        raise ValueError(
            f"size must be in [0, {count}) for a training split of {count} examples, "
            f"got {size!r}: hold out fewer examples"
        )
    held = np.zeros(count, bool)
    held[np.random.default_rng(VALIDATION_SEED).permutation(count)[:size]] = True
    part = lambda rows: dataset._replace(images=dataset.images[rows], labels=dataset.labels[rows])
    return part(~held), part(held)


def standardize(train_images: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Subtracts the per-channel mean and divides by the per-channel standard deviation of
    ``train_images``; returns the standardised ``train_images`` followed by ``others``."""
    mean = train_images.mean(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
    std = train_images.std(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
    std = np.maximum(std, np.float32(1e-6))
    return tuple((images - mean) / std for images in (train_images, *others))


def num_batches(num_examples: int, batch_size: int, *, drop_remainder: bool = True) -> int:
    """Number of batches :func:`iterate_batches` yields."""
    if drop_remainder:
        return num_examples // batch_size
    return -(-num_examples // batch_size)


def iterate_batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    drop_remainder: bool = True,
    start: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields ``(images, labels)`` batches in an order fixed by ``(seed, epoch)``.

    The order depends only on ``seed`` and ``epoch``, so a resumed run sees the same batches.
    Each batch is one NumPy gather of ``batch_size`` rows: no copy of the whole array per epoch.

    Args:
      images: ``(n, ...)`` array.
      labels: ``(n,)`` array.
      batch_size: examples per batch.
      seed: shuffling seed.
      epoch: epoch number (mixed into the shuffling seed).
      shuffle: permute the examples; otherwise keep their order.
      drop_remainder: drop the last incomplete batch (keeps one jitted shape).
      start: index of the first batch to yield (to skip batches already seen).

    Raises:
      ValueError: on a non-positive batch size or mismatched lengths.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(images) != len(labels):
        raise ValueError(f"images has {len(images)} examples but labels has {len(labels)}")
    count = len(images)
    order = np.random.default_rng((seed, epoch)).permutation(count) if shuffle else np.arange(count)
    total = num_batches(count, batch_size, drop_remainder=drop_remainder)
    for index in range(start, total):
        rows = order[index * batch_size : (index + 1) * batch_size]
        yield images[rows], labels[rows]
