"""Runs every transformation on sharded and on unsharded parameters; prints JSON.

Run as a script in a fresh interpreter with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
(the flag must be set before jax starts, hence a separate process): for each transformation and
each layout of the kernels over the simulated devices, the largest difference from the
single-device result, whether the updated parameters keep their sharding, and the all-gathers
in the compiled step (their element counts).
"""

from __future__ import annotations

import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import sparsejax

SHAPES = {"Dense_0": (64, 256), "Dense_1": (256, 128)}


def transformations() -> dict:
    adam = optax.adam(1e-2)
    return {
        "project_l1": optax.chain(adam, sparsejax.project_l1(20.0)),
        "project_l1_global": optax.chain(adam, sparsejax.project_l1(20.0, global_budget=True)),
        "project_l21": optax.chain(adam, sparsejax.project_l21(2.0)),
        "project_l11": optax.chain(adam, sparsejax.project_l11(20.0)),
        "project_l1inf": optax.chain(adam, sparsejax.project_l1inf(2.0)),
        "project_bilevel_l1inf": optax.chain(adam, sparsejax.project_bilevel_l1inf(2.0)),
        "project_nuclear": optax.chain(adam, sparsejax.project_nuclear(2.0)),
        "project_l111": optax.chain(adam, sparsejax.project_l111(20.0)),
        "prox_l1": optax.chain(adam, sparsejax.prox_l1(0.05)),
        "prox_l0": optax.chain(adam, sparsejax.prox_l0(0.01, group="input")),
        "prune_to_rate": optax.chain(adam, sparsejax.prune_to_rate(0.5)),
        "proximal_rmsprop": sparsejax.proximal_rmsprop(1e-2, 1e-3),
        "xrda": sparsejax.xrda(10, 0.1, 1e-3),
    }


def layouts(devices: int) -> dict:
    grid = (devices // 2, 2) if devices >= 4 else (devices, 1)
    return {
        "rows": (Mesh(np.array(jax.devices()), ("a",)), P("a", None)),
        "columns": (Mesh(np.array(jax.devices()), ("a",)), P(None, "a")),
        "grid": (Mesh(np.array(jax.devices()).reshape(grid), ("a", "b")), P("a", "b")),
    }


def initial() -> tuple[dict, dict]:
    key = jax.random.key(0)
    params, grads = {}, {}
    for i, (name, shape) in enumerate(SHAPES.items()):
        k1, k2 = jax.random.split(jax.random.fold_in(key, i))
        params[name] = {"kernel": jax.random.normal(k1, shape), "bias": jnp.zeros(shape[1])}
        grads[name] = {"kernel": jax.random.normal(k2, shape), "bias": jnp.ones(shape[1])}
    return params, grads


def step_fn(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def all_gathers(hlo: str) -> list[int]:
    """Element counts of the all-gathers in a compiled module's text."""
    sizes = []
    for match in re.finditer(r"= \w+\[([\d,]*)\][^\n]*? all-gather\(", hlo):
        dims = [int(d) for d in match.group(1).split(",") if d]
        sizes.append(int(np.prod(dims)) if dims else 1)
    return sizes


def probe(devices: int) -> list[dict]:
    params, grads = initial()
    records = []
    for name, tx in transformations().items():
        step = step_fn(tx)
        reference = params
        state = tx.init(params)
        for _ in range(2):
            reference, state = jax.jit(step)(reference, state, grads)
        for layout, (mesh, spec) in layouts(devices).items():
            kernel = NamedSharding(mesh, spec)
            shardings = {n: {"kernel": kernel, "bias": NamedSharding(mesh, P())} for n in SHAPES}
            placed = jax.device_put(params, shardings)
            state = tx.init(placed)
            compiled = jax.jit(step).lower(placed, state, grads).compile()
            out = placed
            for _ in range(2):
                out, state = compiled(out, state, grads)
            diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), out, reference)
            records.append(
                {
                    "transform": name,
                    "layout": layout,
                    "max_diff": max(jax.tree.leaves(diffs)),
                    "keeps_sharding": all(
                        out[n]["kernel"].sharding.is_equivalent_to(kernel, 2) for n in SHAPES
                    ),
                    "all_gathers": all_gathers(compiled.as_text()),
                    "kernel_sizes": [int(np.prod(s)) for s in SHAPES.values()],
                }
            )
    return records


if __name__ == "__main__":
    print(json.dumps(probe(int(sys.argv[1]))))
