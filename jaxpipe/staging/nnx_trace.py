"""Tracing an NNX module: variables from `nnx.split`, scopes written by JaxPipe.

An `nnx.Module` holds its own variables. `nnx.split(model, nnx.Param, ...)` gives its
parameters (`nnx.Param` leaves, paths `params/<attribute path>`) and everything else as state
(`nnx.BatchStat`, the counters and keys of its `nnx.Rngs`, any variable the forward pass
mutates; paths `state/<attribute path>`), which threads through micro-batches in order like
linen's `batch_stats`. PRNG keys travel as raw key data (`jax.random.key_data`) and are wrapped
back inside the program, so dropout draws NNX's own masks.

NNX writes no name stack: in flax 0.12 every equation of a traced NNX call has an empty
`source_info.name_stack`. So the traced loss runs on a *copy* of the model, `nnx.merge`d inside
the trace from the split state, whose submodules' classes are swapped for subclasses whose
`__call__` runs under `jax.named_scope` of the submodule's attribute path (`blocks/2/conv`),
relative to the submodule that called it. NNX transforms the model uses (`nnx.scan`,
`nnx.remat`, `nnx.vmap`) split and merge that copy, and their merged copies keep the subclass.
The user's module, its classes and its state are never touched.

Cut units are then chosen from these paths as for linen (`staging.units`): the model's
children, in call order, descending where one holds most of the work; `layers=` overrides.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
from flax import nnx

from jaxpipe.errors import BatchError, RngError, VariablesError
from jaxpipe.staging import units
from jaxpipe.staging.batch import Batch, Rngs, raw_key
from jaxpipe.staging.tracing import LossFn, Traced
from jaxpipe.tree import Array, Flat, PyTree

__all__ = ["NnxTraced", "state_flat"]

Path = tuple[str, ...]


class NnxTraced(Traced):
    """An NNX model's loss, traced and cut into layers (see the module docstring).

    `value_and_grad` of its `split` takes the module itself where a linen model takes its
    variables, and returns gradients as an `nnx.State` shaped like `nnx.state(model,
    nnx.Param)` and the new non-parameter state as an `nnx.State`.
    """

    strip_root = False  # the scopes JaxPipe writes start below the model

    def __init__(self, model: nnx.Module, variables: object, batch: Batch, loss_fn: LossFn,
                 rngs: Rngs | None, layers: units.Layers = None):
        if not isinstance(batch, tuple | list) or len(batch) != 2:
            raise BatchError("batch must be a pair (inputs, targets); got " + type(batch).__name__)
        if variables is not None:
            raise VariablesError("an NNX module holds its own variables; pass variables=None "
                                 "(jaxpipe.trace(model, None, batch, loss_fn))")
        if rngs:
            raise RngError("an NNX module draws its random numbers from its own nnx.Rngs; pass "
                           "rngs=None (dropout keys are part of the module's state)")
        self.model = model
        self.loss_fn = loss_fn
        self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        self.params = state_flat(params, "params")
        self.state = state_flat(rest, "state")
        self.key_impls = _key_impls(rest)
        self.state_collections = ()
        self.rng_names, self.rng_keys = (), ()
        self._start(batch, layers)

    def user_leaves(self, variables: Any) -> tuple[list[Array], list[Array]]:
        """The parameter and state leaves of `variables`, an NNX module shaped as traced."""
        if not isinstance(variables, nnx.Module):
            raise VariablesError(f"value_and_grad of an NNX model takes the module (its "
                                 f"current variables are used); got {type(variables).__name__}")
        _, params, rest = nnx.split(variables, nnx.Param, ...)
        return (self.user_params.leaves_of(params, "the module's parameters"),
                _raw(self.user_state.leaves_of(rest, "the module's state")))

    def user_trees(self, grads: Sequence[Array], state: Sequence[Array]) -> tuple[PyTree, PyTree]:
        """Gradients as an `nnx.State` of the parameters, new state as an `nnx.State`."""
        return (self.user_params.rebuild(grads),
                self.user_state.rebuild(_wrap(state, self.key_impls)))

    def _flat_fn(self) -> Callable[..., tuple[jax.Array, list[jax.Array]]]:
        graphdef, loss_fn, key_impls = self.graphdef, self.loss_fn, self.key_impls
        params, state, inputs, targets = self.user_params, self.user_state, self.inputs, \
            self.targets

        def loss(p: list[Array], s: list[Array], x: list[Array], y: list[Array],
                 keys: list[Array]) -> tuple[jax.Array, list[jax.Array]]:
            del keys  # NNX keys are state
            wrapped = _wrap(s, key_impls)
            model = nnx.merge(graphdef, params.rebuild(p), state.rebuild(wrapped))
            mark_scopes(model)
            value = loss_fn(model(inputs.rebuild(x)), targets.rebuild(y))
            _, _, new = nnx.split(model, nnx.Param, ...)
            new_leaves = state.leaves_of(new, "the module's state after its forward pass")
            # A leaf the forward left alone is the input itself: no stage writes it back.
            return value, _raw([old if n is w else n for old, n, w in
                                zip(s, new_leaves, wrapped)])

        return loss


def state_flat(state: nnx.State, prefix: str) -> Flat:
    """An `nnx.State`'s leaves, named by attribute path under `prefix` (`params/blocks/0/kernel`),
    PRNG keys as raw key data."""
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(state)
    paths = []
    for path, _ in with_paths:
        parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
        if parts and isinstance(path[-1], jax.tree_util.GetAttrKey):
            parts = parts[:-1]  # the Variable's `.value`
        paths.append("/".join([prefix, *parts]))
    return Flat(tuple(paths), tuple(_raw([x for _, x in with_paths])), treedef)


def _is_key(x: Any) -> bool:
    return jax.numpy.issubdtype(x.dtype, jax.dtypes.prng_key)


def _key_impls(state: nnx.State) -> dict[int, Any]:
    return {i: jax.random.key_impl(x) for i, x in enumerate(jax.tree.leaves(state))
            if _is_key(x)}


def _raw(leaves: Sequence[Any]) -> list[Any]:
    return [raw_key(x) if _is_key(x) else x for x in leaves]


def _wrap(leaves: Sequence[Any], impls: dict[int, Any]) -> list[Any]:
    return [jax.random.wrap_key_data(x, impl=impls[i]) if i in impls else x
            for i, x in enumerate(leaves)]


def mark_scopes(model: nnx.Module) -> None:
    """Swaps the class of every callable submodule of `model` (a copy made inside the trace) for
    a subclass whose `__call__` runs under its attribute path's scopes."""
    classes: dict[tuple[type, Path], type] = {}
    active: list[Path] = [()]  # attribute paths of the submodules being called, innermost last
    for path, node in nnx.iter_graph(model):
        if path and isinstance(node, nnx.Module) and callable(node):
            key = (type(node), tuple(str(p) for p in path))
            if key not in classes:
                classes[key] = _scoped(type(node), key[1], active)
            node.__class__ = classes[key]


def _scoped(cls: type, path: Path, active: list[Path]) -> type:
    call = cls.__call__

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        outer = active[-1]
        # Scopes nest as calls do: push the path below the calling submodule's (a submodule
        # called from outside its parent gets its whole path).
        relative = path[len(outer):] if path[: len(outer)] == outer else path
        with contextlib.ExitStack() as scopes:
            for part in relative:
                scopes.enter_context(jax.named_scope(part))
            active.append(path)
            try:
                return call(self, *args, **kwargs)
            finally:
                active.pop()

    return type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})
