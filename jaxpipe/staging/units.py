"""Choosing a model's cut units from the scopes its equations were traced under.

A *scope path* names the module an equation ran in, below the model itself: linen's name stack
`LM/decoder/block_3/attention` gives ('decoder', 'block_3', 'attention'); an NNX model gives
attribute paths such as ('blocks', '2', 'conv'), which JaxPipe writes while tracing
(`nnx_trace`). An equation holding a sub-program (a `jax.checkpoint` / `nn.remat` block, a
`jit`, a scan kept whole) lies at its own scope extended by the scope its inner equations share,
so a rematerialised block is one equation of its block's scope and stays one unit.

The scopes form a tree whose nodes are every prefix of every path. A *cut unit* is a node; an
equation belongs to the deepest unit its path lies under, or to none (glue). The units are:

- automatic (`layers=None`): start from the model's child scopes; then, as long as some unit
  holds more than half of the whole loss's work (`DESCEND_SHARE`; work is the FLOPs estimate
  of `equation_flops`) and has at least two child scopes, replace it by its children (its own
  equations become glue between them). A nested LM (`decoder` -> embed, blocks, norm, head) is
  cut at its blocks; a model whose children each hold at most half keeps them (the zoo);
- a depth (`layers=2`): every scope at that depth, and every shallower scope without children;
- scope patterns (`layers="decoder/block_*"`, or a sequence of them): the scopes whose path
  matches a pattern component by component (`fnmatch` per component, so `*` never crosses a
  `/`). Equations outside every matched scope are glue.

Layers are then runs of equations of one unit, in program order; a unit that runs twice apart
gets `name#2`. Glue between two runs goes where the fewest bytes cross (`layer_runs`).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Collection, Sequence

import jax
import numpy as np

from jaxpipe import _jax_compat as jc
from jaxpipe.errors import LayersPatternError, NoLayersError

__all__ = ["DESCEND_SHARE", "KEY_WEIGHT", "choose_units", "common_scope", "equation_flops",
           "layer_runs", "live_bytes", "scope_paths"]

Path = tuple[str, ...]
Layers = int | str | Sequence[str] | tuple[Path, ...] | None

DESCEND_SHARE = 0.5
"""A unit holding more than this share of the model's work (and two or more children) is
replaced by its children."""


def scope_paths(eqns: Sequence[jc.JaxprEqn], strip_root: bool, scopes: Sequence[Path] = (),
                ) -> tuple[list[Path], list[Path]]:
    """Each equation's scope path below the model (see the module docstring), and `scopes`
    (full paths, such as those of unrolled scans) made relative the same way.

    With `strip_root` (linen, whose name stacks start with the model's own name), the first
    component is the model's when it is the most common first component of paths that go
    deeper; equations under another first component, or directly under the model, get ().
    """
    paths = [_full_path(e) for e in eqns]
    if not strip_root:
        return paths, list(scopes)
    roots = [p[0] for p in paths if len(p) >= 2]
    root = max(set(roots), key=roots.count) if roots else None
    return [p[1:] if p and p[0] == root else () for p in [*paths, *scopes]][: len(paths)], \
        [p[1:] for p in scopes if p and p[0] == root]


def common_scope(eqns: Sequence[jc.JaxprEqn]) -> Path:
    """The longest scope path shared by every scoped equation of `eqns` (unscoped ones aside)."""
    shared: Path | None = None
    for eqn in eqns:
        path = _full_path(eqn)
        if not path:
            continue
        if shared is None:
            shared = path
        else:
            n = 0
            while n < min(len(shared), len(path)) and shared[n] == path[n]:
                n += 1
            shared = shared[:n]
    return shared or ()


def _full_path(eqn: jc.JaxprEqn) -> Path:
    inner = [e for j in jc.sub_jaxprs(eqn) for e in j.eqns]
    return jc.scope_path(eqn) + (common_scope(inner) if inner else ())


def equation_flops(eqn: jc.JaxprEqn) -> float:
    """Estimated floating-point operations of one equation, the work the depth rule weighs.

    Matrix products and convolutions count 2 * outputs * contraction size; any other primitive
    counts one operation per element of its largest operand or result; a sub-program counts its
    equations (a scan times its length, a `cond` its costliest branch).
    """
    subs = jc.sub_jaxprs(eqn)
    if subs:
        costs = [sum(equation_flops(e) for e in j.eqns) for j in subs]
        name = eqn.primitive.name
        if name == "cond":
            return max(costs)
        return sum(costs) * (eqn.params.get("length", 1) if name == "scan" else 1)
    out = sum(_size(v) for v in eqn.outvars)
    if eqn.primitive.name == "dot_general":
        (contract, _), _ = eqn.params["dimension_numbers"]
        lhs = _shape(eqn.invars[0])
        return 2.0 * out * math.prod(lhs[d] for d in contract)
    if eqn.primitive.name == "conv_general_dilated":
        rhs = _shape(eqn.invars[1])
        out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
        return 2.0 * out * math.prod(rhs) / max(out_features, 1)
    return float(max(out, *(_size(v) for v in eqn.invars))) if eqn.invars else float(out)


def _shape(v: jc.Atom) -> tuple[int, ...]:
    return tuple(getattr(v.aval, "shape", ()))


def _size(v: jc.Atom) -> int:
    return math.prod(_shape(v))


def choose_units(paths: Sequence[Path], flops: Sequence[float], layers: Layers,
                 iterated: Collection[Path] = ()) -> list[Path]:
    """The cut units (scope paths), by the rule `layers` names (see the module docstring).

    `iterated` are the scopes of unrolled scans: their children are their iterations (`0`,
    `1`, ...) only; equations the scan's module ran outside its body (Flax hoists loop
    invariants out of `nn.scan`) are glue.

    Raises:
      NoLayersError: no equation lies under any scope of the model.
      LayersPatternError: `layers` is a bad depth, or a pattern matches no scope; the message
        lists the scopes that exist.
    """
    nodes = _tree(paths, flops, set(iterated))
    top = _children(nodes, ())
    if not top:
        raise NoLayersError(
            f"none of the traced loss's {len(paths)} equations lies under a submodule of the "
            "model (found only the model's own equations), so there is nothing to cut at; put "
            "each block of the network in a named submodule, or pass layers= to name scopes")
    if layers is None:
        return _descend(nodes, top, float(sum(flops)))
    if layers and isinstance(layers, tuple) and all(isinstance(u, tuple) for u in layers):
        return [tuple(u) for u in layers]  # units chosen before (`Program.units`)
    if isinstance(layers, bool) or not isinstance(layers, int | str | Sequence):
        raise LayersPatternError(f"layers must be a depth (int) or scope patterns; got "
                                 f"{layers!r}")
    if isinstance(layers, int):
        if layers < 1:
            raise LayersPatternError(f"layers={layers}: a depth counts from 1 (the model's "
                                     "children)")
        return [p for p in nodes if len(p) == layers
                or (len(p) < layers and not _children(nodes, p))]
    patterns = [layers] if isinstance(layers, str) else [p for p in layers if isinstance(p, str)]
    if not patterns or len(patterns) != (1 if isinstance(layers, str) else len(layers)):
        raise LayersPatternError(f"layers must be a depth (int) or scope patterns (str); got "
                                 f"{layers!r}")
    units: list[Path] = []
    unmatched: list[str] = []
    for pattern in patterns:
        parts = tuple(pattern.strip("/").split("/"))
        found = [p for p in nodes if len(p) == len(parts)
                 and all(fnmatch.fnmatchcase(a, b) for a, b in zip(p, parts))]
        units += [p for p in found if p not in units]
        if not found:
            unmatched.append(pattern)
    if unmatched:
        listing = "\n".join(f"  {'/'.join(p)}" for p in nodes)
        raise LayersPatternError(f"layers pattern(s) {unmatched} match no scope of the model; "
                                 f"its scopes are:\n{listing}")
    return units


def _tree(paths: Sequence[Path], flops: Sequence[float], iterated: set[Path],
          ) -> dict[Path, float]:
    """Every scope node (in first-seen order) with the work of the equations under it."""
    nodes: dict[Path, float] = {}
    for path, work in zip(paths, flops):
        for depth in range(1, len(path) + 1):
            if path[: depth - 1] in iterated and not path[depth - 1].isdigit():
                break  # outside the scan's iterations: glue of the scan's module
            nodes[path[:depth]] = nodes.get(path[:depth], 0.0) + work
    return nodes


def _children(nodes: dict[Path, float], parent: Path) -> list[Path]:
    return [p for p in nodes if len(p) == len(parent) + 1 and p[: len(parent)] == parent]


def _descend(nodes: dict[Path, float], units: list[Path], total: float) -> list[Path]:
    while True:
        big = [u for u in units
               if nodes[u] > DESCEND_SHARE * total and len(_children(nodes, u)) >= 2]
        if not big:
            return units
        units = [c for u in units for c in (_children(nodes, u) if u in big else [u])]


def layer_runs(paths: Sequence[Path], units: Sequence[Path], live: np.ndarray,
               ) -> tuple[list[tuple[int, int]], list[str]]:
    """Splits equations into runs under one unit each: their bounds [start, stop) and names.

    `live[e]` is the bytes live across a cut placed before equation e; glue between two runs
    goes to whichever side leaves the fewest bytes live across the cut (the later point on a
    tie), glue before the first run joins it and glue after the last joins that.
    """
    chosen = set(units)
    keys: list[Path | None] = []
    for path in paths:
        key = next((path[:d] for d in range(len(path), 0, -1) if path[:d] in chosen), None)
        keys.append(key)
    starts: list[int] = []
    run_keys: list[Path] = []
    last_scoped = -1
    for e, key in enumerate(keys):
        if key is None or (run_keys and key == run_keys[-1]):
            last_scoped = e if key is not None else last_scoped
            continue
        if not starts:
            starts.append(0)
        else:  # the cut goes somewhere in the glue between the two runs
            glue = range(last_scoped + 1, e + 1)
            starts.append(min(glue, key=lambda point: (live[point], -point)))
        run_keys.append(key)
        last_scoped = e
    names = ["/".join(k) for k in run_keys]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            names[i] = f"{name}#{seen[name]}"
    return list(zip(starts, starts[1:] + [len(paths)])), names


KEY_WEIGHT = 2.0 ** 50
"""What a live typed PRNG key weighs in `live_bytes`: a stage border cannot carry one (it is no
array to export or send), so glue is cut anywhere else first (e.g. after Flax's `nn.scan` has
split and unwrapped the dropout key, not between its wrap and split)."""


def live_bytes(jaxpr: jc.Jaxpr) -> np.ndarray:
    """live[e]: bytes of the values defined before equation e and read at or after it (a typed
    PRNG key weighs `KEY_WEIGHT`)."""
    n = len(jaxpr.eqns)
    defined = {v: 0 for v in jaxpr.invars}
    last: dict[jc.Var, int] = {}
    for e, eqn in enumerate(jaxpr.eqns):
        for v in eqn.invars:
            if isinstance(v, jc.Var):
                last[v] = e
        for v in eqn.outvars:
            defined[v] = e + 1
    for v in jaxpr.outvars:
        if isinstance(v, jc.Var):
            last[v] = n
    diff = np.zeros(n + 2)
    for v, start in defined.items():
        if v in last and last[v] >= start:
            is_key = jax.numpy.issubdtype(jc.aval_of(v).dtype, jax.dtypes.prng_key)
            nbytes = KEY_WEIGHT if is_key else jc.nbytes(v)
            diff[start] += nbytes
            diff[last[v] + 1] -= nbytes
    return np.cumsum(diff)[: n + 1]
