"""Starting and resuming a job safely: one driver per job, and results never overwritten.

    claim(options, job)          the job's lease (`lease.DriverLease`), before anything of
                                 the job is written: a second start of a running job id is
                                 refused with `JobRunningError` naming the running driver
    resume_point(store, job)     where a resumed job continues: its latest complete (and not
                                 corrupt) checkpoint, under a fresh attempt number (the
                                 driver's `attempts.next_attempt`); a finished job is refused
                                 (`JobFinishedError`), or extended with `--iterations N`, its
                                 earlier summary kept as `results/summary-<iterations>.json`
    fill_losses(store, spec, p)  the summary of a resumed run counts every iteration's loss,
                                 each from the latest attempt that ran it

Nothing here deletes a result: only the scratch of an interrupted run (`run/`) and the claims
of its invocations go, since its attempt numbers are never used again.
"""

from __future__ import annotations

import dataclasses

from jaxpipe.errors import IterationsError, JobFinishedError, NoCheckpointError
from jaxpipe.runtime import checkpoint
from jaxpipe.runtime.attempts import latest_losses
from jaxpipe.runtime.driver import Progress
from jaxpipe.runtime.input_checks import check_options, check_store_location
from jaxpipe.runtime.job import JobSpec, Keys, read_spec
from jaxpipe.runtime.lease import DriverLease
from jaxpipe.runtime.options import TrainOptions
from transports import FileStore, ObjectStore, S3Store

__all__ = ["claim", "fill_losses", "resume_point"]


def claim(options: TrainOptions, job: str, resuming: bool) -> DriverLease:
    """Checks the options (a new job's) and the store's place, then takes the job's lease.

    Raises:
      InputError: a bad option or store (`input_checks`); JobRunningError: a live driver
        holds the job.
    """
    if not resuming:
        check_options(options)
    check_store_location(options.store)
    store = (S3Store(options.store[5:].strip("/"), endpoint_url=options.endpoint_url)
             if options.store.startswith("s3://") else FileStore(options.store))
    return DriverLease.acquire(store, Keys(job), command="resume" if resuming else "train")


def resume_point(store: ObjectStore, job: str, where: str,
                 extend_to: int | None = None) -> tuple[JobSpec, int]:
    """The stored job (extended to `extend_to` iterations if given) and the iteration it
    continues from, with the interrupted run's scratch deleted.

    Raises:
      NoCheckpointError: no such job in the store; CorruptJobError: its job.json does not
        parse.
      IterationsError: `extend_to` is below the job's iterations.
      JobFinishedError: every iteration has run, the summary is made, and no extension was
        asked for.
    """
    keys = Keys(job)
    if not store.exists(keys.spec):
        raise NoCheckpointError(f"no job {job!r} to resume in {where}")
    spec = read_spec(store, job, timeout=1)  # CorruptJobError: a job.json cut short
    start = checkpoint.latest_complete(store, keys, spec.num_stages) or 0
    if extend_to is not None and extend_to != spec.iterations:
        if extend_to < spec.iterations:
            raise IterationsError(f"--iterations {extend_to}: job {job} has {spec.iterations} "
                                  "iterations; a resume can only extend it")
        if not store.exists(keys.bundle):
            raise JobFinishedError(
                f"job {job} finished its {spec.iterations} iterations and its stage programs "
                "and data were cleaned up, so it cannot run further; start a new job from its "
                f"variables (jaxpipe.load_variables(store, {job!r}))")
        if store.exists(keys.summary):  # keep the finished run's result
            store.put(f"{keys.prefix}results/summary-{spec.iterations}.json",
                      store.get(keys.summary))
        spec = dataclasses.replace(spec, iterations=extend_to)
        store.put(keys.spec, spec.to_json())
    elif start >= spec.iterations and store.exists(keys.summary):
        raise JobFinishedError(f"job {job} already finished its {spec.iterations} iterations "
                               f"(its summary is at {keys.summary}); to train it further pass "
                               f"--iterations N with N above {spec.iterations}")
    # (every iteration ran but the driver died before the summary: the resume only makes it)
    store.delete_prefix(keys.prefix + "run/")
    store.delete_many([k for k in store.list(keys.prefix + "status/") if k.endswith(".claim")])
    return spec, start


def fill_losses(store: ObjectStore, spec: JobSpec, progress: Progress) -> None:
    """Adds to `progress.losses` every earlier iteration's loss the store holds (of each
    iteration, the latest attempt's records), so a resumed run's summary has them all."""
    for t in range(spec.iterations):
        if t not in progress.losses and (losses := latest_losses(store, spec.keys, t)):
            progress.losses[t] = sum(losses) / len(losses)
