"""Stage checkpoints in the store: parameters, optimizer state and model state, by path.

The optimizer state is the stage's `{path: array}` of `runtime.optimizer.StageOptimizer`
(paths of the whole model's optax state), as its exported init made it.

A checkpoint at iteration t is the state *before* iteration t. Replica 0 of every stage writes
its three parts and then a `done` marker, so a checkpoint is complete exactly when every stage's
marker exists; a crash halfway through writing one leaves it incomplete and unused.

A part that does not decode when a rank loads it (truncated, bit rot) makes the rank mark the
stage `corrupt` (`ckpt/<t>/stage<k>/corrupt`, JSON {"part", "error"}) before it fails; the
driver's restart then falls back to the latest complete checkpoint with no such marker, saying
which it skipped and why (`skipped`). Writing a checkpoint again clears its marker.
`prune` keeps the last few complete checkpoints (and never the one a restart would need).
"""

from __future__ import annotations

import json
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxpipe.runtime import optim
from jaxpipe.runtime.arrays import decode_named
from jaxpipe.runtime.job import Keys
from jaxpipe.runtime.optimizer import OptimizerPrograms, StageOptimizer, load_optimizer
from transports import CodecError, KeyNotFound, ObjectStore, codec

__all__ = ["latest_complete", "load", "prune", "save", "save_initial", "skipped"]


def save(store: ObjectStore, keys: Keys, t: int, stage: int, params: dict[str, Any],
         opt_state: Any, state: dict[str, Any]) -> None:
    """Writes stage `stage`'s checkpoint before iteration `t`; the marker goes last."""
    parts = {"params": params, "opt": optim.state_to_leaves(opt_state), "state": state}
    store.delete_many([keys.checkpoint(t, stage, "done"), keys.checkpoint(t, stage, "corrupt")])
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
      CodecError: a part does not decode; the stage is marked corrupt first (module docstring).
    """
    out = []
    for part in ("params", "opt", "state"):
        key = keys.checkpoint(t, stage, part)
        try:
            arrays = decode_named(store.get(key, timeout=timeout), key)
        except CodecError as err:
            store.put(keys.checkpoint(t, stage, "corrupt"),
                      json.dumps({"part": part, "error": str(err)}).encode())
            raise
        out.append({p: jnp.asarray(v) for p, v in arrays.items()})
    params, opt_leaves, state = out
    return params, optimizer.state_from_leaves(opt_leaves), state


def latest_complete(store: ObjectStore, keys: Keys, num_stages: int) -> int | None:
    """The latest iteration whose checkpoint every stage finished and none marked corrupt, or
    None."""
    complete = _complete(store, keys, num_stages)
    return max(complete) if complete else None


def skipped(store: ObjectStore, keys: Keys, num_stages: int) -> dict[int, str]:
    """Checkpoints later than `latest_complete` that are complete but marked corrupt: t ->
    why ("stage 1 params: <error>")."""
    latest = latest_complete(store, keys, num_stages)
    out = {}
    for key in store.list(keys.checkpoints()):
        t, stage, part = _parts(keys, key)
        if part == "corrupt" and (latest is None or t > latest):
            try:
                why = json.loads(store.get(key))
                out[t] = f"stage {stage} {why.get('part', '?')}: {why.get('error', '?')}"
            except (KeyNotFound, ValueError):
                out[t] = f"stage {stage}: marked corrupt"
    return out


def prune(store: ObjectStore, keys: Keys, num_stages: int, keep: int) -> list[int]:
    """Deletes every checkpoint but the `keep` latest complete ones (and anything newer, which
    may be being written); returns the iterations deleted."""
    complete = sorted(_complete(store, keys, num_stages))
    if keep < 1 or len(complete) <= keep:
        return []
    cutoff = complete[-keep]
    listed = store.list(keys.checkpoints())
    doomed = sorted({t for t in (_parts(keys, k)[0] for k in listed) if 0 <= t < cutoff})
    for t in doomed:  # the done markers first: a half-deleted checkpoint is never complete
        store.delete_many([k for k in listed if _parts(keys, k)[0] == t and k.endswith("/done")])
        store.delete_prefix(f"{keys.checkpoints()}{t:08d}/")
    return doomed


def _complete(store: ObjectStore, keys: Keys, num_stages: int) -> list[int]:
    done: dict[int, set[int]] = {}
    corrupt: set[int] = set()
    for key in store.list(keys.checkpoints()):
        t, stage, part = _parts(keys, key)
        if part == "done":
            done.setdefault(t, set()).add(stage)
        elif part == "corrupt":
            corrupt.add(t)
    return [t for t, stages in done.items() if len(stages) == num_stages and t not in corrupt]


def _parts(keys: Keys, key: str) -> tuple[int, int, str]:
    """(t, stage, part) of a checkpoint key; (-1, -1, "") for anything else."""
    parts = key[len(keys.checkpoints()):].split("/")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].startswith("stage"):
        return -1, -1, ""
    return int(parts[0]), int(parts[1].removeprefix("stage")), parts[2]
