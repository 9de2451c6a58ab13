"""Every use of JAX internals lives here, so a JAX upgrade touches one file.

JaxPipe reads jaxprs (variables, literals, equations and their name stacks) and re-evaluates
slices of them; those types and the evaluation loop are not part of JAX's stable API.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import jax
from jax._src import source_info_util
from jax.extend.core import ClosedJaxpr, Jaxpr, JaxprEqn, Literal, Var

__all__ = ["ClosedJaxpr", "Jaxpr", "JaxprEqn", "Literal", "Var", "eval_equations", "scope_path"]


def scope_path(eqn: JaxprEqn) -> tuple[str, ...]:
    """The module path an equation was traced under, e.g. ('Net', 'block0', 'Dense_0')."""
    text = str(eqn.source_info.name_stack)
    return tuple(part for part in text.split("/") if part)


def eval_equations(
    eqns: Sequence[JaxprEqn],
    env: dict[Var, Any],
    outputs: Iterable[Any],
) -> list[Any]:
    """Evaluates `eqns` in order on the values bound in `env`, returning the values of `outputs`.

    This is `jax.core.eval_jaxpr`'s loop applied to a slice of a jaxpr's equations. Because it
    binds primitives, it traces like any JAX code: under `jit`, `vjp` or `export`.
    """
    env = dict(env)

    def read(atom: Any) -> Any:
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


def is_float(aval: Any) -> bool:
    """Whether values of this abstract type carry cotangents."""
    return jax.numpy.issubdtype(aval.dtype, jax.numpy.inexact)
