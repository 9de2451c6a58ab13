"""Unrolling scans over layers, so that a stack of layers written as one scan can be cut.

A scan over layers (`nn.scan`, `nnx.scan`, or `jax.lax.scan` over stacked weights) is one
equation of the traced loss, and its iterations are the layers. This pass re-traces the loss
with every such scan replaced by its iterations, in order: iteration i runs the scan's body on
the carry of iteration i-1 and on slice i of every scanned input, under the scope
`<scan scope>/<i>`, so each iteration is a scope of its own that the cut-unit rule
(`staging.units`) can choose. The scan scope is the one the scan was traced under followed by
the first scope its body's equations share: `decoder/blocks/3` for `nn.scan(Block)` named
`blocks` in `decoder`, `blocks/3` for an `nnx.scan` over `self.blocks`, `stack/3` for a
`lax.scan` with an unscoped body inside module `stack`.

A *stacked leaf* (a parameter or state leaf that such a scan reads as a scanned input, directly
or through a cast or a PRNG-key wrap) becomes one program input per iteration, named `path[i]`,
so a stage reads, differentiates and updates only its own slices. `Unstacking` maps the user's
leaves to the program's (`expand`) and the program's gradients and new state back to the user's
stacked leaves (`collapse`).

The same re-trace gives every reader of a PRNG key kept as state (an NNX model's `nnx.Rngs`
keys, which enter the program as raw key data) its own `random_wrap`, under the reader's scope,
so that no typed key is live across a cut (a stage border carries arrays only).

A scan stays one equation (one unit; `scan_verdict` says why, and the layer listing shows it)
when it passes no carry from one iteration to the next (a map, not a stack), when none of its
scanned inputs is a stacked parameter (a scan over data or time steps, or weights shared by all
iterations), or when it runs fewer than two iterations. Blocks under `jax.checkpoint` /
`nn.remat` are single equations too and are left as they are, so they rematerialise inside
their stage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxpipe import _jax_compat as jc
from jaxpipe.staging.units import common_scope
from jaxpipe.tree import Flat

__all__ = ["Unrolled", "Unstacking", "scan_notes", "scan_verdict", "unroll_scans",
           "unrolled_program"]

Path = tuple[str, ...]

# Primitives that act on each slice of a stacked value alone, so they can run per iteration.
SLICEWISE = frozenset({"convert_element_type", "random_wrap", "random_unwrap", "copy",
                       "copy_p", "reduce_precision"})


@dataclass(frozen=True)
class Unstacking:
    """Which of the user's leaves the program takes as slices along their leading axis.

    Attributes:
      paths: the user's leaf paths, in order.
      counts: per user leaf, 0 (taken whole) or the number of slices n (taken as n leaves
        `path[0]` .. `path[n-1]`).
    """

    paths: tuple[str, ...]
    counts: tuple[int, ...]

    @classmethod
    def whole(cls, paths: Sequence[str]) -> Unstacking:
        return cls(tuple(paths), (0,) * len(paths))

    @classmethod
    def from_dict(cls, paths: Sequence[str], stacked: Mapping[str, int]) -> Unstacking:
        return cls(tuple(paths), tuple(int(stacked.get(p, 0)) for p in paths))

    def to_dict(self) -> dict[str, int]:
        """The stacked leaves only, `{path: slices}`: what a bundle's manifest records."""
        return {p: n for p, n in zip(self.paths, self.counts) if n}

    @property
    def program_paths(self) -> tuple[str, ...]:
        return tuple(q for p, n in zip(self.paths, self.counts)
                     for q in ([f"{p}[{i}]" for i in range(n)] if n else [p]))

    def flat(self, flat: Flat) -> Flat:
        """The program's leaves of the user's `flat`: itself, or a flat list of slices."""
        if not any(self.counts):
            return flat
        leaves = self.expand(flat.leaves)
        return Flat(self.program_paths, tuple(leaves), jax.tree.structure(leaves))

    def expand(self, leaves: Sequence[Any]) -> list[Any]:
        """The program's leaves from the user's (stacked leaves sliced)."""
        out: list[Any] = []
        for x, n in zip(leaves, self.counts):
            out += [_slice(x, i) for i in range(n)] if n else [x]
        return out

    def collapse(self, leaves: Sequence[Any]) -> list[Any]:
        """The user's leaves from the program's (slices stacked back)."""
        it = iter(leaves)
        return [jnp.stack([next(it) for _ in range(n)]) if n else next(it) for n in self.counts]


def _slice(x: Any, i: int) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct):  # variables sized by `jax.eval_shape`
        return jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
    return x[i]


def scan_verdict(eqn: jc.JaxprEqn, origin: Callable[[jc.Atom], jc.Atom],
                 params: Sequence[jc.Var]) -> str | None:
    """None if scan equation `eqn` is a scan over layers to unroll; otherwise why it is kept.

    `origin(x)` follows a value back through slicewise primitives to where it came from.
    """
    parts = jc.scan_parts(eqn)
    assert parts is not None
    if parts.length < 2:
        return f"a scan of {parts.length} iteration, kept whole"
    if parts.num_carry == 0:
        return (f"a scan of {parts.length} iterations kept whole: it carries nothing from one "
                "iteration to the next, so it is a map, not a stack of layers")
    xs = eqn.invars[parts.num_consts + parts.num_carry:]
    if not any(origin(x) in set(params) for x in xs):
        return (f"a scan of {parts.length} iterations kept whole: none of its scanned inputs is "
                "a stacked parameter (a scan over data or time steps, or with weights shared "
                "by every iteration), so its iterations are not layers")
    return None


def origins(jaxpr: jc.Jaxpr) -> Callable[[jc.Atom], jc.Atom]:
    """`origin(x)`: the value `x` is computed from through slicewise primitives only."""
    producer = {v: e for e in jaxpr.eqns for v in e.outvars}

    def origin(x: jc.Atom) -> jc.Atom:
        while isinstance(x, jc.Var) and x in producer and \
                producer[x].primitive.name in SLICEWISE and len(producer[x].invars) == 1:
            x = producer[x].invars[0]
        return x

    return origin


def scan_notes(jaxpr: jc.Jaxpr, n_params: int) -> dict[int, str]:
    """For every top-level scan of `jaxpr` kept whole, by equation index: why."""
    origin = origins(jaxpr)
    params = jaxpr.invars[:n_params]
    notes = {}
    for e, eqn in enumerate(jaxpr.eqns):
        if jc.scan_parts(eqn) is not None:
            verdict = scan_verdict(eqn, origin, params)
            notes[e] = verdict or "a scan over layers left whole"
    return notes


def unroll_scans(closed: jc.ClosedJaxpr, n_params: int, n_state: int) -> Unrolled | None:
    """Re-traces `closed` with its scans over layers unrolled (and key state rewrapped at
    each use); None if there is nothing to do.

    `closed` takes (params, state, data) leaves and returns (loss, new state leaves); see the
    module docstring for what the unrolled program takes and returns.
    """
    jaxpr = closed.jaxpr
    origin = origins(jaxpr)
    params = jaxpr.invars[:n_params]
    leaves = jaxpr.invars[: n_params + n_state]
    plan: dict[int, jc.ScanParts] = {}
    counts: dict[jc.Var, int] = {}
    for e, eqn in enumerate(jaxpr.eqns):
        parts = jc.scan_parts(eqn)
        if parts is None or scan_verdict(eqn, origin, params) is not None:
            continue
        plan[e] = parts
        for x in eqn.invars[parts.num_consts + parts.num_carry:]:
            v = origin(x)
            if v in set(leaves) and isinstance(v, jc.Var):
                counts.setdefault(v, parts.length)
    # PRNG keys kept as state (NNX's `nnx.Rngs`) enter as raw key data, wrapped once at the
    # top; each reader gets its own wrap, inside its unit, so no typed key crosses a cut.
    state_leaves = set(jaxpr.invars[n_params : n_params + n_state])
    rewrap = {e for e, eqn in enumerate(jaxpr.eqns) if eqn.primitive.name == "random_wrap"
              and eqn.invars and eqn.invars[0] in state_leaves}
    if not plan and not rewrap:
        return None
    slices = tuple(counts.get(v, 0) for v in leaves)
    specs = [jax.ShapeDtypeStruct(v.aval.shape[1:] if n else v.aval.shape, v.aval.dtype)
             for v, n in zip(leaves, slices) for _ in range(max(n, 1))]
    data = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype)
            for v in jaxpr.invars[n_params + n_state:]]
    n_prog = sum(max(n, 1) for n in slices[:n_params])

    unroller = _Unroller(closed, plan, slices, rewrap)

    def run(p: list[Any], s: list[Any], d: list[Any]) -> tuple[Any, list[Any]]:
        return unroller.run([*p, *s], d, n_state)

    unrolled = jax.make_jaxpr(run)(specs[:n_prog], specs[n_prog:], data)
    return Unrolled(unrolled, slices[:n_params], slices[n_params:],
                    tuple(dict.fromkeys(unroller.scopes)))


def unrolled_program(closed: jc.ClosedJaxpr, param_paths: Sequence[str],
                     state_paths: Sequence[str],
                     ) -> tuple[jc.ClosedJaxpr, tuple[Unstacking, Unstacking], tuple[Path, ...]]:
    """`unroll_scans` of a loss over the user's leaves at `param_paths` and `state_paths`: the
    program, how its parameter and state leaves come from the user's, and the unrolled scans'
    scopes (`closed` itself, whole leaves and no scopes when there is nothing to unroll)."""
    unrolled = unroll_scans(closed, len(param_paths), len(state_paths))
    if unrolled is None:
        return closed, (Unstacking.whole(param_paths), Unstacking.whole(state_paths)), ()
    return unrolled.closed, (Unstacking(tuple(param_paths), unrolled.param_slices),
                             Unstacking(tuple(state_paths), unrolled.state_slices)), \
        unrolled.scopes


class Unrolled(NamedTuple):
    """The unrolled program; the slice count of every parameter and state leaf (0: taken
    whole); and each unrolled scan's scope (full path), whose children are its iterations."""

    closed: jc.ClosedJaxpr
    param_slices: tuple[int, ...]
    state_slices: tuple[int, ...]
    scopes: tuple[Path, ...]


class _Stacked:
    """A value stacked along axis 0, kept as its slices until something needs it whole.

    Slice i is computed on first use, under the name stack in force then (inside iteration i,
    when a scan reads it) or the one it was made under (`stacks[i]`, for a scan's outputs).
    """

    def __init__(self, make: list[Callable[[], Any]], stacks: list[Any]):
        self.make, self.stacks = make, stacks
        self.done: dict[int, Any] = {}
        self.full: Any = None

    @classmethod
    def of(cls, values: list[Any], stacks: list[Any]) -> _Stacked:
        return cls([lambda v=v: v for v in values], stacks)

    def __len__(self) -> int:
        return len(self.make)

    def slice(self, i: int, own_stack: bool = False) -> Any:
        if i not in self.done:
            if own_stack and self.stacks[i] is not None:
                with jc.under_name_stack(self.stacks[i]):
                    self.done[i] = self.make[i]()
            else:
                self.done[i] = self.make[i]()
        return self.done[i]

    def map(self, eqn: jc.JaxprEqn) -> _Stacked:
        def make(i: int) -> Callable[[], Any]:
            return lambda: jc.bind_equation(eqn, [self.slice(i)],
                                            jc.current_name_stack() + jc.name_stack_of(eqn))[0]
        return _Stacked([make(i) for i in range(len(self))], self.stacks)

    def whole(self) -> Any:
        if self.full is None:
            self.full = jnp.stack([self.slice(i) for i in range(len(self))])
        return self.full


class _Rewrap(NamedTuple):
    """A PRNG key wrapped from raw key data, wrapped again where each reader needs it."""

    eqn: jc.JaxprEqn
    raw: Any


def _whole(x: Any, stack: Any = None) -> Any:
    if isinstance(x, _Rewrap):
        return jc.bind_equation(x.eqn, [x.raw], stack or jc.current_name_stack())[0]
    return x.whole() if isinstance(x, _Stacked) else x


class _Unroller:
    """Evaluates the traced loss equation by equation, scans over layers one iteration at a
    time (the environment-and-read/write loop of `jax.core.eval_jaxpr`)."""

    def __init__(self, closed: jc.ClosedJaxpr, plan: Mapping[int, jc.ScanParts],
                 slices: Sequence[int], rewrap: set[int]):
        self.closed, self.plan, self.slices, self.rewrap = closed, plan, slices, rewrap
        # Slicewise equations applied to a scan's outputs (a PRNG key unwrapped as new state)
        # run inside the iteration that made each slice, not after the loss: by equation index.
        self.consumers: dict[jc.Var, list[int]] = {}
        for e, eqn in enumerate(closed.jaxpr.eqns):
            if eqn.primitive.name in SLICEWISE and len(eqn.invars) == 1 and \
                    isinstance(eqn.invars[0], jc.Var):
                self.consumers.setdefault(eqn.invars[0], []).append(e)
        self.early: dict[tuple[int, int], Any] = {}  # (equation, iteration) -> its result
        self.scopes: list[tuple[str, ...]] = []  # of the unrolled scans

    def run(self, leaves: list[Any], data: list[Any], n_state: int) -> tuple[Any, list[Any]]:
        jaxpr = self.closed.jaxpr
        env: dict[jc.Var, Any] = dict(zip(jaxpr.constvars, self.closed.consts))
        it = iter(leaves)
        for v, n in zip(jaxpr.invars, self.slices):
            env[v] = _Stacked.of([next(it) for _ in range(n)], [None] * n) if n else next(it)
        env.update(zip(jaxpr.invars[len(self.slices):], data))

        def read(a: jc.Atom) -> Any:
            return a.val if isinstance(a, jc.Literal) else env[a]

        for e, eqn in enumerate(jaxpr.eqns):
            args = [read(a) for a in eqn.invars]
            if e in self.plan:
                outs = self.unroll(eqn, self.plan[e], args)
            elif e in self.rewrap and not isinstance(args[0], _Stacked):
                outs = [_Rewrap(eqn, args[0])]
            elif eqn.primitive.name == "random_unwrap" and isinstance(args[0], _Rewrap):
                outs = [args[0].raw]
            elif eqn.primitive.name in SLICEWISE and len(args) == 1 and \
                    isinstance(args[0], _Stacked):
                n = len(args[0])
                if all((e, i) in self.early for i in range(n)):
                    outs = [_Stacked.of([self.early[e, i] for i in range(n)], args[0].stacks)]
                else:
                    outs = [args[0].map(eqn)]
            else:
                stack = jc.current_name_stack() + jc.name_stack_of(eqn)
                outs = jc.bind_equation(eqn, [_whole(a, stack) for a in args], stack)
            env.update(zip(eqn.outvars, outs))
        loss = _whole(read(jaxpr.outvars[0]))
        new_state: list[Any] = []
        for atom, n in zip(jaxpr.outvars[1:], self.slices[len(self.slices) - n_state:]):
            value = read(atom)
            if not n:
                new_state.append(_whole(value))
            elif isinstance(value, _Stacked) and len(value) == n:
                new_state += [value.slice(i, own_stack=True) for i in range(n)]
            else:
                new_state += [_whole(value)[i] for i in range(n)]
        return loss, new_state

    def unroll(self, eqn: jc.JaxprEqn, parts: jc.ScanParts, args: list[Any]) -> list[Any]:
        """The scan `eqn` as its iterations; results: final carry, then the stacked outputs."""
        nc, ncarry, length = parts.num_consts, parts.num_carry, parts.length
        consts = [_whole(a) for a in args[:nc]]
        carry = [_whole(a) for a in args[nc:nc + ncarry]]
        xs = args[nc + ncarry:]
        body = parts.body.jaxpr
        inner = common_scope(body.eqns)
        head = inner[:1]  # the scanned module's scope (`blocks`), if the body has one
        outer = jc.current_name_stack() + jc.name_stack_of(eqn)
        self.scopes.append(tuple(p for p in str(jc.extend_name_stack(outer, head)).split("/") if p))
        ys: list[list[Any]] = [[None] * length for _ in body.outvars[ncarry:]]
        stacks: list[Any] = [None] * length
        for i in (reversed(range(length)) if parts.reverse else range(length)):
            stacks[i] = stack = jc.extend_name_stack(outer, [*head, str(i)])
            with jc.under_name_stack(stack):
                x_i = [x.slice(i) if isinstance(x, _Stacked) and len(x) == length
                       else jax.lax.index_in_dim(_whole(x), i, keepdims=False) for x in xs]
                benv: dict[jc.Var, Any] = dict(zip(body.constvars, parts.body.consts))
                benv.update(zip(body.invars, [*consts, *carry, *x_i]))

                def read(a: jc.Atom, benv: dict[jc.Var, Any] = benv) -> Any:
                    return a.val if isinstance(a, jc.Literal) else benv[a]

                for beqn in body.eqns:
                    inner_stack = jc.name_stack_of(beqn)
                    if head:
                        inner_stack = jc.drop_leading_scope(inner_stack, head[0])
                    benv.update(zip(beqn.outvars, jc.bind_equation(
                        beqn, [read(a) for a in beqn.invars], stack + inner_stack)))
                results = [read(a) for a in body.outvars]
                for var, y in zip(eqn.outvars[ncarry:], results[ncarry:]):
                    self.apply_early(var, y, i, stack)
            carry = results[:ncarry]
            for k, y in enumerate(results[ncarry:]):
                ys[k][i] = y
        return [*carry, *(_Stacked.of(y, stacks) for y in ys)]

    def apply_early(self, var: jc.Var, value: Any, i: int, stack: Any) -> None:
        """Runs the slicewise equations reading scan output `var` on its slice i, now."""
        for e in self.consumers.get(var, []):
            eqn = self.closed.jaxpr.eqns[e]
            self.early[e, i] = out = jc.bind_equation(eqn, [value], stack)[0]
            self.apply_early(eqn.outvars[0], out, i, stack)
