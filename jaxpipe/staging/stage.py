"""One pipeline stage: a contiguous run of layers as a jitted forward and backward program.

Every stage has the same two programs over flat lists of arrays, so the in-process reference,
an exported bundle and a worker in a serverless function all drive stages the same way:

    forward(params, state, inputs)  -> (outputs, new_state, saved)
    backward(params, saved, output_cotangents) -> (param_grads, input_cotangents)

`inputs`/`outputs` are the values live across the stage's cuts (see `jaxpipe.trace`); the last
stage's only output is the loss. Cotangents travel only for *differentiable* values: floats that
depend on parameters (so masks, labels and keys never send gradients back). `saved` is what the
forward keeps for the backward: the VJP residuals in `stash` mode; in `dots` mode only the
outputs of matrix products and convolutions plus the stage's inputs (the run is under
`jax.checkpoint` with the `dots_saveable` policy, so the backward recomputes the cheap
elementwise ops from them); only the inputs and state in `recompute` mode (the backward then
re-runs the forward under the VJP).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, TypeVar

import jax
import numpy as np
from jax.stages import Wrapped

from jaxpipe import _jax_compat as jc

if TYPE_CHECKING:  # tracing imports split, which imports this module
    from jaxpipe.staging.tracing import Program

__all__ = ["MODES", "StageProgram", "StageSpec", "TensorSpec", "build_stage"]

MODES = ("stash", "dots", "recompute")  # fastest and largest first

_T = TypeVar("_T")


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one array crossing a stage border; `differentiable` if it has a
    cotangent."""

    shape: tuple[int, ...]
    dtype: str
    differentiable: bool = False

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    def struct(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(self.shape, jax.numpy.dtype(self.dtype))

    @classmethod
    def of(cls, aval: jc.ShapedArray | jax.ShapeDtypeStruct,
           differentiable: bool = False) -> TensorSpec:
        return cls(tuple(aval.shape), str(aval.dtype), differentiable)


@dataclass(frozen=True)
class StageSpec:
    """Everything about a stage except its programs; JSON-able, it is the bundle's manifest entry.

    Attributes:
      index: stage number, from 0.
      first_layer, stop_layer: the layer range [first_layer, stop_layer).
      mode: "stash", "dots" or "recompute".
      micro_batch: the batch size its programs were traced at.
      param_paths, state_paths: the parameters and state leaves it reads, by path.
      new_state_paths: the state leaves its forward updates.
      inputs, outputs: the values live across its cuts, in order (outputs of stage k are the
        inputs of stage k+1; the last stage outputs the loss).
      saved: what the forward keeps per micro-batch for the backward.
      input_data: for stage 0, which data leaves (inputs, targets, keys) are its inputs.
    """

    index: int
    first_layer: int
    stop_layer: int
    mode: str
    micro_batch: int
    param_paths: tuple[str, ...]
    state_paths: tuple[str, ...]
    new_state_paths: tuple[str, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    saved: tuple[TensorSpec, ...]
    input_data: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StageSpec:
        tensors = {k: tuple(TensorSpec(tuple(t["shape"]), t["dtype"], t["differentiable"])
                            for t in d[k]) for k in ("inputs", "outputs", "saved")}
        tuples = {k: tuple(d[k]) for k in
                  ("param_paths", "state_paths", "new_state_paths", "input_data")}
        return cls(**{**d, **tensors, **tuples})


@dataclass(frozen=True)
class StageProgram:
    """A stage's spec and its two programs (jitted functions, or jitted `jax.export`-ed calls)."""

    spec: StageSpec
    forward: Wrapped
    backward: Wrapped


def build_stage(program: Program, param_paths: tuple[str, ...], state_paths: tuple[str, ...],
                index: int, first: int, stop: int, mode: str) -> StageProgram:
    """Builds the jitted programs of layers [first, stop) of a traced `Program`."""
    eqns = program.equations(first, stop)
    read = {v for eqn in eqns for v in eqn.invars if isinstance(v, jc.Var)}
    params = [v for v in program.param_vars if v in read]
    state = [v for v in program.state_vars if v in read]
    defined = {v for eqn in eqns for v in eqn.outvars}
    new_state = [(j, v) for j, v in enumerate(program.new_state_atoms) if v in defined]
    inputs = program.live_before(first)
    last = stop == program.num_layers
    outputs = [program.loss_var] if last else program.live_before(stop)
    diff_in = [v in program.differentiable for v in inputs]
    diff_out = [v in program.differentiable for v in outputs]
    consts = dict(zip(program.jaxpr.constvars, program.consts))
    new_state_vars = [v for _, v in new_state]

    def run(p, d_in, nd_in, s):
        env = {**consts, **dict(zip(params, p)), **dict(zip(state, s))}
        env.update(zip(_pick(inputs, diff_in, True), d_in))
        env.update(zip(_pick(inputs, diff_in, False), nd_in))
        values = jc.eval_equations(eqns, env, [*outputs, *new_state_vars])
        outs, new_s = values[: len(outputs)], values[len(outputs):]
        return _pick(outs, diff_out, True), (_pick(outs, diff_out, False), new_s)

    if mode == "dots":
        # Only dot_general and conv_general_dilated outputs (and the run's own arguments) are
        # residuals; `dots_saveable` is the one policy of jax 0.10 that saves both.
        run = jax.checkpoint(run, policy=jax.checkpoint_policies.dots_saveable)
    forward, backward = (_recompute if mode == "recompute" else _stash)(
        run, diff_in, diff_out, [_struct(v) for v in params], [_struct(v) for v in state],
        [_struct(v) for v in inputs])
    saved_shapes = jax.eval_shape(forward, [_struct(v) for v in params],
                                  [_struct(v) for v in state], [_struct(v) for v in inputs])[2]
    spec = StageSpec(
        index=index, first_layer=first, stop_layer=stop, mode=mode,
        micro_batch=program.batch_size,
        param_paths=tuple(param_paths[program.param_vars.index(v)] for v in params),
        state_paths=tuple(state_paths[program.state_vars.index(v)] for v in state),
        new_state_paths=tuple(state_paths[j] for j, _ in new_state),
        inputs=tuple(TensorSpec.of(jc.aval_of(v), d) for v, d in zip(inputs, diff_in)),
        outputs=tuple(TensorSpec.of(jc.aval_of(v), d) for v, d in zip(outputs, diff_out)),
        saved=tuple(TensorSpec.of(s) for s in saved_shapes),
        input_data=tuple(program.data_vars.index(v) for v in inputs) if first == 0 else (),
    )
    return StageProgram(spec, jax.jit(forward), jax.jit(backward))


def _stash(run, diff_in, diff_out, p_specs, s_specs, in_specs):
    """Forward returns the VJP residuals; backward consumes them (`jax.fwd_and_bwd`)."""
    fwd, bwd = jax.fwd_and_bwd(run, argnums=(0, 1), has_aux=True, jitted=False)

    def residuals(p, s, acts):
        return fwd(p, _pick(acts, diff_in, True), _pick(acts, diff_in, False), s)[1]

    # The residuals' structure is fixed when the forward is traced, and the backward needs it
    # to rebuild them from flat leaves. Op-by-op runs (`jax.disable_jit`) may keep fewer
    # residuals than a trace, so the structure is the one of the forward that last ran.
    structure = {"treedef": jax.tree.structure(
        jax.eval_shape(residuals, p_specs, s_specs, in_specs))}

    def forward(p, s, acts):
        d_out, res, (nd_out, new_s) = fwd(
            p, _pick(acts, diff_in, True), _pick(acts, diff_in, False), s)
        leaves, structure["treedef"] = jax.tree.flatten(res)
        return _merge(diff_out, d_out, nd_out), new_s, leaves

    def backward(p, saved, cts):
        del p  # the residuals already hold what the backward needs
        g_params, g_in = bwd(jax.tree.unflatten(structure["treedef"], saved), list(cts))
        return list(g_params), list(g_in)

    return forward, backward


def _recompute(run, diff_in, diff_out, p_specs, s_specs, in_specs):
    """Forward keeps only its inputs and state; backward re-runs the forward under the VJP."""
    n_in = len(in_specs)

    def forward(p, s, acts):
        d_out, (nd_out, new_s) = run(p, _pick(acts, diff_in, True), _pick(acts, diff_in, False), s)
        return _merge(diff_out, d_out, nd_out), new_s, [*acts, *s]

    def backward(p, saved, cts):
        acts, s = saved[:n_in], saved[n_in:]
        nd_in = _pick(acts, diff_in, False)
        _, vjp = jax.vjp(lambda p_, d_: run(p_, d_, nd_in, s)[0], p, _pick(acts, diff_in, True))
        g_params, g_in = vjp(list(cts))
        return list(g_params), list(g_in)

    return forward, backward


def _pick(values: Sequence[_T], mask: Sequence[bool], keep: bool) -> list[_T]:
    """The values whose mask entry is `keep`."""
    return [v for v, m in zip(values, mask) if m == keep]


def _merge(mask: Sequence[bool], yes: Iterable[_T], no: Iterable[_T]) -> list[_T]:
    """Undoes `_pick`: interleaves `yes` (where the mask is true) and `no` (where false)."""
    yes_, no_ = iter(yes), iter(no)
    return [next(yes_) if m else next(no_) for m in mask]


def _struct(v: jc.Var) -> jax.ShapeDtypeStruct:
    aval = jc.aval_of(v)
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype)
