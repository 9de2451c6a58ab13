"""Stage checkpoints in the store: parameters, optimizer state and model state, by path.

The optimizer state is the stage's `{path: array}` of `runtime.optimizer.StageOptimizer`
(paths of the whole model's optax state), as its exported init made it.

A checkpoint at iteration t is the state *before* iteration t. Replica 0 of every stage writes
its three parts and then a `done` marker, so a checkpoint is complete exactly when every stage's
marker exists; a crash halfway through writing one leaves it incomplete and unused.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxpipe.runtime import optim
from jaxpipe.runtime.arrays import decode_named
from jaxpipe.runtime.job import Keys
from jaxpipe.runtime.optimizer import OptimizerPrograms, StageOptimizer, load_optimizer
from transports import ObjectStore, codec

__all__ = ["latest_complete", "load", "save", "save_initial"]


def save(store: ObjectStore, keys: Keys, t: int, stage: int, params: dict[str, Any],
         opt_state: Any, state: dict[str, Any]) -> None:
    """Writes stage `stage`'s checkpoint before iteration `t`; the marker goes last."""
    parts = {"params": params, "opt": optim.state_to_leaves(opt_state), "state": state}
    for part, leaves in parts.items():
        store.put(keys.checkpoint(t, stage, part),
                  codec.encode({p: np.asarray(v) for p, v in leaves.items()}))
    store.put(keys.checkpoint(t, stage, "done"), b"{}")


def save_initial(store: ObjectStore, keys: Keys, stages: list[tuple[list[str], list[str]]],
                 params: dict[str, Any], state: dict[str, Any],
                 optimizer: OptimizerPrograms | bytes) -> None:
    """Checkpoint 0: each stage's slice of the initial parameters and state, and the fresh
    optimizer state of the stage's exported init (`OptimizerPrograms` or its archive)."""
    blob = optimizer.export() if isinstance(optimizer, OptimizerPrograms) else optimizer
    for k, (param_paths, state_paths) in enumerate(stages):
        mine = {p: params[p] for p in param_paths}
        save(store, keys, 0, k, mine, load_optimizer(blob, k).init(mine),
             {p: state[p] for p in state_paths})


def load(store: ObjectStore, keys: Keys, t: int, stage: int, optimizer: StageOptimizer,
         timeout: float) -> tuple[dict, Any, dict]:
    """Reads stage `stage`'s checkpoint before iteration `t`: (params, opt_state, state).

    Raises:
      OptimizerStateError: the optimizer state does not fit `optimizer` (another optimizer).
    """
    out = []
    for part in ("params", "opt", "state"):
        key = keys.checkpoint(t, stage, part)
        arrays = decode_named(store.get(key, timeout=timeout), key)
        out.append({p: jnp.asarray(v) for p, v in arrays.items()})
    params, opt_leaves, state = out
    return params, optimizer.state_from_leaves(opt_leaves), state


def latest_complete(store: ObjectStore, keys: Keys, num_stages: int) -> int | None:
    """The latest iteration whose checkpoint every stage finished, or None."""
    prefix = keys.checkpoints()
    done: dict[int, set[int]] = {}
    for key in store.list(prefix):
        parts = key[len(prefix):].split("/")
        if len(parts) == 3 and parts[2] == "done":
            done.setdefault(int(parts[0]), set()).add(int(parts[1].removeprefix("stage")))
    complete = [t for t, stages in done.items() if len(stages) == num_stages]
    return max(complete) if complete else None
