"""`--platform lithops` in a training job: its options, platform, checks, launcher and bill.

`train` and `fit` call these at their few platform-specific points, so the rest of the job is
the same code on every platform:

    resolve       the options with the job's store filled in from the Lithops storage section
                  when `--store` names none (`lithops_config.store_location`)
    job_platform  the backend's catalog platform, its time limit cut to the backend's
    check_plan    the plan's memory sizes against the backend's, localhost's worker count
    launcher      a `LithopsPlatform` on the configured backend
    finish        the calls' bill (Lithops' statistics at the catalog's prices) into
                  `jobs/<id>/results/lithops-calls.json`, then Lithops' executor closed

Every check runs before any call: `resolve` and `job_platform` in the job's validation, and
`check_plan` before the job is uploaded.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from jaxpipe.errors import LithopsConfigError
from jaxpipe.runtime.job import JobSpec
from jaxpipe.runtime.options import TrainOptions
from jaxpipe.runtime.platforms import lithops_config
from jaxpipe.runtime.platforms.lithops_config import LithopsSettings
from planners import Plan, Platform
from transports import ObjectStore

__all__ = ["BILL_FILE", "PLATFORM", "check_plan", "finish", "job_platform", "launcher",
           "resolve", "settings"]

PLATFORM = "lithops"
BILL_FILE = "results/lithops-calls.json"
"""Under the job's prefix: every call's seconds and memory as Lithops measured, and dollars."""


def settings(options: TrainOptions) -> LithopsSettings:
    """The checked Lithops config of `options` (`lithops_config.load_settings`)."""
    return lithops_config.load_settings(options.lithops_config)


def resolve(options: TrainOptions) -> TrainOptions:
    """`options` with the job's store as the Lithops backend reaches it (unchanged for any
    other platform).

    Raises:
      LithopsConfigError, LithopsStorageError: see `lithops_config`.
    """
    if options.platform != PLATFORM:
        return options
    store, endpoint = lithops_config.store_location(
        settings(options), options.store, options.endpoint_url, TrainOptions().store)
    return dataclasses.replace(options, store=store, endpoint_url=endpoint)


def job_platform(options: TrainOptions) -> Platform:
    """The catalog platform a Lithops job plans and prices with (`lithops_config`).

    Raises:
      LithopsConfigError: also when this machine lacks the cloud's SDK that Lithops invokes
        the backend with (the message names the `lithops[...]` extra).
    """
    checked = settings(options)
    if checked.mode != "localhost" and not checked.runtime:
        raise LithopsConfigError(
            f"{checked.path}: {checked.backend} has no `runtime`; Lithops' default runtime has "
            "no JaxPipe in it: build one with `jaxpipe deploy lithops --lithops-config "
            f"{checked.path} --run` and set {checked.backend}.runtime to the name it prints")
    missing = lithops_config.missing_client(checked)
    if missing is not None:
        raise LithopsConfigError(f"this machine cannot call {checked.backend} through Lithops: "
                                 f"{missing}")
    return lithops_config.job_platform(checked, options.platform_file)


def check_plan(options: TrainOptions, plan: Plan) -> None:
    """Refuses a plan the backend cannot run, before anything is uploaded.

    Raises:
      LithopsMemoryError: a stage's memory the backend cannot give a function.
      LithopsWorkersError: localhost runs fewer calls at once than the plan has functions.
    """
    if options.platform != PLATFORM:
        return
    checked = settings(options)
    lithops_config.check_memory(checked, [s.memory_mb for s in plan.stages])
    lithops_config.check_workers(checked, plan.num_functions)


def launcher(spec: JobSpec, store: ObjectStore, options: TrainOptions) -> Any:
    """A `LithopsPlatform` for the job (imported here: Lithops loads only for Lithops jobs)."""
    from jaxpipe.runtime.platforms.lithops import LithopsPlatform

    return LithopsPlatform(spec.platform, store, settings(options))


def finish(platform: Any, store: ObjectStore, spec: JobSpec) -> dict[str, Any] | None:
    """Writes the calls' bill under the job's prefix and closes Lithops' executor; returns the
    bill (None for a launcher that is not Lithops')."""
    from jaxpipe.runtime.platforms.lithops import LithopsPlatform

    if not isinstance(platform, LithopsPlatform):
        return None
    try:
        bill = platform.bill()
        store.put(spec.keys.prefix + BILL_FILE, json.dumps(bill, indent=1).encode())
    finally:
        platform.close()
    return bill
