"""The SIS sweep's cached dense checkpoint is keyed by its data and initial weights."""

import numpy as np

from experiments import models, sis_sweep, training


def _data(images):
    labels = np.arange(len(images)) % 10
    return training.TrainData(images, labels, images[:4], labels[:4], 8, 0)


def test_dense_checkpoint_name_covers_the_data_and_the_model():
    args = sis_sweep.parse_args(["--model", "lenet300_100", "--epochs", "1"])
    split = training.split_model(models.create_model("lenet300_100", input_shape=(28, 28, 1)))
    images = np.random.default_rng(0).normal(size=(16, 28, 28, 1)).astype(np.float32)
    name = sis_sweep.dense_phase(args, split, _data(images)).key
    assert name == sis_sweep.dense_phase(args, split, _data(images.copy())).key
    # A subset or another dataset is another checkpoint, as is another initialisation.
    assert name != sis_sweep.dense_phase(args, split, _data(images[:12])).key
    other = training.split_model(
        models.create_model("lenet300_100", input_shape=(28, 28, 1), seed=1)
    )
    assert name != sis_sweep.dense_phase(args, split=other, data=_data(images)).key
