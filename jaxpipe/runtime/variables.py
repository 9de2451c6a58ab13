"""A job's trained variables, reassembled from its stage checkpoints into the user's structure.

Each stage checkpoints its slice of the parameters and model state by path
(`jaxpipe.runtime.checkpoint`). `load_variables` merges every stage's slice of one complete
checkpoint, stacks leaves that a scan over layers had unrolled into slices (`path[0]`,
`path[1]`, ...) back into one array, and nests the paths into the linen variables dict:
`{"params": {...}, "batch_stats": {...}, ...}`, the structure `model.init` returns. An NNX
model's leaves (`params/<attribute path>`, `state/<attribute path>`) become one `nnx.State` of
the whole module, PRNG keys wrapped again (`JobSpec.key_impls`) and `nnx.List` indices as
integers, which `nnx.update(model, state)` takes.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxpipe.errors import NoCheckpointError
from jaxpipe.runtime import checkpoint
from jaxpipe.runtime.arrays import decode_named
from jaxpipe.runtime.job import JobSpec, Keys
from jaxpipe.tree import nest
from transports import ObjectStore

__all__ = ["load_variables", "read_variables", "restack", "save_variables"]

_SLICE = re.compile(r"^(.*)\[(\d+)\]$")


def load_variables(store: ObjectStore | str, job_id: str, t: int | None = None,
                   ) -> dict[str, Any] | nnx.State:
    """The variables of job `job_id` in `store` (a store or its location: a directory or
    `s3://bucket`) before iteration `t`: default the latest complete checkpoint, which for a
    finished job is the trained model, for an interrupted one where `resume` continues.

    Returns:
      dict: `{"params": ..., <state collections>...}` of numpy arrays, as `model.init` gives;
      for an NNX model an `nnx.State` of the module (see the module docstring).

    Raises:
      NoCheckpointError: no such job, or no complete checkpoint at `t`.

    Example:
      >>> from transports import MemoryStore
      >>> load_variables(MemoryStore(), "no-such-job")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      jaxpipe.errors.NoCheckpointError: no job 'no-such-job' in the store (no ...)
    """
    if isinstance(store, str):
        from jaxpipe.runtime.train import open_store

        store = open_store(store)
    keys = Keys(job_id)
    if not store.exists(keys.spec):
        raise NoCheckpointError(f"no job {job_id!r} in the store (no {keys.spec})")
    spec = JobSpec.from_json(store.get(keys.spec, timeout=1))
    latest = checkpoint.latest_complete(store, keys, spec.num_stages)
    if t is None:
        t = latest
    if t is None or not all(store.exists(keys.checkpoint(t, k, "done"))
                            for k in range(spec.num_stages)):
        raise NoCheckpointError(f"job {job_id!r} has no complete checkpoint at iteration {t} "
                                f"(latest complete: {latest})")
    return read_variables(store, spec, t)


def read_variables(store: ObjectStore, spec: JobSpec, t: int) -> dict[str, Any] | nnx.State:
    """Every stage's parameters and state of checkpoint `t`, merged and nested."""
    params: dict[str, np.ndarray] = {}
    state: dict[str, np.ndarray] = {}
    for k in range(spec.num_stages):
        for part, into in (("params", params), ("state", state)):
            key = spec.keys.checkpoint(t, k, part)
            into.update(decode_named(store.get(key, timeout=10), key))
    if spec.model_kind == "nnx":
        return nnx_state({**restack(params), **restack(state)}, spec.key_impls)
    return {"params": nest(restack(params), strip="params"), **nest(restack(state))}


def nnx_state(leaves: dict[str, Any], key_impls: dict[str, str]) -> nnx.State:
    """An NNX module's `nnx.State` from its leaves by path (`params/blocks/0/kernel`,
    `state/blocks/0/drop/rngs/key`): the first part dropped, numeric parts as list indices,
    keys in `key_impls` wrapped back into typed PRNG keys, every leaf a jax array (NNX updates
    some in place, `count[...] += 1`, which a read-only numpy array refuses).

    Example:
      >>> state = nnx_state({"params/blocks/0/w": np.ones(2), "state/blocks/0/n": np.zeros(1)},
      ...                   {})
      >>> sorted(state["blocks"][0])
      ['n', 'w']
    """
    tree: dict[Any, Any] = {}
    for path, value in leaves.items():
        parts: list[Any] = [int(p) if p.isdigit() else p for p in path.split("/")[1:]]
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        value = jax.numpy.asarray(value)
        if path in key_impls:
            value = jax.random.wrap_key_data(value, impl=key_impls[path])
        node[parts[-1]] = value
    return nnx.State(tree)


def restack(leaves: dict[str, Any]) -> dict[str, Any]:
    """Leaves by path with unrolled slices `p[0]`, `p[1]`, ... stacked back into `p`.

    Example:
      >>> out = restack({"a[1]": np.ones(2), "a[0]": np.zeros(2), "b": np.ones(1)})
      >>> sorted(out), out["a"].tolist()
      (['a', 'b'], [[0.0, 0.0], [1.0, 1.0]])
    """
    whole: dict[str, Any] = {}
    slices: dict[str, dict[int, Any]] = {}
    for path, value in leaves.items():
        match = _SLICE.match(path)
        if match:
            slices.setdefault(match.group(1), {})[int(match.group(2))] = value
        else:
            whole[path] = value
    for path, parts in slices.items():
        whole[path] = np.stack([np.asarray(parts[i]) for i in range(len(parts))])
    return whole


def save_variables(variables: dict[str, Any] | nnx.State, directory: str) -> str:
    """Writes `variables` as an Orbax checkpoint at `directory` (which must not exist), the
    one `orbax.checkpoint.StandardCheckpointer().restore(directory, target)` reads back into
    the model's variables; returns its absolute path. An NNX model's state is saved as its
    pure dict, as Flax's checkpointing guide does: restore it with the target
    `nnx.to_pure_dict(nnx.state(model))` and put it in with `nnx.update(model, restored)`."""
    import os

    import orbax.checkpoint as ocp

    path = os.path.abspath(directory)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, _savable(variables))
    checkpointer.wait_until_finished()
    return path


def _savable(variables: dict[str, Any] | nnx.State) -> dict[str, Any]:
    return nnx.to_pure_dict(variables) if isinstance(variables, nnx.State) else variables
