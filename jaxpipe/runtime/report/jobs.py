"""The jobs of a store: a table of them (`jaxpipe jobs`) and their clean-up (`jaxpipe gc`).

`collect` removes, from every *finished* job (one with `results/summary.json`):

    run/, status/, cancel/     the messages, claims and markers of its attempts
    data/, bundle.zip, optimizer.zip   the upload a finished job no longer reads
    ckpt/<t>/                  every checkpoint but the latest complete one

and keeps `job.json`, `problem.json`, `metrics/`, `results/` and the latest complete checkpoint
(`checkpoint.latest_complete`, the one `load_variables` and `--resume` read; the others go
through `checkpoint.prune`, done markers first). A job without a
summary is never touched: it may be running (`driver.json` held), or failed or stopped and
waiting for `--resume`, which needs its checkpoints. The layout is read through
`jaxpipe.runtime.job.Keys` and `checkpoint`, so `collect` follows what those define.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from jaxpipe.runtime import checkpoint
from jaxpipe.runtime.report.record import FINISHED, JobRecord, job_ids, read_job
from transports import ObjectStore

__all__ = ["Collected", "collect", "jobs_table", "list_jobs"]

_SCRATCH = ("run/", "status/", "cancel/", "data/")
_FILES = ("bundle.zip", "optimizer.zip")


@dataclass(frozen=True)
class Collected:
    """What `collect` did to one job.

    Attributes:
      job_id: the job.
      state: its state (`record.FINISHED` ...).
      deleted: keys removed.
      kept_checkpoint: the checkpoint kept (None: none, or the job was skipped).
      skipped: why the job was left alone ("" if it was collected).
    """

    job_id: str
    state: str
    deleted: int
    kept_checkpoint: int | None
    skipped: str = ""


def list_jobs(store: ObjectStore) -> list[JobRecord]:
    """Every job in the store, oldest first (unknown ages last)."""
    records = [read_job(store, j) for j in job_ids(store)]
    return sorted(records, key=lambda r: (r.created is None, r.created or 0.0, r.job_id))


def jobs_table(records: Sequence[JobRecord], now: float | None = None) -> str:
    """One line per job: id, state, iterations done of planned, dollars so far, age, plan."""
    now = time.time() if now is None else now
    head = f"{'job':40s} {'state':9s} {'iterations':>11s} {'dollars':>10s} {'age':>8s}  plan"
    lines = [head, "-" * len(head)]
    for r in records:
        plan = r.spec.plan
        shape = "+".join(f"{s.replicas}" if s.replicas > 1 else "1" for s in plan.stages)
        age = r.age_seconds(now)
        done = f"{r.iterations_done}/{r.spec.iterations}"
        lines.append(f"{r.job_id:40s} {r.state:9s} {done:>11s} {r.dollars:>10.5f} "
                     f"{_age(age):>8s}  {len(plan.stages)} stages ({shape} functions)")
    if not records:
        lines.append("(no jobs)")
    return "\n".join(lines)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def collect(store: ObjectStore, job_ids_: Sequence[str] | None = None,
            dry_run: bool = False) -> list[Collected]:
    """Cleans every finished job of the store (or of `job_ids_`), see the module docstring;
    `dry_run` counts what would go without deleting."""
    out = []
    for job in job_ids_ if job_ids_ is not None else job_ids(store):
        record = read_job(store, job)
        if record.state != FINISHED:
            out.append(Collected(job, record.state, 0, None,
                                 f"{record.state}: only finished jobs are collected"))
            continue
        doomed = _doomed(store, record)
        old = _old_checkpoints(store, record)
        if not dry_run:
            store.delete_many(doomed)
            checkpoint.prune(store, record.spec.keys, record.spec.num_stages, keep=1)
        out.append(Collected(job, record.state, len(doomed) + len(old),
                             record.latest_checkpoint))
    return out


def _doomed(store: ObjectStore, record: JobRecord) -> list[str]:
    """The scratch keys of a finished job that `collect` removes."""
    keys = record.spec.keys
    scratch = tuple(keys.prefix + p for p in _SCRATCH)
    files = {keys.prefix + f for f in _FILES}
    return [k for k in store.list(keys.prefix) if k.startswith(scratch) or k in files]


def _old_checkpoints(store: ObjectStore, record: JobRecord) -> list[str]:
    """The keys `checkpoint.prune(keep=1)` deletes: every checkpoint before the latest
    complete one (none without one)."""
    keys, keep = record.spec.keys, record.latest_checkpoint
    if keep is None:
        return []
    prefix = keys.checkpoints()
    old = []
    for key in store.list(prefix):
        head = key[len(prefix):].split("/")[0]
        if head.isdigit() and int(head) < keep:
            old.append(key)
    return old


def collected_text(results: Sequence[Collected], dry_run: bool = False) -> str:
    """What `collect` did, one line per job."""
    verb = "would delete" if dry_run else "deleted"
    lines = []
    for c in results:
        if c.skipped:
            lines.append(f"{c.job_id}: skipped ({c.skipped})")
        else:
            lines.append(f"{c.job_id}: {verb} {c.deleted} keys, kept checkpoint "
                         f"{c.kept_checkpoint}")
    return "\n".join(lines) if lines else "(no jobs)"
