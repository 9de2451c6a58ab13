"""Any optax optimizer as exported per-stage programs: workers run it without the user's code.

`compile_optimizer` traces `optimizer.init` and `optimizer.update` (then `optax.apply_updates`)
on the whole model's parameter tree, finds with `runtime.coupling` which stages every output
leaf depends on, and exports (`jax.export`) for every stage k an archive (no pickle) of

    manifest.json       per stage: parameter paths, state paths with shapes, the exchange
    stage<k>/init       params -> state                        stage k's state leaves
    stage<k>/update     grads, state, params, exchanged -> (new params, new state)
    stage<k>/partials   grads, state, params -> [scalar]       only if the update couples

A stage's state is `{path: array}`, the paths those of the whole model's optimizer state
(`jaxpipe.tree.flatten_paths` of `optimizer.init(params)`): the leaves it owns, plus a copy of
every leaf that depends on no parameter (step counts). When the update couples stages through
sums of per-stage terms (global-norm clipping), every stage computes its `partials`, the ranks
add them over the stages in stage order (`sum_partials`, so every rank adds the same floats in
the same order) and pass the totals as `exchanged`; otherwise `exchanged` is empty.

The optimizer sees the parameters nested as the user's model holds them (`params/a/b` becomes
`{"a": {"b": ...}}`), so masks and labels written for the model's tree apply unchanged.
"""

from __future__ import annotations

import functools
import io
import json
import math
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import export as jax_export

from jaxpipe._jax_compat import Atom, ClosedJaxpr, Var, aval_of, eval_equations
from jaxpipe.errors import CouplingError, OptimizerStateError, StructureError, TiedParameterError
from jaxpipe.runtime import optim
from jaxpipe.runtime.coupling import Analysis, analyse, label_of, propagate
from jaxpipe.runtime.job import JobSpec
from jaxpipe.tree import Array, Flat, flatten_paths, nest
from transports import ObjectStore

__all__ = ["OptimizerPrograms", "StageOptimizer", "compile_optimizer", "load_optimizer",
           "stage_optimizer", "state_slots", "sum_partials"]

FORMAT = "jaxpipe-optimizer/1"


@dataclass(frozen=True)
class _Layout:
    """The whole model's parameters as the optimizer sees them, and each leaf's stage."""

    flat: Flat  # the tree optax sees; its paths are the stages' paths
    stage_of: dict[str, int]
    strip: str

    @classmethod
    def of(cls, stage_params: Sequence[Mapping[str, Any]], nested: bool = True) -> _Layout:
        union: dict[str, jax.ShapeDtypeStruct] = {}
        stage_of: dict[str, int] = {}
        for k, params in enumerate(stage_params):
            for path, x in params.items():
                if path in stage_of:
                    raise TiedParameterError(f"parameter {path} is in stages {stage_of[path]} "
                                             f"and {k}; each parameter must live in one stage")
                stage_of[path] = k
                union[path] = jax.ShapeDtypeStruct(np.shape(x), x.dtype)
        strip = "params" if nested and union and all(p.startswith("params/") for p in union) else ""
        flat = flatten_paths(nest(union, strip=strip) if nested else union, prefix=strip)
        if set(flat.paths) != set(union):
            raise StructureError(f"parameter paths {sorted(union)[:5]} do not nest into a tree")
        return cls(flat, stage_of, strip)

    @property
    def paths(self) -> tuple[str, ...]:
        return self.flat.paths

    def tree(self, leaves: Sequence[Any]) -> Any:
        return self.flat.rebuild(list(leaves))

    def leaves(self, tree: Any) -> list[Any]:
        return self.flat.leaves_of(tree, "the optimizer's new parameters")


def state_slots(optimizer: optax.GradientTransformation, params: Mapping[str, Any]) -> int:
    """The optimizer's state per parameter, in parameter-sized slots rounded up (the planner's
    `Problem.optimizer_slots`), from the traced init; scalar leaves (step counts) are not
    counted.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> params = {"params/w": jnp.zeros((3, 2))}
      >>> state_slots(optax.adam(1e-3), params), state_slots(optax.sgd(0.1), params)
      (2, 0)
    """
    layout = _Layout.of([params])
    state = jax.eval_shape(optimizer.init, layout.tree(layout.flat.leaves))
    state_bytes = sum(_nbytes(x) for x in jax.tree.leaves(state) if np.shape(x) != ())
    param_bytes = sum(_nbytes(x) for x in layout.flat.leaves)
    return math.ceil(state_bytes / param_bytes - 1e-9) if param_bytes else 0


def compile_optimizer(optimizer: optax.GradientTransformation,
                      stage_params: Sequence[Mapping[str, jax.Array | jax.ShapeDtypeStruct]], *,
                      nested: bool = True) -> OptimizerPrograms:
    """Traces `optimizer` on the union of the stages' parameters and exports it per stage.

    Args:
      optimizer: any optax transformation taking (grads, state, params).
      stage_params: per stage, its parameters `{path: array}` (only shapes and dtypes count).
      nested: give optax the parameters nested by path (as the model holds them); False gives
        it the flat `{path: array}` dict (jobs written before these programs existed).

    Returns:
      OptimizerPrograms: every stage's `init`, `update` and, if needed, `partials`.

    Raises:
      CouplingError: the update couples stages other than through sums of per-stage terms;
        the message names the output leaves affected and where the coupling was traced.
    """
    layout = _Layout.of(stage_params, nested)
    params = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in layout.flat.leaves]
    init = jax.make_jaxpr(lambda *p: jax.tree.leaves(optimizer.init(layout.tree(p))))(*params)
    state = flatten_paths(jax.eval_shape(optimizer.init, layout.tree(params)))

    def step(grads: list[Any], opt_state: list[Any], values: list[Any]) -> list[Any]:
        p = layout.tree(values)
        updates, new_state = optimizer.update(layout.tree(grads), state.rebuild(opt_state), p)
        new = layout.leaves(optax.apply_updates(p, updates))
        return new + state.leaves_of(new_state, "the optimizer's new state")

    update = jax.make_jaxpr(step)(params, list(state.leaves), params)
    stages = [layout.stage_of[p] for p in layout.paths]
    own = [frozenset({k}) for k in stages]
    init_deps = propagate(init.jaxpr, own)
    init_labels = [label_of(init_deps, out) for out in init.jaxpr.outvars]
    found = analyse(update.jaxpr, stages, init_labels, layout.paths, state.paths)
    if found.refusal:
        *leaves, last = found.refusal
        shown = leaves[:8] + ([f"... and {len(leaves) - 8} more leaves"] if len(leaves) > 8
                              else []) + [last]
        raise CouplingError("the optimizer's update couples parameters of different stages "
                            "other than through sums of per-stage terms:\n- " + "\n- ".join(shown))
    return _export(layout, stage_params, init, update, state, found)


def _export(layout: _Layout, stage_params: Sequence[Mapping[str, Any]], init: ClosedJaxpr,
            update: ClosedJaxpr, state: Flat, found: Analysis) -> OptimizerPrograms:
    n, s = len(layout.paths), len(state.paths)
    g_in, s_in, p_in = (update.jaxpr.invars[:n], update.jaxpr.invars[n:n + s],
                        update.jaxpr.invars[n + s:])
    index = {p: i for i, p in enumerate(layout.paths)}
    exchanged = list(found.exchanged)
    x_specs = [jax.ShapeDtypeStruct((), aval_of(v).dtype) for v in exchanged]
    stages, programs = [], {}
    for k, params in enumerate(stage_params):
        mine = [index[p] for p in params]
        held = [i for i, label in enumerate(found.state_labels) if label <= {k}]
        p_specs = [jax.ShapeDtypeStruct(np.shape(x), x.dtype) for x in params.values()]
        s_specs = [state.leaves[i] for i in held]
        inputs = [g_in[i] for i in mine] + [s_in[i] for i in held] + [p_in[i] for i in mine]
        outputs = [update.jaxpr.outvars[i] for i in mine] + [update.jaxpr.outvars[n + i]
                                                              for i in held]
        run_update = _slice(update, inputs + exchanged, outputs, k)
        run_init = _slice(init, [init.jaxpr.invars[i] for i in mine],
                          [init.jaxpr.outvars[i] for i in held], k)

        def init_k(p: list[Any], run: Callable = run_init) -> list[Any]:
            return run(p)

        def update_k(g: list[Any], st: list[Any], p: list[Any], x: list[Any],
                     run: Callable = run_update, split: int = len(mine)) -> tuple[list, list]:
            out = run([*g, *st, *p, *x])
            return out[:split], out[split:]

        programs[f"stage{k}/init"] = _serialize(init_k, p_specs)
        programs[f"stage{k}/update"] = _serialize(update_k, p_specs, s_specs, p_specs, x_specs)
        if exchanged:
            groups = [[t for t in found.terms[v] if _owner(found, t) == k] for v in exchanged]
            run_terms = _slice(update, inputs, [t for group in groups for t in group], k)

            def partials_k(g: list[Any], st: list[Any], p: list[Any], run: Callable = run_terms,
                           sizes: tuple[int, ...] = tuple(map(len, groups))) -> list[Any]:
                values, out = run([*g, *st, *p]), []
                for spec, size in zip(x_specs, sizes, strict=True):
                    part, values = values[:size], values[size:]
                    out.append(functools.reduce(jnp.add, part, jnp.zeros((), spec.dtype)))
                return out

            programs[f"stage{k}/partials"] = _serialize(partials_k, p_specs, s_specs, p_specs)
        stages.append({"param_paths": list(params),
                       "state": {state.paths[i]: _entry(state.leaves[i]) for i in held}})
    manifest = {"format": FORMAT, "stages": stages,
                "exchange": [str(spec.dtype) for spec in x_specs]}
    return OptimizerPrograms(manifest, programs)


def _owner(found: Analysis, term: Atom) -> int:
    """The stage whose partial holds `term`: its own, or stage 0 for terms on no stage."""
    label = label_of(found.deps, term)
    return min(label) if label else 0


def _slice(closed: ClosedJaxpr, given: Sequence[Var], outputs: Sequence[Atom], stage: int,
           ) -> Callable[[Sequence[Any]], list[Any]]:
    """The equations of `closed` that compute `outputs` from `given` (and its constants)."""
    jaxpr = closed.jaxpr
    available = set(given) | set(jaxpr.constvars)
    needed = {o for o in outputs if isinstance(o, Var)} - available
    eqns = []
    for eqn in reversed(jaxpr.eqns):
        if any(o in needed for o in eqn.outvars):
            eqns.append(eqn)
            needed.difference_update(eqn.outvars)
            needed.update(v for v in eqn.invars if isinstance(v, Var) and v not in available)
    if needed:  # what `analyse` accepted never reads another stage; a second exchange would
        raise CouplingError(f"stage {stage}'s optimizer programs would need values of other "
                            "stages (a sum that needs an exchanged sum, i.e. a second exchange "
                            "within one iteration, is not supported)")
    eqns.reverse()
    consts = dict(zip(jaxpr.constvars, closed.consts, strict=True))

    def run(args: Sequence[Any]) -> list[Any]:
        return list(eval_equations(eqns, {**consts, **dict(zip(given, args, strict=True))},
                                   outputs))

    return run


def _serialize(fn: Callable[..., Any], *specs: Sequence[jax.ShapeDtypeStruct]) -> bytes:
    return bytes(jax_export.export(jax.jit(fn))(*[list(s) for s in specs]).serialize())


@dataclass(frozen=True)
class OptimizerPrograms:
    """Every stage's exported optimizer programs (`compile_optimizer`), as stored.

    Attributes:
      manifest: per stage its parameter paths and state leaves; the exchanged scalars' dtypes.
      programs: `stage<k>/init|update|partials` -> `jax.export` bytes.
    """

    manifest: dict[str, Any]
    programs: dict[str, bytes]

    @property
    def num_stages(self) -> int:
        return len(self.manifest["stages"])

    @property
    def needs_exchange(self) -> bool:
        return bool(self.manifest["exchange"])

    def state_bytes(self, stage: int) -> int:
        """The bytes of stage `stage`'s optimizer state (its own leaves and its copies)."""
        return sum(_nbytes(_struct(e)) for e in self.manifest["stages"][stage]["state"].values())

    def export(self) -> bytes:
        """A zip archive of the manifest and the programs (`load_optimizer` reads it)."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
            archive.writestr("manifest.json", json.dumps(self.manifest, indent=1))
            for name, blob in sorted(self.programs.items()):
                archive.writestr(name, blob)
        return buffer.getvalue()


@dataclass(frozen=True)
class StageOptimizer:
    """One stage's optimizer programs, loaded: `{path: array}` in, `{path: array}` out.

    Attributes:
      stage: the stage index.
      param_paths: the stage's parameters, in the programs' order.
      state_specs: the stage's optimizer state leaves by path, in the programs' order.
      exchange: dtypes of the scalars exchanged between stages (empty: no exchange).
    """

    stage: int
    param_paths: tuple[str, ...]
    state_specs: dict[str, jax.ShapeDtypeStruct]
    exchange: tuple[str, ...]
    programs: dict[str, Callable[..., Any]]

    @property
    def needs_exchange(self) -> bool:
        return bool(self.exchange)

    def init(self, params: Mapping[str, Array]) -> dict[str, jax.Array]:
        """The fresh optimizer state of the stage's parameters."""
        return dict(zip(self.state_specs, self.programs["init"](self._of(params))))

    def partials(self, grads: Mapping[str, Array], state: Mapping[str, Array],
                 params: Mapping[str, Array]) -> list[jax.Array]:
        """This stage's terms of every exchanged scalar, summed (one scalar each)."""
        return list(self.programs["partials"](self._of(grads), self._state(state),
                                              self._of(params)))

    def update(self, grads: Mapping[str, Array], state: Mapping[str, Array],
               params: Mapping[str, Array], exchanged: Sequence[Array] | None = None,
               ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """(new params, new state); `exchanged`: the partials summed over every stage."""
        x = list(exchanged or [])
        if len(x) != len(self.exchange):
            raise ValueError(f"stage {self.stage}'s update takes {len(self.exchange)} exchanged "
                             f"scalars, got {len(x)}")
        new_params, new_state = self.programs["update"](
            self._of(grads), self._state(state), self._of(params), x)
        return (dict(zip(self.param_paths, new_params)),
                dict(zip(self.state_specs, new_state)))

    def state_from_leaves(self, leaves: Mapping[str, Any]) -> dict[str, Any]:
        """The stage's state from a checkpoint's `{path: array}`, checked against the specs."""
        missing = [p for p in self.state_specs if p not in leaves]
        wrong = [p for p, spec in self.state_specs.items() if p in leaves
                 and np.shape(leaves[p]) != spec.shape]
        if missing or wrong:
            raise OptimizerStateError(f"optimizer state lacks {missing[:3]} or has other shapes "
                                      f"for {wrong[:3]}; was the checkpoint written by another "
                                      "optimizer?")
        return {p: leaves[p] for p in self.state_specs}

    def _of(self, values: Mapping[str, Array]) -> list[Array]:
        return [values[p] for p in self.param_paths]

    def _state(self, state: Mapping[str, Array]) -> list[Array]:
        return [state[p] for p in self.state_specs]


def load_optimizer(blob: bytes, stage: int) -> StageOptimizer:
    """Loads stage `stage`'s programs from `OptimizerPrograms.export()` bytes."""
    archive = zipfile.ZipFile(io.BytesIO(blob))
    manifest = json.loads(archive.read("manifest.json"))
    if manifest.get("format") != FORMAT:
        raise OptimizerStateError(f"optimizer archive format {manifest.get('format')!r}; this "
                                  f"JaxPipe reads {FORMAT}")
    entry = manifest["stages"][stage]
    names = ["init", "update"] + (["partials"] if manifest["exchange"] else [])
    programs = {name: _as_lists(jax_export.deserialize(
        bytearray(archive.read(f"stage{stage}/{name}"))).call) for name in names}
    return StageOptimizer(stage, tuple(entry["param_paths"]),
                          {p: _struct(e) for p, e in entry["state"].items()},
                          tuple(manifest["exchange"]), programs)


def sum_partials(parts: Sequence[Sequence[Array]]) -> list[np.ndarray]:
    """Every stage's partials added in stage order (the same floats on every rank)."""
    return [np.asarray(functools.reduce(np.add, [np.asarray(p[i]) for p in parts]))
            for i in range(len(parts[0]))]


def _as_lists(call: Callable[..., Any]) -> Callable[..., Any]:
    """Exported programs take lists; jitted so a second call with like arrays compiles nothing."""
    return jax.jit(lambda *args: call(*[list(a) for a in args]))


def _entry(x: jax.ShapeDtypeStruct) -> dict[str, Any]:
    return {"shape": list(x.shape), "dtype": str(x.dtype)}


def _struct(e: Mapping[str, Any]) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(e["shape"]), jnp.dtype(e["dtype"]))


def _nbytes(x: Any) -> int:
    return int(math.prod(np.shape(x))) * jnp.dtype(x.dtype).itemsize



def stage_optimizer(spec: JobSpec, store: ObjectStore, stage: int, param_paths: Sequence[str],
                    shapes: dict[str, Any], timeout: float) -> StageOptimizer:
    """Stage `stage`'s exported optimizer programs; for a job written before them, its
    optimizer by name compiled here for this stage alone (those names are element-wise), on
    the flat `{path: array}` its checkpoints were written with (`shapes`)."""
    if spec.optimizer_programs:
        return load_optimizer(store.get(spec.keys.optimizer, timeout=timeout), stage)
    params = {p: jax.ShapeDtypeStruct(tuple(shapes[p]["shape"]), shapes[p]["dtype"])
              for p in param_paths}
    optimizer = optim.make(spec.optimizer, spec.learning_rate)
    return load_optimizer(compile_optimizer(optimizer, [params], nested=False).export(), 0)
