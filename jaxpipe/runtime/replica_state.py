"""Model state on a replicated stage: which leaves replicas average, and the counters they set.

Replicas of a stage run their micro-batches (m mod d == replica) from the same state. At the
iteration's all-reduce they average the float state (BatchNorm statistics), as for linen. The
other state is never averaged, since a float mean would corrupt it:

- counters (`staging.counters`: NNX's `RngCount`s, which every forward advances by a constant
  step) are set to `base + m * step` before forward m and to `base + M * step` after the
  iteration, base being the value the iteration started from: exactly the values the unsplit
  model, threading its state through the M micro-batches in order, has at each of them, so
  every replica draws the unsplit model's dropout masks;
- any other non-float leaf (a PRNG key's raw data, which NNX's forward leaves alone) stays as
  each replica has it; replica 0 checkpoints it, so a restart gives every replica replica 0's.

A stage without replicas threads its state and needs none of this.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxpipe.runtime.job import JobSpec
from jaxpipe.staging.counters import advance, is_float_state

__all__ = ["averaged_paths", "set_counters", "stage_counters"]


def stage_counters(spec: JobSpec, state_paths: Sequence[str], new_state_paths: Sequence[str],
                   state: Mapping[str, Any], replicas: int) -> dict[str, np.ndarray]:
    """{path: step} of this stage's counters that it reads and advances ({} without replicas)."""
    if replicas == 1:
        return {}
    mine = set(state_paths) & set(new_state_paths)
    return {p: np.asarray(step, np.asarray(state[p]).dtype)
            for p, step in spec.state_counters.items() if p in mine}


def set_counters(steps: Mapping[str, np.ndarray], base: Mapping[str, Any], times: int,
                 ) -> dict[str, jax.Array]:
    """Every counter at `base + times * step`, committed to the device like the loaded state
    (an uncommitted array would make the next forward compile again)."""
    return {p: jax.device_put(advance(np.asarray(base[p]), step, times), jax.devices()[0])
            for p, step in steps.items()}


def averaged_paths(state_paths: Sequence[str], state: Mapping[str, Any]) -> list[str]:
    """The state leaves replicas average: the floats."""
    return [p for p in state_paths if is_float_state(state[p])]
