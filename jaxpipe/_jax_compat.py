"""Every use of JAX internals lives here, so a JAX upgrade touches one file.

JaxPipe reads jaxprs (variables, literals, equations and their name stacks) and re-evaluates
slices of them; those types and the evaluation loop are not part of JAX's stable API.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import cast

import jax
from jax._src import core as jax_core
from jax._src import source_info_util
from jax.core import ShapedArray, Tracer
from jax.extend.core import ClosedJaxpr, Jaxpr, JaxprEqn, Literal, Var
from jax.typing import ArrayLike

__all__ = [
    "Atom",
    "ClosedJaxpr",
    "Jaxpr",
    "JaxprEqn",
    "Literal",
    "NameStack",
    "ScanParts",
    "ShapedArray",
    "Tracer",
    "Var",
    "aval_of",
    "bind_equation",
    "current_name_stack",
    "drop_leading_scope",
    "eval_equations",
    "extend_name_stack",
    "is_float",
    "name_stack_of",
    "nbytes",
    "scan_parts",
    "scope_path",
    "sub_jaxprs",
    "traced_at",
    "under_name_stack",
]

Atom = Var | Literal
"""An equation's operand or a jaxpr's output: a variable, or a literal constant."""


def scope_path(eqn: JaxprEqn) -> tuple[str, ...]:
    """The module path an equation was traced under, e.g. ('Net', 'block0', 'Dense_0')."""
    text = str(eqn.source_info.name_stack)
    return tuple(part for part in text.split("/") if part)


def aval_of(v: Var) -> ShapedArray:
    """The shape and dtype of `v`.

    JAX types `Var.aval` as the `AbstractValue` base class; every value of the array programs
    JaxPipe traces is a `ShapedArray`, so this only tells the type checker so.
    """
    return cast(ShapedArray, v.aval)


def nbytes(v: Var) -> int:
    """The size of `v`'s value, in bytes."""
    aval = aval_of(v)
    return int(math.prod(aval.shape)) * aval.dtype.itemsize


def eval_equations(
    eqns: Sequence[JaxprEqn],
    env: Mapping[Var, ArrayLike],
    outputs: Iterable[Atom],
) -> list[ArrayLike]:
    """Evaluates `eqns` in order on the values bound in `env`, returning the values of `outputs`.

    This is `jax.core.eval_jaxpr`'s loop applied to a slice of a jaxpr's equations. Because it
    binds primitives, it traces like any JAX code: under `jit`, `vjp` or `export`.
    """
    env = dict(env)

    def read(atom: Atom) -> ArrayLike:
        return atom.val if isinstance(atom, Literal) else env[atom]

    for eqn in eqns:
        params = eqn.primitive.get_bind_params(eqn.params)
        name_stack = source_info_util.current_name_stack() + eqn.source_info.name_stack
        with (source_info_util.user_context(eqn.source_info.traceback, name_stack=name_stack),
              eqn.ctx.manager):
            ans = eqn.primitive.bind(*[read(v) for v in eqn.invars], **params)
        if eqn.primitive.multiple_results:
            env.update(zip(eqn.outvars, ans))
        else:
            env[eqn.outvars[0]] = ans
    return [read(v) for v in outputs]


def is_float(v: Var) -> bool:
    """Whether `v`'s values carry cotangents."""
    return jax.numpy.issubdtype(aval_of(v).dtype, jax.numpy.inexact)


# -- sub-programs, scans and name stacks (`staging.units`, `staging.unroll`) --------------------

NameStack = source_info_util.NameStack
"""The scopes an equation was traced under, outermost first (`str()` joins them with '/')."""


def sub_jaxprs(eqn: JaxprEqn) -> list[Jaxpr]:
    """The programs an equation holds: a scan's body, a remat block, a jit's callee, branches."""
    return list(jax_core.jaxprs_in_params(eqn.params))


@dataclass(frozen=True)
class ScanParts:
    """A `lax.scan` equation's parameters: its operands are `num_consts` constants, then
    `num_carry` carried values, then the scanned inputs (`xs`), sliced along axis 0; its results
    are the final carry, then the stacked per-iteration outputs (`ys`)."""

    body: ClosedJaxpr
    num_consts: int
    num_carry: int
    length: int
    reverse: bool


def scan_parts(eqn: JaxprEqn) -> ScanParts | None:
    """The parts of a scan equation; None for any other primitive."""
    if eqn.primitive.name != "scan":
        return None
    p = eqn.params
    return ScanParts(p["jaxpr"], p["num_consts"], p["num_carry"], p["length"], p["reverse"])


def current_name_stack() -> NameStack:
    """The name stack new equations are traced under right now."""
    return source_info_util.current_name_stack()


def name_stack_of(eqn: JaxprEqn) -> NameStack:
    """The name stack `eqn` was traced under (relative to its enclosing program)."""
    return eqn.source_info.name_stack


def extend_name_stack(stack: NameStack, names: Sequence[str]) -> NameStack:
    """`stack` with the scopes `names` pushed, in order."""
    for name in names:
        stack = stack.extend(name)
    return stack


def drop_leading_scope(stack: NameStack, name: str) -> NameStack:
    """`stack` without its outermost scope when that scope is `name`."""
    first = stack.stack[0] if stack.stack else None
    if isinstance(first, source_info_util.Scope) and first.name == name:
        return NameStack(stack.stack[1:])
    return stack


def under_name_stack(stack: NameStack) -> AbstractContextManager[object]:
    """A context in which new equations are traced under exactly `stack`."""
    return source_info_util.set_name_stack(stack)


def bind_equation(eqn: JaxprEqn, args: Sequence[ArrayLike], stack: NameStack) -> list[ArrayLike]:
    """Binds `eqn`'s primitive on `args`, its new equations traced under `stack`; its results."""
    params = eqn.primitive.get_bind_params(eqn.params)
    with (source_info_util.user_context(eqn.source_info.traceback, name_stack=stack),
          eqn.ctx.manager):
        ans = eqn.primitive.bind(*args, **params)
    return list(ans) if eqn.primitive.multiple_results else [ans]


# -- where an equation came from (`runtime.optimizer`'s coupling errors) --------------------------

def traced_at(eqn: JaxprEqn) -> str:
    """Where `eqn` was traced: its innermost user frame as `file:line (qualified function)`,
    e.g. `opt.py:12:8 (scale_by_max.<locals>.update_fn)`, with its name stack if it has one."""
    where = source_info_util.summarize(eqn.source_info)
    stack = str(eqn.source_info.name_stack)
    return f"{where} under {stack}" if stack else where
