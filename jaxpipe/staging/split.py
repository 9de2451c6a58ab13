"""Cutting a traced model into stages, and running them as one process would."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import jax

from jaxpipe.errors import CutError, VariablesError
from jaxpipe.staging.batch import Batch, batch_size_of
from jaxpipe.staging.bundle import export_bundle
from jaxpipe.staging.reference import micro_batches, run_pipeline
from jaxpipe.staging.stage import MODES, StageProgram, build_stage
from jaxpipe.tree import Array, PyTree, Variables, flatten_paths

if TYPE_CHECKING:  # tracing imports this module to split; at run time split needs no tracing
    from jaxpipe.staging.tracing import Traced

__all__ = ["Staged", "check_cuts", "leaves_by_path"]


def check_cuts(cuts: Iterable[int], num_layers: int) -> tuple[int, ...]:
    """Validates cut points (layer indices where stages 1.. start); lists every problem at once."""
    try:
        cuts = tuple(int(c) for c in cuts)
    except (TypeError, ValueError):
        raise CutError(f"cuts must be a sequence of layer indices; got {cuts!r}") from None
    problems = []
    outside = [c for c in cuts if not 1 <= c < num_layers]
    if outside:
        problems.append(
            f"cuts {outside} are out of range: a cut is a layer index in 1..{num_layers - 1} "
            f"(the model has {num_layers} layers; a cut at 0 would leave stage 0 empty)"
        )
    if list(cuts) != sorted(cuts):
        problems.append(f"cuts {list(cuts)} are not sorted; write them as {sorted(cuts)}")
    duplicated = sorted({c for c in cuts if cuts.count(c) > 1})
    if duplicated:
        problems.append(f"cuts {duplicated} appear more than once (that would be an empty stage)")
    if problems:
        raise CutError("invalid cuts:\n- " + "\n- ".join(problems))
    return cuts


class Staged:
    """A traced model cut into stages. Made by `Traced.split`.

    Attributes:
      cuts: layer indices where stages 1.. start.
      bounds: each stage's layer range [first, stop).
      modes: each stage's mode, "stash", "dots" or "recompute".
    """

    def __init__(self, traced: Traced, cuts: Iterable[int], modes: str | Sequence[str] = "stash"):
        self.traced = traced
        self.cuts = check_cuts(cuts, len(traced.layers))
        edges = (0, *self.cuts, len(traced.layers))
        self.bounds = tuple(itertools.pairwise(edges))
        self.modes = _check_modes(modes, len(self.bounds))
        self._stages: dict[int, tuple[StageProgram, ...]] = {}

    @property
    def num_stages(self) -> int:
        return len(self.bounds)

    def stages(self, micro_batch: int) -> tuple[StageProgram, ...]:
        """The stage programs for micro-batches of `micro_batch` samples (built once, cached)."""
        if micro_batch not in self._stages:
            program = self.traced.program(micro_batch)
            self._stages[micro_batch] = tuple(
                build_stage(program, self.traced.params.paths, self.traced.state.paths,
                            k, first, stop, mode)
                for k, ((first, stop), mode) in enumerate(zip(self.bounds, self.modes))
            )
        return self._stages[micro_batch]

    def value_and_grad(
        self, variables: Variables, batch: Batch, micro_batches: int = 1
    ) -> tuple[jax.Array, PyTree, dict[str, PyTree]]:
        """Loss, parameter gradients and new state of one batch, run stage by stage.

        Args:
          variables: `params` and state collections, structured as at trace time; for an NNX
            model, the module itself (its current parameters and state are used).
          batch: `(inputs, targets)`, structured as at trace time, any batch size.
          micro_batches: M, which must divide the batch size.

        Returns:
          (loss, grads, new_state): the mean loss over the batch, gradients shaped like
          `variables["params"]`, and the state collections after the M forward passes (NNX:
          `nnx.State`s shaped like `nnx.state(model, nnx.Param)` and the non-parameter state).
          Stacked leaves of unrolled scans are stacked back (`staging.unroll`).
        """
        traced = self.traced
        batch_size_of(batch)  # a clear error if the leaves disagree, before any work
        data = micro_batches_of(traced, batch, micro_batches)
        user_params, user_state = traced.user_leaves(variables)
        p_unstack, s_unstack = traced.unstacking
        params = dict(zip(traced.params.paths, p_unstack.expand(user_params)))
        state = dict(zip(traced.state.paths, s_unstack.expand(user_state)))
        stages = self.stages(batch_size_of(batch) // micro_batches)
        loss, grads, new_state = run_pipeline(stages, params, state, data)
        return (loss, *traced.user_trees(
            p_unstack.collapse([grads[p] for p in traced.params.paths]),
            s_unstack.collapse([new_state[p] for p in traced.state.paths])))

    def export(self, micro_batch: int | None = None) -> bytes:
        """The stage bundle (`jax.export`-ed programs plus a JSON manifest) as bytes.

        `micro_batch` defaults to the batch size the model was traced with; a loaded bundle runs
        batches of any multiple of it.
        """
        return export_bundle(self, micro_batch or self.traced.batch_size)


def micro_batches_of(traced: Traced, batch: Batch, count: int) -> list[list[Array]]:
    """Checks `batch` against the trace and splits it into `count` micro-batches of data leaves."""
    inputs = traced.inputs.leaves_of(batch[0], "the batch's inputs")
    targets = traced.targets.leaves_of(batch[1], "the batch's targets")
    return micro_batches([*inputs, *targets], traced.rng_keys, count)


def leaves_by_path(tree: PyTree, prefix: str, paths: tuple[str, ...], what: str) -> list[Array]:
    """The leaves of `tree` (paths under `prefix`), which must be exactly `paths`, in order."""
    flat = flatten_paths(tree, prefix)
    if flat.paths != paths:
        missing = sorted(set(paths) - set(flat.paths))
        extra = sorted(set(flat.paths) - set(paths))
        raise VariablesError(
            f"{what} does not match the traced model: missing {missing[:5]}, unexpected "
            f"{extra[:5]}; pass variables shaped like the ones given to jaxpipe.trace"
        )
    return list(flat.leaves)


def _check_modes(modes: str | Sequence[str], count: int) -> tuple[str, ...]:
    modes = (modes,) * count if isinstance(modes, str) else tuple(modes)
    bad = [m for m in modes if m not in MODES]
    if len(modes) != count or bad:
        raise CutError(
            f"modes must be one of {MODES} or a list of {count} of them (one per stage); "
            f"got {modes!r}"
        )
    return modes

