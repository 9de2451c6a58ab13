"""Optimizers by name, and their state as flat path-named leaves for checkpoints.

A name is a convenience that makes the optax object; every job's optimizer, named or not, runs
in the workers as the programs `jaxpipe.runtime.optimizer.compile_optimizer` exports (`make_step`
remains for running an optax object in-process).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax

from jaxpipe.errors import OptimizerStateError, UnknownOptimizerError
from jaxpipe.tree import flatten_paths

__all__ = ["OPTIMIZERS", "accumulate", "make", "make_step", "state_from_leaves",
           "state_to_leaves"]

OPTIMIZERS = {
    "sgd": lambda lr: optax.sgd(lr),
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": lambda lr: optax.adam(lr),
    "adamw": lambda lr: optax.adamw(lr),
}


def make(name: str, learning_rate: float) -> optax.GradientTransformation:
    """The optax optimizer `name` at `learning_rate`."""
    if name not in OPTIMIZERS:
        raise UnknownOptimizerError(
            f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](learning_rate)


def make_step(optimizer: optax.GradientTransformation) -> Callable[[Any, Any, Any], tuple]:
    """One jitted optimizer step, `(grads, state, params) -> (new params, new state)`.

    Jitted because optax's update is many small element-wise ops: run eagerly, a stage with a
    hundred parameters pays a dispatch per op and leaf, tens of milliseconds per iteration.
    """
    def step(grads: Any, state: Any, params: Any) -> tuple[Any, Any]:
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step)


@jax.jit
def accumulate(total: list[Any], more: list[Any]) -> list[Any]:
    """Element-wise sum of two equal lists of arrays, in one dispatch (gradient accumulation)."""
    return [a + b for a, b in zip(total, more, strict=True)]


def state_to_leaves(state: Any) -> dict[str, Any]:
    """The optimizer state as {path: array}."""
    flat = flatten_paths(state)
    return dict(zip(flat.paths, flat.leaves))


def state_from_leaves(optimizer: optax.GradientTransformation, params: Mapping[str, Any],
                      leaves: Mapping[str, Any]) -> Any:
    """Rebuilds the state of `optimizer` for `params` from `state_to_leaves` output."""
    template = flatten_paths(optimizer.init(dict(params)))
    missing = [p for p in template.paths if p not in leaves]
    if missing:
        raise OptimizerStateError(f"optimizer state lacks {missing[:3]}; was the checkpoint "
                                  "written by another optimizer?")
    return template.rebuild([leaves[p] for p in template.paths])
