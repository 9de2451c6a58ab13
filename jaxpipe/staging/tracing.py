"""Tracing a Flax model's training loss into a jaxpr, and finding the layers it can be cut at.

`trace` turns `loss_fn(model.apply(variables, inputs), targets)` into one jaxpr whose inputs are,
in order, the parameter leaves, the state leaves (collections other than `params`, such as
BatchNorm's `batch_stats`), and the data leaves (inputs, targets, PRNG keys), and whose outputs
are the loss followed by the new state leaves.

A *layer* is a run of equations under one cut unit, a scope of the model. Flax writes the module
path into each equation's name stack (`Net/decoder/block0/Dense_0`; the first part, the one most
equations share, is the model); JaxPipe writes NNX modules' attribute paths itself
(`staging.nnx_trace`), and scans over layers are unrolled first (`staging.unroll`). Which scopes
are units (the model's children, or deeper where they hold most of the work, or as `layers=`
says) is `staging.units`' rule; a layer is named by its unit's path (`decoder/block3`).
Consecutive equations of one unit form one layer; a unit that runs again after another one starts
a new layer, `block0#2`. Equations outside any unit (glue in a `__call__`, the loss) are placed
so: those before the first layer join the first, those after the last layer join the last, and
the cut between two layers goes at the point in the glue between them where the fewest bytes are
live (on a tie, the latest point, so the glue joins the layer before).

Values flow between layers like this (layer index i, equation index e, boundary b_i after layer i):

    data ─▶ [layer 0] ─b_0─▶ [layer 1] ─b_1─▶ ... ─▶ [layer L-1] ─▶ loss
                 params_0        params_1                 params_{L-1}

b_i holds every value defined at or before layer i and used after it: activations, skip
connections, masks, targets and keys that later layers read.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import jax
import numpy as np
from jax.typing import ArrayLike

from jaxpipe import _jax_compat as jc
from jaxpipe.errors import BatchError, ModelKindError, TraceError, VariablesError
from jaxpipe.staging import units
from jaxpipe.staging.batch import Batch, Rngs, batch_size_of, raw_key
from jaxpipe.staging.split import Staged, leaves_by_path
from jaxpipe.staging.unroll import Unstacking, scan_notes, unrolled_program
from jaxpipe.tree import Array, Flat, PyTree, Variables, flatten_paths

if TYPE_CHECKING:  # only for types: running a stage bundle must not need flax
    import flax.linen as nn
    from flax import nnx

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
      note: why a scan in it was kept whole (not cut between iterations), or "".
    """

    index: int
    name: str
    param_paths: tuple[str, ...]
    param_bytes: int
    boundary_bytes_per_sample: float
    boundary_bytes_fixed: int
    note: str = ""


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
    notes: tuple[str, ...] = ()  # per layer: why a scan in it stays whole
    units: tuple[tuple[str, ...], ...] = ()  # the cut units chosen (scope paths)

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
        layers: units.Layers = None,
    ):
        _check_batch(batch)
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
        rngs = rngs or {}
        self.rng_names = tuple(sorted(rngs))
        self.rng_keys = tuple(raw_key(rngs[n]) for n in self.rng_names)
        self._start(batch, layers)

    strip_root = True  # linen name stacks start with the model's own name

    def _start(self, batch: Batch, layers: units.Layers) -> None:
        """Traces at the batch's size and finds the layers; `params`/`state` become the
        program's leaves (stacked leaves as slices, `unstacking`), `user_params`/`user_state`
        stay the user's."""
        self.inputs = flatten_paths(batch[0], "inputs")
        self.targets = flatten_paths(batch[1], "targets")
        self.batch_size = batch_size_of(batch)
        self.layer_rule = layers
        self.user_params, self.user_state = self.params, self.state
        self.unstacking = (Unstacking.whole(self.params.paths), Unstacking.whole(self.state.paths))
        self._programs: dict[int, Program] = {}
        program = self.program(self.batch_size)
        self.params, self.state = (u.flat(flat) for flat, u in
                                   zip((self.params, self.state), self.unstacking))
        self.layers = _describe_layers(program, self.params)

    def user_leaves(self, variables: Variables) -> tuple[list[Array], list[Array]]:
        """The user's parameter and state leaves in `variables`, checked against the trace."""
        params = leaves_by_path(variables["params"], "params", self.user_params.paths,
                                "variables['params']")
        state = leaves_by_path({k: v for k, v in variables.items() if k != "params"}, "",
                               self.user_state.paths, "the state collections of variables")
        return params, state

    def user_trees(self, grads: Sequence[Array], state: Sequence[Array]) -> tuple[PyTree, PyTree]:
        """Gradients shaped like `variables["params"]`, new state like the state collections."""
        return self.user_params.rebuild(grads), self.user_state.rebuild(state)

    def _flat_fn(self) -> Callable[..., tuple[jax.Array, list[jax.Array]]]:
        return functools.partial(
            _flat_loss, self.model, self.loss_fn, self.user_params, self.user_state,
            self.state_collections, self.inputs, self.targets, self.rng_names,
        )

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
        data = self.data_specs(batch_size)
        n_in = len(self.inputs.leaves)
        n_tg = len(self.targets.leaves)
        with jax.disable_jit(False):  # the same program inside `jax.disable_jit()` blocks
            closed = jax.make_jaxpr(self._flat_fn())(
                _specs(self.user_params.leaves), _specs(self.user_state.leaves),
                data[:n_in], data[n_in : n_in + n_tg], data[n_in + n_tg :],
            )
            closed, found, scopes = unrolled_program(closed, self.user_params.paths,
                                                     self.user_state.paths)
        if self._programs and found != self.unstacking:
            raise TraceError(f"the model's scans change with the batch size (at {batch_size})")
        self.unstacking = found
        n_params, n_state = (len(u.program_paths) for u in self.unstacking)
        # Units are chosen once, at the first trace: work shares shift a little with the size.
        rule = next(iter(self._programs.values())).units if self._programs else self.layer_rule
        return _analyse(closed, n_params, n_state, batch_size, rule, self.strip_root, scopes)

    # -- splitting -----------------------------------------------------------------------------

    def split(self, cuts: Sequence[int], modes: str | Sequence[str] = "stash") -> Staged:
        """Cuts the model into stages; `cuts` are the sorted layer indices where stages start.

        `modes` is `"stash"` (forward keeps residuals for backward), `"dots"` (forward keeps only
        matmul and convolution outputs; backward recomputes the elementwise ops) or
        `"recompute"` (forward keeps only its inputs; backward re-runs it), for all stages or
        one per stage.
        """
        return Staged(self, cuts, modes)


def trace(
    model: nn.Module | nnx.Module,
    variables: Variables | None,
    batch: Batch,
    loss_fn: LossFn,
    rngs: Rngs | None = None,
    layers: units.Layers = None,
) -> Traced:
    """Traces `loss_fn(model.apply(variables, inputs), targets)` and finds its layers.

    Args:
      model: a `flax.linen.Module` whose `__call__` takes the inputs pytree, or a
        `flax.nnx.Module` (called as `model(inputs)`; see `staging.nnx_trace`).
      variables: the dict from `model.init`: `params`, and state collections such as
        `batch_stats`, which the forward pass updates (`mutable=True`); None for NNX.
      batch: `(inputs, targets)`, every leaf with the same leading batch size.
      loss_fn: `loss_fn(outputs, targets) -> scalar`, the mean over the batch.
      rngs: optional PRNG keys by collection name (e.g. `{"dropout": key}`); linen only.
      layers: which scopes are cut units: None (automatic, `staging.units`), a depth (1: the
        model's children), or scope patterns (`"decoder/block_*"`, or a list of them).

    Returns:
      Traced: with `.layers` (the cut units) and `.split(cuts)`.

    Raises:
      NoLayersError: no equation lies under a submodule (a `TraceError`).
      LayersPatternError: `layers` is a bad depth or a pattern matching no scope.
      ModelKindError: `model` is neither a linen nor an NNX module.
      TraceError: the loss does not depend on the model.
      VariablesError: `variables` has no `params` collection.
      BatchError: `batch` is not a pair, or its leaves disagree on the batch size.
    """
    nnx_lib, linen = (sys.modules.get(m) for m in ("flax.nnx", "flax.linen"))
    if nnx_lib is not None and isinstance(model, nnx_lib.Module):
        from jaxpipe.staging.nnx_trace import NnxTraced

        return NnxTraced(cast("nnx.Module", model), variables, batch, loss_fn, rngs, layers)
    if linen is None or not isinstance(model, linen.Module):
        raise ModelKindError(f"jaxpipe.trace needs a flax.linen or flax.nnx Module; got "
                             f"{type(model).__module__}.{type(model).__qualname__}")
    if variables is None:
        raise VariablesError("a linen model needs its variables: pass the dict model.init "
                             "returned (only an NNX module holds its own)")
    return Traced(cast("nn.Module", model), variables, batch, loss_fn, rngs, layers)


def _check_batch(batch: Batch) -> None:
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        raise BatchError("batch must be a pair (inputs, targets); got " + type(batch).__name__)


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


def _analyse(closed: jc.ClosedJaxpr, n_params: int, n_state: int, batch_size: int,
             layers: units.Layers = None, strip_root: bool = True,
             scans: Sequence[tuple[str, ...]] = ()) -> Program:
    jaxpr = closed.jaxpr
    invars = jaxpr.invars
    params, state, data = (
        invars[:n_params], invars[n_params : n_params + n_state], invars[n_params + n_state :]
    )
    paths, iterated = units.scope_paths(jaxpr.eqns, strip_root, scans)
    chosen = units.choose_units(paths, [units.equation_flops(e) for e in jaxpr.eqns], layers,
                                iterated)
    bounds, names = units.layer_runs(paths, chosen, units.live_bytes(jaxpr))
    eqn_layer = np.zeros(len(jaxpr.eqns), dtype=int)
    for i, (start, stop) in enumerate(bounds):
        eqn_layer[start:stop] = i
    kept = scan_notes(jaxpr, n_params)
    notes = ["; ".join(n for e, n in kept.items() if start <= e < stop) for start, stop in bounds]

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
        notes=tuple(notes), units=tuple(chosen),
    )


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
            note=program.notes[i] if program.notes else "",
        ))
    return tuple(layers)
