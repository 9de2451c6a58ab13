"""Counters among a model's state: integer leaves that every forward pass advances by a constant.

NNX keeps each `nnx.Rngs` stream as a key and a counter (`RngCount`, uint32): drawing a dropout
mask folds the counter into the key and adds one to it. Threaded through M micro-batches in
order, micro-batch m sees the counter at `c + m * step` (`step`: the draws of one forward). A
stage with d replicas runs micro-batch m on replica m mod d, every replica from the same state,
so to draw the unsplit model's masks each replica sets such a counter to `c + m * step` before
forward m and to `c + M * step` at the end of the iteration (`jaxpipe.runtime.rank`).

`counter_steps` finds these leaves in the traced program: the equations an integer new-state
leaf depends on read no parameter, no data and no other state leaf than its own, and evaluated
on the leaf's value they add the same step twice running. Any other non-float state (a key, an
integer that depends on the data) is not a counter; replicas keep their own copies of it and
never average it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from jaxpipe import _jax_compat as jc

if TYPE_CHECKING:
    from jaxpipe.staging.tracing import Traced

__all__ = ["advance", "counter_steps", "is_float_state"]


def is_float_state(value: Any) -> bool:
    """Whether a state leaf is a float (BatchNorm statistics: replicas average those)."""
    dtype = value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype
    return bool(jax.numpy.issubdtype(dtype, jax.numpy.inexact))


def counter_steps(traced: Traced) -> dict[str, np.ndarray]:
    """{state path: step} of the state leaves that are counters (see the module docstring),
    steps of the leaf's dtype and shape; leaves whose step is zero (a forward leaves them alone)
    are left out."""
    program = traced.program(traced.batch_size)
    producer = {v: e for e, eqn in enumerate(program.jaxpr.eqns) for v in eqn.outvars}
    leaves = dict(zip(program.state_vars, traced.state.leaves))
    blocked = {*program.param_vars, *program.data_vars}
    consts = dict(zip(program.jaxpr.constvars, program.consts))
    steps = {}
    for path, var, atom in zip(traced.state.paths, program.state_vars, program.new_state_atoms):
        value = np.asarray(leaves[var])
        if is_float_state(value) or not isinstance(atom, jc.Var):
            continue
        needed = _slice(program.jaxpr.eqns, producer, atom)
        if needed is None:
            continue
        reads = {v for e in needed for v in program.jaxpr.eqns[e].invars
                 if isinstance(v, jc.Var) and v not in producer}
        if reads & blocked or reads - {var} - set(program.jaxpr.constvars):
            continue
        eqns = [program.jaxpr.eqns[e] for e in needed]
        first = _step(eqns, consts, var, atom, value)
        if first.any() and np.array_equal(
                _step(eqns, consts, var, atom, advance(value, first, 1)), first):
            steps[path] = first
    return steps


def _step(eqns: list[jc.JaxprEqn], consts: dict[jc.Var, Any], var: jc.Var, atom: jc.Var,
          x: np.ndarray) -> np.ndarray:
    """What the equations add to the leaf `var` at value x (the update's output minus x)."""
    out = jc.eval_equations(eqns, {**consts, var: x}, [atom])[0]
    return (np.asarray(out).astype(x.dtype) - x).astype(x.dtype)


def advance(base: Any, step: np.ndarray, times: int) -> np.ndarray:
    """`base + times * step` in the counter's own (wrapping) integer arithmetic."""
    base = np.asarray(base)
    return (base + step * np.asarray(times, base.dtype)).astype(base.dtype)


def _slice(eqns: list[jc.JaxprEqn], producer: dict[jc.Var, int], out: jc.Var,
           ) -> list[int] | None:
    """Indices of the equations `out` depends on, in order; None for a jaxpr input."""
    if out not in producer:
        return None
    needed: set[int] = set()
    todo = [out]
    while todo:
        v = todo.pop()
        e = producer.get(v)
        if e is None or e in needed:
            continue
        needed.add(e)
        todo.extend(x for x in eqns[e].invars if isinstance(x, jc.Var))
    return sorted(needed)
