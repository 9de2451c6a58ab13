"""Running stages over micro-batches in one process: the reference the distributed runtime matches.

The order is FuncPipe's (GPipe's): every micro-batch forward through every stage, then every
backward in reverse micro-batch order. With M micro-batches, micro-batch m's loss is a mean over
its b = B/M samples; the backward of the last stage is seeded with 1/M, so the summed parameter
gradients are those of the mean loss over the whole batch, and the reported loss is the mean of
the M micro-batch losses. State (BatchNorm statistics) threads through the micro-batches in order.

    m:      0    1   ...  M-1               M-1  ...   1    0
    stage 0 F -> F  ...   F          ...    B    ...   B    B
    stage S ...           F -> loss  ->     B    ...   B    B
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxpipe.errors import BatchError
from jaxpipe.staging.stage import StageProgram
from jaxpipe.tree import Array

__all__ = ["micro_batches", "run_pipeline"]


def micro_batches(
    batched: Sequence[Array], keys: Sequence[jax.Array], count: int
) -> list[list[Array]]:
    """Splits batched data leaves into `count` micro-batches, each with its own PRNG keys.

    With one micro-batch the keys are used as given (so the result equals the unsplit model's);
    micro-batch m of several gets `fold_in(key, m)`.
    """
    if not isinstance(count, int) or count < 1:
        raise BatchError(f"micro_batches must be a positive integer; got {count!r}")
    size = batched[0].shape[0] if batched else 0
    if size % count:
        raise BatchError(
            f"the batch of {size} samples does not divide into {count} equal micro-batches; "
            f"choose a divisor of {size}"
        )
    b = size // count
    out: list[list[Array]] = []
    for m in range(count):
        data = [x[m * b : (m + 1) * b] for x in batched]
        data += [k if count == 1 else jax.random.fold_in(k, m) for k in keys]
        out.append(data)
    return out


def run_pipeline(
    stages: Sequence[StageProgram],
    params: Mapping[str, Array],
    state: Mapping[str, Array],
    data: Sequence[Sequence[Array]],
) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Array]]:
    """Runs every micro-batch of `data` forward and backward through `stages`.

    Args:
      stages: the stage programs, in order.
      params: every parameter leaf, by path.
      state: every state leaf, by path.
      data: per micro-batch, the data leaves (inputs, targets, keys) in trace order.

    Returns:
      (loss, grads, new_state): the mean loss, the gradient of every parameter path (summed over
      stages for a parameter more than one stage reads), and every state leaf after the last
      micro-batch.
    """
    count = len(data)
    state = dict(state)
    saved: list[list[list[jax.Array] | None]] = [[None] * count for _ in stages]
    losses = []
    for m in range(count):
        acts = [data[m][i] for i in stages[0].spec.input_data]
        for k, stage in enumerate(stages):
            spec = stage.spec
            acts, new_state, saved[k][m] = stage.forward(
                [params[p] for p in spec.param_paths], [state[p] for p in spec.state_paths], acts
            )
            state.update(zip(spec.new_state_paths, new_state))
        losses.append(acts[0])
    loss = jnp.mean(jnp.stack(losses))

    grads = {p: jnp.zeros_like(v) for p, v in params.items()}
    for m in reversed(range(count)):
        cts = [jnp.asarray(1.0 / count, losses[m].dtype)]
        for k in reversed(range(len(stages))):
            spec = stages[k].spec
            g_params, cts = stages[k].backward(
                [params[p] for p in spec.param_paths], saved[k][m], cts
            )
            saved[k][m] = None
            for p, g in zip(spec.param_paths, g_params):
                grads[p] = grads[p] + g
    return loss, grads, state
