"""Profiling and link calibration inside Lambda functions of each memory size.

The planner needs two things it cannot guess: how fast each layer runs on a function of a given
memory size (Lambda's CPU share grows with memory), and how fast a function talks to S3.
FuncPipe measures both inside the functions themselves; so does this module:

    driver (this machine)                         function <prefix>-<MB>, for each MB
    ---------------------                         -------------------------------
    Invoke(Event, {"task": ..., "key": K}) ---->  run_task: profile the model / time PUTs and
    store.get(K, timeout) <--------------------   GETs against the bucket; put the result at K

Results go under `jobs/calibration-<id>/` (inside the worker role's prefix and the bucket's
lifecycle rule). The driver folds them into a platform file that `planners.platforms.get(name,
overrides_file)` reads: its `platform` table holds the Platform fields (bandwidth, latency,
`cpu_table`); the raw per-memory measurements sit beside it, where `get` ignores them.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import traceback
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxpipe.errors import LaunchError, UnknownTaskError
from jaxpipe.runtime.event import TaskEvent
from jaxpipe.runtime.job import Keys
from jaxpipe.runtime.platforms.aws import FUNCTION_PREFIX, function_name, lambda_client
from planners import ModelProfile, Platform
from transports import ObjectStore, store_from_spec, store_to_spec

__all__ = ["calibrate", "calibration_fields", "measure_link", "merge_platform_file",
           "profile_fields", "profile_on_functions", "run_on_functions", "run_task",
           "task_events"]


# -- inside the function -----------------------------------------------------------------------

def run_task(event: TaskEvent, context: Any = None) -> dict[str, Any]:
    """Runs a `TaskEvent` (`jaxpipe.runtime.worker.handler` forwards it here).

    The result goes to `event.key` as JSON, with the function's memory size, visible CPUs and
    request id; a failure is written there as {"error": <traceback>}, then raised.

    Raises:
      UnknownTaskError: `event.task` is neither "calibrate" nor "profile".
    """
    store = store_from_spec(event.store)
    try:
        result = _run(event, store)
    except Exception:
        store.put(event.key, json.dumps({"error": traceback.format_exc()[-4000:]}).encode())
        raise
    result.update(memory_mb=event.memory_mb, visible_cpus=os.cpu_count(),
                  request_id=getattr(context, "aws_request_id", None))
    store.put(event.key, json.dumps(result).encode())
    return {"status": "done", "key": event.key}


def _run(event: TaskEvent, store: ObjectStore) -> dict[str, Any]:
    if event.task == "calibrate" and event.size_bytes is not None:
        return measure_link(store, event.key + ".scratch/", event.size_bytes, event.repeats)
    if event.task == "profile" and event.model is not None:
        return _profile_here(event.model, event.micro_batches, event.repeats)
    raise UnknownTaskError(f"unknown task {event.task!r} (or its fields missing); known: "
                           "'calibrate' (with size_bytes), 'profile' (with model)")


def measure_link(store: ObjectStore, scratch: str, size_bytes: int = 16 << 20,
                 repeats: int = 5) -> dict[str, Any]:
    """Request latency and bandwidth each way between this process and `store`.

    Latency is the median round trip of a 1-byte PUT and GET; bandwidth is `size_bytes` over
    the median time of a PUT (GET) of that size minus one latency. Scratch objects under
    `scratch` are deleted afterwards.

    Returns:
      dict: `request_latency_s`, `uplink_bytes_per_s`, `downlink_bytes_per_s` and the samples.
    """
    small, big = b"x", os.urandom(size_bytes)
    times: dict[str, list[float]] = {"put_small": [], "get_small": [], "put": [], "get": []}
    keys = []
    for i in range(repeats):
        for name, data in (("small", small), ("big", big)):
            key = f"{scratch}{name}-{i}"
            keys.append(key)
            began = time.perf_counter()
            store.put(key, data)
            put = time.perf_counter() - began
            began = time.perf_counter()
            store.get(key)
            get = time.perf_counter() - began
            times["put_small" if name == "small" else "put"].append(put)
            times["get_small" if name == "small" else "get"].append(get)
    store.delete_many(keys)
    latency = statistics.median(times["put_small"] + times["get_small"])
    floor = 1e-6  # a store faster than the clock (a local disk) must not divide by zero

    def rate(samples: list[float]) -> float:
        return size_bytes / max(statistics.median(samples) - latency, floor)

    return {"request_latency_s": latency, "uplink_bytes_per_s": rate(times["put"]),
            "downlink_bytes_per_s": rate(times["get"]), "size_bytes": size_bytes,
            "samples_s": times}


def _profile_here(model: str, micro_batches: Sequence[int], repeats: int) -> dict[str, Any]:
    import jax

    import jaxpipe
    from jaxpipe import models
    from jaxpipe.runtime.train import linen_module
    from jaxpipe.staging.profiling import profile

    spec = models.get(model)
    module = linen_module(spec)
    variables = spec.init(jax.random.PRNGKey(0))
    assert isinstance(variables, dict), "a linen model's init returns its variables"
    batch = spec.make_batch(jax.random.PRNGKey(1), max(micro_batches))
    rngs = {"dropout": jax.random.PRNGKey(2)} if spec.uses_dropout else None
    traced = jaxpipe.trace(module, variables, batch, spec.loss_fn, rngs=rngs)
    began = time.perf_counter()
    # No parallel fractions: `profile_fields` turns these runs into an effective `cpu_table`
    # (the whole model's measured speed-up per memory size); p on top would count it twice.
    result = profile(traced, list(micro_batches), repeats=repeats, name=spec.name,
                     scaling=False)
    return {"profile": result.to_dict(), "seconds": time.perf_counter() - began}


# -- on the driver -----------------------------------------------------------------------------

def run_on_functions(store: ObjectStore, events: dict[int, TaskEvent], client: Any = None,
                     function_prefix: str = FUNCTION_PREFIX, timeout_s: float = 960.0,
                     ) -> dict[int, dict[str, Any]]:
    """Invokes one task per memory size asynchronously and waits for every result.

    Args:
      events: memory size in MB -> the event its function runs (`task_events` builds them).

    Raises:
      LaunchError: a function reported an error, or no result came within `timeout_s`.
    """
    client = client if client is not None else lambda_client()
    for memory_mb, event in events.items():
        answer = client.invoke(FunctionName=function_name(memory_mb, function_prefix),
                               InvocationType="Event",
                               Payload=json.dumps(event.to_dict(), separators=(",", ":")).encode())
        if answer.get("StatusCode") != 202:
            raise LaunchError(f"Lambda did not queue the {event.task} task on "
                              f"{function_name(memory_mb, function_prefix)}: {answer}")
    results = {}
    for memory_mb, event in events.items():
        try:
            results[memory_mb] = json.loads(store.get(event.key, timeout=timeout_s))
        except TimeoutError:
            raise LaunchError(
                f"no result from {function_name(memory_mb, function_prefix)} after {timeout_s} "
                f"s; see `aws logs tail /aws/lambda/{function_name(memory_mb, function_prefix)}`"
            ) from None
        if "error" in results[memory_mb]:
            raise LaunchError(f"the {memory_mb} MB function failed:\n"
                              f"{results[memory_mb]['error']}")
    return results


def task_events(store: ObjectStore, task: str, memory_sizes: Sequence[int],
                **fields: Any) -> dict[int, TaskEvent]:
    """One `TaskEvent` per memory size, each with its own result key under a fresh
    `jobs/calibration-<time>-<id>/<task>/<MB>.json` (inside the worker role's prefix)."""
    run = Keys(f"calibration-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}").prefix
    spec = store_to_spec(store)
    return {m: TaskEvent(task=task, store=spec, key=f"{run}{task}/{m}.json", memory_mb=m,
                         **fields) for m in memory_sizes}


def calibrate(store: ObjectStore, memory_sizes: Sequence[int], client: Any = None,
              function_prefix: str = FUNCTION_PREFIX, size_bytes: int = 16 << 20,
              repeats: int = 5, timeout_s: float = 960.0) -> dict[int, dict[str, Any]]:
    """S3 latency and bandwidth measured inside a function of each memory size."""
    events = task_events(store, "calibrate", memory_sizes, size_bytes=size_bytes,
                         repeats=repeats)
    return run_on_functions(store, events, client, function_prefix, timeout_s)


def calibration_fields(results: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Platform fields from per-memory link measurements: the median over memory sizes.

    The cost model has one link for every function; per-memory values stay in the file's
    `calibration` table for a reader to judge the spread.
    """
    def median(name: str) -> float:
        return float(statistics.median(r[name] for r in results.values()))

    return {"request_latency_s": median("request_latency_s"),
            "uplink_bytes_per_s": median("uplink_bytes_per_s"),
            "downlink_bytes_per_s": median("downlink_bytes_per_s")}


def profile_on_functions(model: str, store: ObjectStore, memory_sizes: Sequence[int],
                         micro_batches: Sequence[int] = (1, 2, 4, 8), repeats: int = 5,
                         client: Any = None, function_prefix: str = FUNCTION_PREFIX,
                         timeout_s: float = 960.0) -> dict[int, ModelProfile]:
    """Profiles `model` inside a function of each memory size; returns MB -> ModelProfile."""
    events = task_events(store, "profile", memory_sizes, model=model,
                         micro_batches=tuple(micro_batches), repeats=repeats)
    results = run_on_functions(store, events, client, function_prefix, timeout_s)
    return {m: ModelProfile.from_dict(r["profile"]) for m, r in results.items()}


def profile_fields(profiles: dict[int, ModelProfile], platform: Platform,
                   ) -> tuple[ModelProfile, dict[str, Any]]:
    """The reference profile and the `cpu_table` the measurements imply.

    The reference is the memory size whose catalog CPU share is closest to one vCPU; its
    profile's `reference_cpus` is that share. Every other size's share is the reference share
    scaled by how much faster it ran the whole model (sum of forward and backward times at the
    largest micro-batch size), which is what `Platform.cpus(memory)` must return for the cost
    model to predict its layer times.
    """
    b = max(max(layer.fwd_seconds, default=1) for p in profiles.values() for layer in p.layers)

    def total(p: ModelProfile) -> float:
        return sum(layer.fwd_time(b) + layer.bwd_time(b) for layer in p.layers)

    ref = min(profiles, key=lambda m: (abs(platform.cpus(m) - 1.0), m))
    ref_cpus = platform.cpus(ref)
    reference = ModelProfile.from_dict({**profiles[ref].to_dict(), "reference_cpus": ref_cpus})
    table = {m: round(ref_cpus * total(profiles[ref]) / total(p), 4) for m, p in profiles.items()}
    return reference, {"cpu_table": {str(m): v for m, v in sorted(table.items())}}


def merge_platform_file(path: str | Path, fields: dict[str, Any], section: str,
                        details: Any) -> dict[str, Any]:
    """Updates the platform file at `path` (created if missing): `fields` go into its
    `platform` table, `details` under `section`; returns the whole file."""
    path = Path(path)
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("platform", {}).update(fields)
    data[section] = details
    path.write_text(json.dumps(data, indent=1, sort_keys=True))
    return data

