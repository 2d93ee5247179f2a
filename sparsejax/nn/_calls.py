"""Intercepting Flax layer calls: the one mechanism by which sparsejax.nn reads a model.

A context manager temporarily wraps the ``__call__`` of ``nnx.Linear`` / ``nnx.Conv`` /
``nnx.BatchNorm`` (and of their subclasses that define their own ``__call__``), or uses
``flax.linen.intercept_methods`` for ``linen.Dense`` / ``linen.Conv`` / ``linen.BatchNorm``, and
routes every outermost call through ``hook(kind, module, inputs, call_next)``. Model tracing
(:mod:`sparsejax.nn._tracing`) and SIS (:mod:`sparsejax.nn._sis`) are both built on it. Flax is
imported lazily so that ``import sparsejax`` works without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Path = tuple[Any, ...]
Hook = Callable[[str, Any, jax.Array, Callable[[jax.Array], jax.Array]], jax.Array]


def path_name(path: Path) -> str:
    """``('blocks', 0, 'conv')`` -> ``'blocks/0/conv'``."""
    return "/".join(str(key) for key in path)


def _is_nnx_module(model: Any) -> bool:
    try:
        from flax import nnx
    except ImportError:
        return False
    return isinstance(model, nnx.Module)


@dataclasses.dataclass
class Call:
    """One intercepted layer call."""

    kind: str  # "dense", "conv" or "norm"
    path: Path
    module: Any
    input_shape: tuple[int, ...]  # before any gather of live inputs
    output_shape: tuple[int, ...]
    input_index: np.ndarray | None  # the layer reads x[..., input_index] (after a surgery)
    output_dtype: Any = None


@contextlib.contextmanager
def intercept_nnx(classes: dict[type, str], hook: Hook) -> Iterator[None]:
    """Routes every outermost ``__call__`` of the NNX ``classes`` (class -> kind) through
    ``hook(kind, module, inputs, call_next)``; a module's nested ``super().__call__`` is not
    seen again. The classes' ``__call__`` are restored on exit."""
    originals = [(cls, kind, cls.__dict__["__call__"]) for cls, kind in classes.items()]
    inside: set[int] = set()  # modules whose outermost __call__ is running

    def wrapped(kind: str, original: Callable) -> Callable:
        @functools.wraps(original)
        def __call__(module, inputs, *args, **kwargs):
            if id(module) in inside:
                return original(module, inputs, *args, **kwargs)
            inside.add(id(module))
            try:
                return hook(kind, module, inputs, lambda x: original(module, x, *args, **kwargs))
            finally:
                inside.discard(id(module))

        return __call__

    try:
        for cls, kind, original in originals:
            cls.__call__ = wrapped(kind, original)
        yield
    finally:
        for cls, _, original in originals:
            cls.__call__ = original


class _NnxModel:
    """Runs an NNX model (an evaluation-mode clone) with its layer calls intercepted."""

    def __init__(self, model: Any):
        from flax import nnx

        self._nnx = nnx
        self.model = nnx.clone(model)
        self.model.eval()
        modules = [
            (tuple(path), node)
            for path, node in nnx.iter_graph(self.model)
            if isinstance(node, nnx.Module)
        ]
        self._paths = {id(node): path for path, node in modules}
        self._modules = dict(modules)
        self._aliases: dict[int, Any] = {}  # id(module of a merged copy) -> our module
        self.kinds = ((nnx.Linear, "dense"), (nnx.Conv, "conv"), (nnx.BatchNorm, "norm"))
        # Subclasses that define their own __call__ (a user's, or surgery's input-selecting
        # layers) are wrapped too, so that the hook sees the input before any gather.
        self._classes = {}
        for _, node in modules:
            kind = _kind_of(node, self.kinds)
            for cls in type(node).__mro__ if kind else ():
                if "__call__" in cls.__dict__ and issubclass(cls, nnx.Module):
                    self._classes.setdefault(cls, kind)
        self._classes.update({cls: kind for cls, kind in self.kinds})

    def __call__(self, x: jax.Array) -> Any:
        return self.model(x)

    def pure(self) -> tuple[Callable[[Any, jax.Array], Any], Any]:
        """``(fn, tree)``: ``fn(tree, x)`` is the forward pass with the variables as arguments.

        Compile this, not a closure over the model: XLA:CPU (jax 0.10) miscompiles programs
        whose all-zero kernels are constants (a conv by a zero kernel followed by a reduction
        reads uninitialised memory), and zero kernels are what sparsified models have. While
        ``fn`` runs, a hook's modules (those of the merged copy) resolve through :meth:`own`.
        """
        nnx = self._nnx
        graphdef, state = nnx.split(self.model)

        def fn(tree: Any, x: jax.Array) -> Any:
            merged = nnx.merge(graphdef, tree)
            self._aliases = {
                id(node): self._modules[tuple(path)]
                for path, node in nnx.iter_graph(merged)
                if isinstance(node, nnx.Module)
            }
            try:
                return merged(x)
            finally:  # ids of freed copies must not alias later objects
                self._aliases = {}

        return fn, state

    def own(self, module: Any) -> Any:
        """Our module for a module of the copy that :meth:`pure`'s ``fn`` is running."""
        return self._aliases.get(id(module), module)

    def path(self, module: Any) -> Path:
        return self._paths[id(self.own(module))]

    def input_index(self, module: Any) -> np.ndarray | None:
        index = getattr(module, "input_index", None)
        return None if index is None else np.asarray(index, np.int64)

    def intercept(self, hook: Hook) -> contextlib.AbstractContextManager[None]:
        return intercept_nnx(self._classes, hook)

    def arrays(self, call: Call) -> dict[str, np.ndarray]:
        names = ("kernel", "bias", "scale", "mean", "var")
        found = {name: getattr(call.module, name, None) for name in names}
        return {name: np.asarray(var[...]) for name, var in found.items() if var is not None}

    def param_leaves(self) -> list[tuple[Path, np.ndarray]]:
        state = self._nnx.state(self.model, self._nnx.Param)
        leaves = jax.tree_util.tree_leaves_with_path(state)
        return [(_key_path(path), np.asarray(leaf)) for path, leaf in leaves]


class _LinenModel:
    """Runs ``apply_fn(variables, x)`` with Linen layer calls intercepted."""

    def __init__(self, apply_fn: Callable, variables: Any, input_indices: dict | None = None):
        import flax.linen as nn

        self._nn = nn
        self.apply_fn = apply_fn
        self.variables = variables
        self._input_indices = input_indices or {}
        self.kinds = ((nn.Dense, "dense"), (nn.Conv, "conv"), (nn.BatchNorm, "norm"))

    def __call__(self, x: jax.Array) -> Any:
        return self.apply_fn(self.variables, x)

    def pure(self) -> tuple[Callable[[Any, jax.Array], Any], Any]:
        """``(fn, tree)``: ``fn(tree, x)`` is ``apply_fn(tree, x)`` (see ``_NnxModel.pure``)."""
        return (lambda tree, x: self.apply_fn(tree, x)), self.variables

    def own(self, module: Any) -> Any:
        return module

    def path(self, module: Any) -> Path:
        return tuple(module.scope.path)

    def input_index(self, module: Any) -> np.ndarray | None:
        index = self._input_indices.get(self.path(module))
        return None if index is None else np.asarray(index, np.int64)

    @contextlib.contextmanager
    def intercept(self, hook: Hook) -> Iterator[None]:
        def interceptor(next_fun, args, kwargs, context):
            kind = _kind_of(context.module, self.kinds)
            if kind is None or context.method_name != "__call__" or not args:
                return next_fun(*args, **kwargs)
            inputs, *rest = args
            return hook(kind, context.module, inputs, lambda x: next_fun(x, *rest, **kwargs))

        with self._nn.intercept_methods(interceptor):
            yield

    def arrays(self, call: Call) -> dict[str, np.ndarray]:
        found = {}
        for collection in ("params", "batch_stats"):
            node = self.variables.get(collection, {})
            for key in call.path:
                node = node.get(key, {}) if hasattr(node, "get") else {}
            found.update({name: np.asarray(value) for name, value in dict(node).items()})
        return found

    def param_leaves(self) -> list[tuple[Path, np.ndarray]]:
        leaves = jax.tree_util.tree_leaves_with_path(self.variables.get("params", {}))
        return [(_key_path(path), np.asarray(leaf)) for path, leaf in leaves]


def _kind_of(module: Any, kinds: tuple[tuple[type, str], ...]) -> str | None:
    for cls, kind in kinds:
        if isinstance(module, cls):
            return kind
    return None


def _key_path(path: tuple[Any, ...]) -> Path:
    keys = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                keys.append(getattr(key, attr))
                break
    while keys and keys[-1] in ("value", "raw_value"):
        keys.pop()
    return tuple(keys)


def wrap_model(model: Any, variables: Any) -> _NnxModel | _LinenModel:
    """Validates the ``(model, variables)`` pair and returns the runner for it."""
    if _is_nnx_module(model):
        if variables is not None:
            raise ValueError(
                "variables must be None for an NNX model (its parameters live in the module), "
                f"got {type(variables).__name__}"
            )
        return _NnxModel(model)
    if hasattr(model, "input_indices") and hasattr(model, "variables"):
        # A ShrunkenLinenModel: its layers gather their live inputs inside our hook.
        variables = model.variables if variables is None else variables
        return _LinenModel(model.apply, variables, model.input_indices)
    if variables is None:
        raise ValueError(
            "variables is required for a Linen module or an apply function "
            f"(model={type(model).__name__}), got None"
        )
    apply_fn = getattr(model, "apply", model)
    if not callable(apply_fn):
        raise ValueError(
            "model must be an nnx.Module, a linen.Module or a callable apply_fn(variables, x), "
            f"got {type(model).__name__}"
        )
    return _LinenModel(apply_fn, variables)


def _check_example_input(example_input: Any) -> jax.Array:
    if not hasattr(example_input, "shape") or np.ndim(example_input) < 1:
        raise ValueError(
            "example_input must be an array with a leading batch axis, "
            f"got {type(example_input).__name__} of shape {np.shape(example_input)}"
        )
    if np.shape(example_input)[0] == 0:
        raise ValueError(
            "example_input must hold at least one example, got an empty batch of shape "
            f"{np.shape(example_input)}"
        )
    return jnp.asarray(example_input)
