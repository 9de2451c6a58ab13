"""Calibration and profiling inside Lithops calls of each memory size (`platforms.aws_tasks`'
tasks, launched by Lithops instead of Lambda's Invoke).

    driver                                         a Lithops call with runtime_memory = MB
    call_async(run_call, {"event": TaskEvent}) --> the worker handler runs the task, puts the
    store.get(K, timeout) <------------------------ result at K (jobs/calibration-<id>/...)

`jaxpipe calibrate --platform lithops --lithops-config FILE` and `jaxpipe profile --platform
lithops ...` fold the results into a platform file as on aws-lambda (`aws_tasks.
calibration_fields`, `profile_fields`, `merge_platform_file`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from jaxpipe.errors import LaunchError
from jaxpipe.runtime.event import TaskEvent
from jaxpipe.runtime.platforms import aws_tasks
from jaxpipe.runtime.platforms.lithops import LithopsPlatform, run_call
from planners import ModelProfile
from transports import ObjectStore

__all__ = ["calibrate", "profile_on_calls", "run_tasks"]


def run_tasks(platform: LithopsPlatform, events: dict[int, TaskEvent],
              timeout_s: float = 960.0) -> dict[int, dict[str, Any]]:
    """Runs one task per memory size as a Lithops call and waits for every result.

    Raises:
      LaunchError: a task reported an error, or no result came within `timeout_s` (the
        message names the Lithops call, whose log `lithops logs` shows).
    """
    calls = {}
    for memory_mb, event in events.items():
        payload = json.dumps({"event": event.to_dict(), "timeout_s": platform.platform.timeout_s,
                              "memory_mb": memory_mb, "cap": platform.local})
        calls[memory_mb] = platform.executor.call_async(
            run_call, (payload,), runtime_memory=memory_mb,
            timeout=int(platform.platform.timeout_s), include_modules=None)
    results, end = {}, time.time() + timeout_s
    for memory_mb, event in events.items():
        try:
            results[memory_mb] = json.loads(platform.store.get(
                event.key, timeout=max(1.0, end - time.time())))
        except TimeoutError:
            call = calls[memory_mb]
            raise LaunchError(f"no {event.task} result from the {memory_mb} MB Lithops call "
                              f"{call.job_key}/{call.call_id} after {timeout_s} s") from None
        if "error" in results[memory_mb]:
            raise LaunchError(f"the {memory_mb} MB call failed:\n{results[memory_mb]['error']}")
    return results


def calibrate(platform: LithopsPlatform, memory_sizes: Sequence[int], size_bytes: int,
              repeats: int) -> dict[int, dict[str, Any]]:
    """Storage latency and bandwidth measured inside a call of each memory size."""
    store: ObjectStore = platform.store
    events = aws_tasks.task_events(store, "calibrate", memory_sizes, size_bytes=size_bytes,
                                   repeats=repeats)
    return run_tasks(platform, events)


def profile_on_calls(platform: LithopsPlatform, model: str, memory_sizes: Sequence[int],
                     micro_batches: Sequence[int], repeats: int) -> dict[int, ModelProfile]:
    """Profiles `model` inside a call of each memory size; returns MB -> ModelProfile."""
    events = aws_tasks.task_events(platform.store, "profile", memory_sizes, model=model,
                                   micro_batches=tuple(micro_batches), repeats=repeats)
    return {m: ModelProfile.from_dict(r["profile"])
            for m, r in run_tasks(platform, events).items()}
