"""Tracing a Flax model's training loss into a jaxpr, and finding the layers it can be cut at.

`trace` turns `loss_fn(model.apply(variables, inputs), targets)` into one jaxpr whose inputs are,
in order, the parameter leaves, the state leaves (collections other than `params`, such as
BatchNorm's `batch_stats`), and the data leaves (inputs, targets, PRNG keys), and whose outputs
are the loss followed by the new state leaves.

A *layer* is a run of equations under one top-level submodule. Flax writes the module path into
each equation's name stack (`Net/block0/Dense_0`): the first part, the one most equations share,
is the model, and the second part names the layer. Consecutive equations with the same second part
form one layer; a submodule that runs again after another one starts a new layer, `block0#2`.
Equations outside any submodule (glue in the top-level `__call__`, the loss) are placed so:
those before the first layer join the first, those after the last layer join the last, and the
cut between two layers goes at the point in the glue between them where the fewest bytes are
live (on a tie, the latest point, so the glue joins the layer before).

Values flow between layers like this (layer index i, equation index e, boundary b_i after layer i):

    data ─▶ [layer 0] ─b_0─▶ [layer 1] ─b_1─▶ ... ─▶ [layer L-1] ─▶ loss
                 params_0        params_1                 params_{L-1}

b_i holds every value defined at or before layer i and used after it: activations, skip
connections, masks, targets and keys that later layers read.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import jax
import numpy as np
from jax.typing import ArrayLike

from jaxpipe import _jax_compat as jc
from jaxpipe.errors import BatchError, NoLayersError, TraceError, VariablesError
from jaxpipe.staging.batch import Batch, Rngs, batch_size_of, raw_key
from jaxpipe.staging.split import Staged
from jaxpipe.tree import Array, Flat, PyTree, Variables, flatten_paths

if TYPE_CHECKING:  # only for types: running a stage bundle must not need flax
    import flax.linen as nn

__all__ = ["Layer", "LossFn", "Traced", "trace"]

LossFn = Callable[[PyTree, PyTree], jax.Array]
"""`loss_fn(outputs, targets) -> scalar`: the model's outputs and the targets to the mean loss."""


@dataclass(frozen=True)
class Layer:
    """One cut unit: the equations under one top-level submodule, and what a cut after it ships.

    Attributes:
      index: position in `Traced.layers`.
      name: the submodule's name (`block0`); a module that runs twice apart gets `name#2`.
      param_paths: the parameters its equations read, as `params/block0/Dense_0/kernel`.
      param_bytes: their total size, in bytes.
      boundary_bytes_per_sample: bytes of the values live across a cut placed right after this
        layer, per sample (values with a leading batch axis).
      boundary_bytes_fixed: bytes of such values without a batch axis (PRNG keys, scalars).
    """

    index: int
    name: str
    param_paths: tuple[str, ...]
    param_bytes: int
    boundary_bytes_per_sample: float
    boundary_bytes_fixed: int


@dataclass(frozen=True, eq=False)
class Program:
    """The traced loss at one batch size, with its layers and the liveness the splitter needs.

    `def_layer[v]` is the layer that defines pipeline value v (-1 for data leaves) and
    `last_use[v]` the last layer that reads it (`num_layers` for the loss).
    """

    jaxpr: jc.Jaxpr
    consts: tuple[ArrayLike, ...]
    param_vars: tuple[jc.Var, ...]
    state_vars: tuple[jc.Var, ...]
    data_vars: tuple[jc.Var, ...]
    loss_var: jc.Var
    new_state_atoms: tuple[jc.Atom, ...]
    bounds: tuple[tuple[int, int], ...]  # equation range [start, stop) of each layer
    names: tuple[str, ...]
    order: Mapping[jc.Var, int]  # creation order of pipeline values, for stable layouts
    def_layer: Mapping[jc.Var, int]
    last_use: Mapping[jc.Var, int]
    differentiable: frozenset[jc.Var]  # float values that depend on parameters
    batch_size: int

    @property
    def num_layers(self) -> int:
        return len(self.bounds)

    def live_before(self, layer: int) -> list[jc.Var]:
        """Pipeline values that cross into `layer` from the layers (or data) before it."""
        live = [
            v for v, d in self.def_layer.items() if d < layer <= self.last_use.get(v, -2)
        ]
        return sorted(live, key=self.order.__getitem__)

    def equations(self, first: int, stop: int) -> list[jc.JaxprEqn]:
        """The equations of layers [first, stop)."""
        return self.jaxpr.eqns[self.bounds[first][0] : self.bounds[stop - 1][1]]


class Traced:
    """A Flax model's loss, traced and cut into layers. Made by `trace`; cut with `split`."""

    def __init__(
        self,
        model: nn.Module,
        variables: Variables,
        batch: Batch,
        loss_fn: LossFn,
        rngs: Rngs | None,
    ):
        if not isinstance(batch, tuple | list) or len(batch) != 2:
            raise BatchError("batch must be a pair (inputs, targets); got " + type(batch).__name__)
        if "params" not in variables:
            raise VariablesError(
                f"variables has no 'params' collection (it has {sorted(variables)}); pass the "
                "dict returned by model.init"
            )
        self.model = model
        self.loss_fn = loss_fn
        self.params = flatten_paths(variables["params"], "params")
        self.state = flatten_paths({k: v for k, v in variables.items() if k != "params"})
        self.state_collections = tuple(sorted(k for k in variables if k != "params"))
        self.inputs = flatten_paths(batch[0], "inputs")
        self.targets = flatten_paths(batch[1], "targets")
        self.batch_size = batch_size_of(batch)
        rngs = rngs or {}
        self.rng_names = tuple(sorted(rngs))
        self.rng_keys = tuple(raw_key(rngs[n]) for n in self.rng_names)
        self._programs: dict[int, Program] = {}
        program = self.program(self.batch_size)
        self.layers = _describe_layers(program, self.params)

    # -- the traced program at any batch size --------------------------------------------------

    def program(self, batch_size: int) -> Program:
        """The loss traced at `batch_size` (cached); its layers must match the original trace."""
        if batch_size not in self._programs:
            program = self._trace(batch_size)
            if self._programs:
                first = next(iter(self._programs.values()))
                # Equation counts may differ (JAX drops no-op broadcasts at size 1); the
                # layers, which cuts index, must not.
                if first.names != program.names:
                    raise TraceError(
                        f"the model's structure changes with the batch size ({first.batch_size} "
                        f"-> {batch_size}); JaxPipe needs the same layers at every micro-batch size"
                    )
            self._programs[batch_size] = program
        return self._programs[batch_size]

    def data_specs(self, batch_size: int) -> list[jax.ShapeDtypeStruct]:
        """Shapes of the data leaves (inputs, targets, keys) of a batch of `batch_size`."""
        batched = [*self.inputs.leaves, *self.targets.leaves]
        specs = [jax.ShapeDtypeStruct((batch_size, *np.shape(x)[1:]), x.dtype) for x in batched]
        return specs + [jax.ShapeDtypeStruct(k.shape, k.dtype) for k in self.rng_keys]

    def _trace(self, batch_size: int) -> Program:
        fn = functools.partial(
            _flat_loss, self.model, self.loss_fn, self.params, self.state,
            self.state_collections, self.inputs, self.targets, self.rng_names,
        )
        data = self.data_specs(batch_size)
        n_in = len(self.inputs.leaves)
        n_tg = len(self.targets.leaves)
        closed = jax.make_jaxpr(fn)(
            _specs(self.params.leaves), _specs(self.state.leaves),
            data[:n_in], data[n_in : n_in + n_tg], data[n_in + n_tg :],
        )
        return _analyse(closed, len(self.params.leaves), len(self.state.leaves), batch_size)

    # -- splitting -----------------------------------------------------------------------------

    def split(self, cuts: Sequence[int], modes: str | Sequence[str] = "stash") -> Staged:
        """Cuts the model into stages; `cuts` are the sorted layer indices where stages start.

        `modes` is `"stash"` (forward keeps residuals for backward) or `"recompute"` (forward
        keeps only its inputs; backward re-runs it), for all stages or one per stage.
        """
        return Staged(self, cuts, modes)


def trace(
    model: nn.Module,
    variables: Variables,
    batch: Batch,
    loss_fn: LossFn,
    rngs: Rngs | None = None,
) -> Traced:
    """Traces `loss_fn(model.apply(variables, inputs), targets)` and finds its layers.

    Args:
      model: a `flax.linen.Module` whose `__call__` takes the inputs pytree.
      variables: the dict from `model.init`: `params`, and state collections such as
        `batch_stats`, which the forward pass updates (`mutable=True`).
      batch: `(inputs, targets)`, every leaf with the same leading batch size.
      loss_fn: `loss_fn(outputs, targets) -> scalar`, the mean over the batch.
      rngs: optional PRNG keys by collection name (e.g. `{"dropout": key}`).

    Returns:
      Traced: with `.layers` (the cut units) and `.split(cuts)`.

    Raises:
      NoLayersError: no equation lies under a top-level submodule (a `TraceError`).
      TraceError: the loss does not depend on the model.
      VariablesError: `variables` has no `params` collection.
      BatchError: `batch` is not a pair, or its leaves disagree on the batch size.
    """
    return Traced(model, variables, batch, loss_fn, rngs)


def _specs(leaves: Sequence[Array]) -> list[jax.ShapeDtypeStruct]:
    return [jax.ShapeDtypeStruct(np.shape(x), x.dtype) for x in leaves]


def _flat_loss(
    model: nn.Module, loss_fn: LossFn, params: Flat, state: Flat, collections: tuple[str, ...],
    inputs: Flat, targets: Flat, rng_names: tuple[str, ...], p: Sequence[jax.Array],
    s: Sequence[jax.Array], x: Sequence[jax.Array], y: Sequence[jax.Array],
    keys: Sequence[jax.Array],
) -> tuple[jax.Array, list[jax.Array]]:
    """The loss over flat leaves: (params, state, inputs, targets, keys) -> (loss, new state)."""
    variables = {"params": params.rebuild(p), **state.rebuild(s)}
    rngs = dict(zip(rng_names, keys)) or None
    if collections:
        out, new_state = model.apply(
            variables, inputs.rebuild(x), rngs=rngs, mutable=list(collections)
        )
        new_leaves = state.leaves_of(dict(new_state), what="the state returned by model.apply")
    else:
        out, new_leaves = model.apply(variables, inputs.rebuild(x), rngs=rngs), []
    return loss_fn(out, targets.rebuild(y)), new_leaves


def _analyse(closed: jc.ClosedJaxpr, n_params: int, n_state: int, batch_size: int) -> Program:
    jaxpr = closed.jaxpr
    invars = jaxpr.invars
    params, state, data = (
        invars[:n_params], invars[n_params : n_params + n_state], invars[n_params + n_state :]
    )
    bounds, names = _layer_runs(jaxpr)
    eqn_layer = np.zeros(len(jaxpr.eqns), dtype=int)
    for i, (start, stop) in enumerate(bounds):
        eqn_layer[start:stop] = i

    order: dict[jc.Var, int] = {}
    def_layer: dict[jc.Var, int] = {}
    last_use: dict[jc.Var, int] = {}
    differentiable = set(params)
    for v in data:
        order[v], def_layer[v] = len(order), -1
    for e, eqn in enumerate(jaxpr.eqns):
        layer = int(eqn_layer[e])
        reads = [v for v in eqn.invars if isinstance(v, jc.Var)]
        for v in reads:
            if v in def_layer:
                last_use[v] = layer
        depends = any(v in differentiable for v in reads)
        for v in eqn.outvars:
            order[v], def_layer[v] = len(order), layer
            if depends and jc.is_float(v):
                differentiable.add(v)
    loss = jaxpr.outvars[0]
    if not isinstance(loss, jc.Var) or loss not in def_layer:
        raise TraceError("the loss does not depend on the model; check loss_fn")
    last_use[loss] = len(bounds)
    return Program(
        jaxpr=jaxpr, consts=tuple(closed.consts), param_vars=tuple(params),
        state_vars=tuple(state), data_vars=tuple(data), loss_var=loss,
        new_state_atoms=tuple(jaxpr.outvars[1:]), bounds=tuple(bounds), names=tuple(names),
        order=order, def_layer=def_layer, last_use=last_use,
        differentiable=frozenset(differentiable - set(params)), batch_size=batch_size,
    )


def _layer_runs(jaxpr: jc.Jaxpr) -> tuple[list[tuple[int, int]], list[str]]:
    """Splits equations into runs under one top-level submodule (see the module docstring).

    Glue between two layers goes to whichever side leaves the fewest bytes live across the cut.
    """
    eqns = jaxpr.eqns
    paths = [jc.scope_path(e) for e in eqns]
    roots = [p[0] for p in paths if len(p) >= 2]
    if not roots:
        raise NoLayersError(
            "no equation of the traced loss lies under a submodule of the model, so there is "
            "nothing to cut at; put each block of the network in a named submodule"
        )
    root = max(set(roots), key=roots.count)
    keys = [p[1] if len(p) >= 2 and p[0] == root else None for p in paths]
    live = _live_bytes(jaxpr)
    starts: list[int] = []
    names: list[str] = []
    last_scoped = -1  # the last equation under a layer; set before any glue is placed
    for e, key in enumerate(keys):
        if key is None or (names and key == names[-1]):
            last_scoped = e if key is not None else last_scoped
            continue
        if not starts:
            starts.append(0)
        else:  # the cut goes somewhere in the glue between the two runs
            glue = range(last_scoped + 1, e + 1)
            starts.append(min(glue, key=lambda point: (live[point], -point)))
        names.append(key)
        last_scoped = e
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            names[i] = f"{name}#{seen[name]}"
    bounds = list(zip(starts, starts[1:] + [len(eqns)]))
    return bounds, names


def _live_bytes(jaxpr: jc.Jaxpr) -> np.ndarray:
    """live[e]: bytes of the values defined before equation e and read at or after it."""
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
            nbytes = jc.nbytes(v)
            diff[start] += nbytes
            diff[last[v] + 1] -= nbytes
    return np.cumsum(diff)[: n + 1]


def _describe_layers(program: Program, params: Flat) -> tuple[Layer, ...]:
    """Each layer's parameters and the bytes a cut right after it would carry."""
    b = program.batch_size
    per_sample = np.zeros(program.num_layers)
    fixed = np.zeros(program.num_layers, dtype=np.int64)
    for v, d in program.def_layer.items():
        u = program.last_use.get(v)
        if u is None or u <= max(d, 0):
            continue
        nbytes = jc.nbytes(v)
        crosses = slice(max(d, 0), u)  # boundaries after layers d..u-1
        shape = jc.aval_of(v).shape
        if shape and shape[0] == b:
            per_sample[crosses] += nbytes / b
        else:
            fixed[crosses] += nbytes
    path_of = dict(zip(program.param_vars, params.paths))
    layers = []
    for i, (start, stop) in enumerate(program.bounds):
        used = {v for eqn in program.jaxpr.eqns[start:stop] for v in eqn.invars
                if isinstance(v, jc.Var) and v in path_of}
        ordered = [v for v in program.param_vars if v in used]
        layers.append(Layer(
            index=i, name=program.names[i], param_paths=tuple(path_of[v] for v in ordered),
            param_bytes=sum(jc.nbytes(v) for v in ordered),
            boundary_bytes_per_sample=float(per_sample[i]) if i < program.num_layers - 1 else 0.0,
            boundary_bytes_fixed=int(fixed[i]) if i < program.num_layers - 1 else 0,
        ))
    return tuple(layers)
