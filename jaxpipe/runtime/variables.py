"""A job's trained variables, reassembled from its stage checkpoints into the user's structure.

Each stage checkpoints its slice of the parameters and model state by path
(`jaxpipe.runtime.checkpoint`). `load_variables` merges every stage's slice of one complete
checkpoint, stacks leaves that a scan over layers had unrolled into slices (`path[0]`,
`path[1]`, ...) back into one array, and nests the paths into the linen variables dict:
`{"params": {...}, "batch_stats": {...}, ...}`, the structure `model.init` returns.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from jaxpipe.errors import NoCheckpointError
from jaxpipe.runtime import checkpoint
from jaxpipe.runtime.arrays import decode_named
from jaxpipe.runtime.job import JobSpec, Keys
from jaxpipe.tree import nest
from transports import ObjectStore

__all__ = ["load_variables", "read_variables", "restack", "save_variables"]

_SLICE = re.compile(r"^(.*)\[(\d+)\]$")


def load_variables(store: ObjectStore | str, job_id: str, t: int | None = None,
                   ) -> dict[str, Any]:
    """The variables of job `job_id` in `store` (a store or its location: a directory or
    `s3://bucket`) before iteration `t`: default the latest complete checkpoint, which for a
    finished job is the trained model, for an interrupted one where `resume` continues.

    Returns:
      dict: `{"params": ..., <state collections>...}` of numpy arrays, as `model.init` gives.

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


def read_variables(store: ObjectStore, spec: JobSpec, t: int) -> dict[str, Any]:
    """Every stage's parameters and state of checkpoint `t`, merged and nested."""
    params: dict[str, np.ndarray] = {}
    state: dict[str, np.ndarray] = {}
    for k in range(spec.num_stages):
        for part, into in (("params", params), ("state", state)):
            key = spec.keys.checkpoint(t, k, part)
            into.update(decode_named(store.get(key, timeout=10), key))
    return {"params": nest(restack(params), strip="params"), **nest(restack(state))}


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


def save_variables(variables: dict[str, Any], directory: str) -> str:
    """Writes `variables` as an Orbax checkpoint at `directory` (which must not exist), the
    one `orbax.checkpoint.StandardCheckpointer().restore(directory, target)` reads back into
    the model's variables; returns its absolute path."""
    import os

    import orbax.checkpoint as ocp

    path = os.path.abspath(directory)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, variables)
    checkpointer.wait_until_finished()
    return path
