"""Epoch time of the experiments' training loop against minimal hand-written Flax/Optax loops.

LFC4 (784-1000-1000-512-128-10) on Fashion-MNIST, Adam 1e-3, batch 256, the same standardised
arrays and the same batch order for every loop. Three loops, interleaved round by round so
that a shared machine's load hits them alike:

* ``experiments`` — :func:`experiments.training.run_phase` as the CLI runs it (progress bar,
  a checkpoint written after every epoch);
* ``nnx.jit`` — the textbook NNX loop: ``nnx.Optimizer`` and an ``@nnx.jit`` step;
* ``jax.jit`` — a functional loop: ``nnx.split`` once, a ``jax.jit`` step over plain pytrees.

The first epoch of each round is dropped (it compiles); the table gives the median and the
fastest of the others (the order of the loops rotates from round to round), and each loop's
median relative to the better minimal loop (target for ours: <= 1.1x)::

    python -m benchmarks.epoch_time            # full data, 3 rounds of 3 epochs
    python -m benchmarks.epoch_time --limit 12800 --rounds 1 --epochs 2   # quick look
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments import data as data_lib
from experiments import models, training

BATCH = 256
LR = 1e-3


def _arrays(limit: int | None):
    train = data_lib.load_dataset("fashion_mnist", "train", limit=limit)
    test = data_lib.load_dataset("fashion_mnist", "test", limit=1000)
    train_images, test_images = data_lib.standardize(train.images, test.images)
    return training.TrainData(train_images, train.labels, test_images, test.labels, BATCH, 0)


def ours(data: training.TrainData, epochs: int) -> list[float]:
    split = training.split_model(models.create_model("lfc4", seed=0))
    phase = training.Phase("bench", epochs, lambda _: optax.adam(LR))
    with tempfile.TemporaryDirectory() as workdir:
        result = training.run_phase(
            phase,
            split,
            split.params,
            split.rest,
            data,
            workdir=workdir,
            resume=False,
            log=lambda _: None,
        )
    return [epoch["seconds"] for epoch in result.history]


def _loss(model, images, labels):
    logits = model(images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def minimal_nnx(data: training.TrainData, epochs: int) -> list[float]:
    model = models.create_model("lfc4", seed=0)
    optimizer = nnx.Optimizer(model, optax.adam(LR), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, images, labels):
        loss, grads = nnx.value_and_grad(_loss)(model, images, labels)
        optimizer.update(model, grads)
        return loss

    seconds = []
    for epoch in range(epochs):
        started = time.perf_counter()
        order = np.random.default_rng((0, epoch)).permutation(len(data.train_labels))
        for start in range(0, len(order) - BATCH + 1, BATCH):
            rows = order[start : start + BATCH]
            loss = step(model, optimizer, data.train_images[rows], data.train_labels[rows])
        loss.block_until_ready()
        seconds.append(time.perf_counter() - started)
    return seconds


def minimal_jax(data: training.TrainData, epochs: int) -> list[float]:
    graphdef, params = nnx.split(models.create_model("lfc4", seed=0))
    tx = optax.adam(LR)

    @jax.jit
    def step(params, opt_state, images, labels):
        loss_fn = lambda p: _loss(nnx.merge(graphdef, p), images, labels)
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    seconds = []
    for epoch in range(epochs):
        started = time.perf_counter()
        order = np.random.default_rng((0, epoch)).permutation(len(data.train_labels))
        for start in range(0, len(order) - BATCH + 1, BATCH):
            rows = order[start : start + BATCH]
            params, opt_state, loss = step(
                params, opt_state, data.train_images[rows], data.train_labels[rows]
            )
        jnp.asarray(loss).block_until_ready()
        seconds.append(time.perf_counter() - started)
    return seconds


LOOPS = {"experiments (ours)": ours, "nnx.jit minimal": minimal_nnx, "jax.jit minimal": minimal_jax}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, help="training examples (default: all 60000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per loop per round (>= 2)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error(f"--epochs must be >= 2, got {args.epochs}")
    data = _arrays(args.limit)
    timings: dict[str, list[float]] = {name: [] for name in LOOPS}
    names = list(LOOPS)
    for round_index in range(args.rounds):
        # Rotate the order so that no loop always runs first (or last) in a round.
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            timings[name] += LOOPS[name](data, args.epochs)[1:]
    medians = {name: statistics.median(values) for name, values in timings.items()}
    reference = min(medians["nnx.jit minimal"], medians["jax.jit minimal"])
    steps = len(data.train_labels) // BATCH
    print(f"LFC4, Fashion-MNIST, {len(data.train_labels)} examples, batch {BATCH}, {steps} steps")
    epochs = len(timings["jax.jit minimal"])
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; {epochs} timed epochs per loop")
    print(f"{'loop':<20} {'epoch s':>8} {'fastest':>8} {'ms/step':>8} {'vs best minimal':>16}")
    for name, value in medians.items():
        fastest = min(timings[name])
        print(
            f"{name:<20} {value:8.2f} {fastest:8.2f} {1000 * value / steps:8.2f} "
            f"{value / reference:15.2f}x"
        )


if __name__ == "__main__":
    main()
