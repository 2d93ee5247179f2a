"""Experiments for sparsejax: models, data, the training CLI and the paper reproductions.

This package uses :mod:`sparsejax` only through its public API, as a user would.

* :mod:`experiments.models` — Flax NNX models of the papers (Net4, LeNet-300-100, LFC4,
  SimpleNet, VGG-16/19, ResNet-18/56, Formanek & Hadházi's VGG variant).
* :mod:`experiments.data` — datasets as in-memory arrays (scikit-learn digits, IDX files such as
  Debian's Fashion-MNIST, TFDS) and a fast shuffling batch iterator.
* :mod:`experiments.train` — the training loop and the command line
  (``python -m experiments.train --help``).
"""
