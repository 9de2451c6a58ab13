"""Attempts of a job: how they are numbered, how one ends, and what the driver does next.

An attempt is a run of windows from one checkpoint (`jaxpipe.runtime.driver`). Its number
names every key it writes (`run/<attempt>/`, `status/<attempt>/`, `cancel/<attempt>`,
`metrics/rank<r>/<attempt>-<inv>.json`, `metrics/loss/<t>/<attempt>/rank<r>`), so

* a restart after a death, and a resume after a crash of the driver and every rank, take the
  next number after every one the store shows (`next_attempt`): stale messages, claims and
  losses of an earlier attempt can never be read as the new one's;
* when an attempt dies, the driver cancels it (`cancel.cancel_attempt`), stops its ranks and
  starts attempt + 1 from the latest complete checkpoint (`recovery`).

`RankDeath` carries the dead rank's own error (the traceback tail of its "failed" status), and
`failure_message` turns it into the `JobFailed` text: the rank, its stage, its error and log,
and a hint that fits the way it died (memory only when the death looks like memory).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from jaxpipe.runtime.job import Keys
from jaxpipe.runtime.metrics import LossRecord
from jaxpipe.runtime.platforms import Outcome
from transports import KeyNotFound, ObjectStore

__all__ = ["RankDeath", "Recovery", "Window", "failure_message", "job_losses", "latest_losses",
           "next_attempt", "recovery"]

_NUMBERED = re.compile(r"^(?:run|status|cancel)/(\d+)(?:/|$)|^metrics/rank\d+/(\d+)-\d+\.json$"
                       r"|^metrics/loss/\d+/(\d+)/")
_MEMORY = ("MemoryError", "RESOURCE_EXHAUSTED", "Cannot allocate memory", "bad_alloc",
           "out of memory", "exit code -9", "exit code -6", "exit code 137")


@dataclass(frozen=True)
class Window:
    """One launch of every rank: iterations [start, stop) in attempt `attempt`, the job's
    `invocation`-th launch."""

    start: int
    stop: int
    attempt: int
    invocation: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class RankDeath:
    """A rank that did not finish its window, and how it ended (never `Outcome.FINISHED`).

    Attributes:
      rank: the rank that ended the attempt (the first to fail, when several did).
      outcome: how it ended.
      error: its own account: the tail of the traceback in its "failed" status, or None.
      reason: the driver's account when the rank said nothing ("no loss for 180 s").
    """

    rank: int
    outcome: Outcome
    error: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Recovery:
    """What the driver does after a death: start attempt + 1 at `restart_at`, with windows of
    at most `cap` iterations from then on."""

    restart_at: int
    cap: int


def recovery(death: RankDeath, window: Window, cap: int, checkpoint_at: int | None) -> Recovery:
    """The restart after `death` in `window`: from the latest complete checkpoint (0 if none).

    A refused window (too little time left in the invocation) halves the window size for the
    rest of the job; any other death keeps it.

    Example:
      >>> died = Window(start=4, stop=12, attempt=0, invocation=1)
      >>> recovery(RankDeath(1, Outcome.REFUSED), died, cap=100, checkpoint_at=4)
      Recovery(restart_at=4, cap=4)
      >>> recovery(RankDeath(1, Outcome.FAILED), died, cap=100, checkpoint_at=None)
      Recovery(restart_at=0, cap=100)
    """
    if death.outcome is Outcome.REFUSED:
        cap = max(1, window.size // 2)
    return Recovery(restart_at=checkpoint_at if checkpoint_at is not None else 0, cap=cap)


def next_attempt(store: ObjectStore, keys: Keys) -> int:
    """One more than the highest attempt number any key of the job carries; 0 for a new job.

    Reads `run/`, `status/`, `cancel/` and `metrics/` (LISTs only), so a crashed driver's
    attempts count even though it never finished them.
    """
    highest = -1
    for prefix in ("run/", "status/", "cancel/", "metrics/"):
        for key in store.list(keys.prefix + prefix):
            match = _NUMBERED.match(key[len(keys.prefix):])
            if match:
                highest = max(highest, int(next(g for g in match.groups() if g is not None)))
    return highest + 1


def job_losses(store: ObjectStore, keys: Keys, iterations: int) -> tuple[float, ...]:
    """The mean loss of each iteration 0 .. iterations-1 (`latest_losses`).

    Raises:
      KeyNotFound: an iteration has no loss record.
    """
    out = []
    for t in range(iterations):
        losses = latest_losses(store, keys, t)
        if not losses:
            raise KeyNotFound(keys.losses(t))
        out.append(sum(losses) / len(losses))
    return tuple(out)


def latest_losses(store: ObjectStore, keys: Keys, t: int) -> list[float]:
    """Iteration t's micro-batch losses from the records of the latest attempt that ran it (an
    earlier, failed attempt's records of t never count); [] if there are none."""
    prefix = keys.losses(t)
    per: dict[int, list[float]] = {}
    for key in store.list(prefix):
        attempt = key[len(prefix):].split("/")[0]
        if attempt.isdigit():
            try:
                losses = LossRecord.from_json(store.get(key)).losses
            except (ValueError, KeyError, TypeError):
                continue  # a garbled record: its attempt failed for it (`watching`)
            per.setdefault(int(attempt), []).extend(losses)
    return per[max(per)] if per else []


def last_line(text: str | None) -> str:
    """The last non-empty line of a traceback (the exception and its message), or ""."""
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def failure_message(death: RankDeath, stage: int, attempt: int, tail: str,
                    restarts: int) -> str:
    """The `JobFailed` text for a job that gave up after `death`: which rank, its own error,
    its output, and a hint that fits the way it died."""
    how = {Outcome.FAILED: "failed", Outcome.SILENT: "went silent",
           Outcome.REFUSED: "refused its window"}.get(death.outcome, death.outcome.name)
    head = (f"rank {death.rank} (stage {stage}) {how} in attempt {attempt} "
            f"({death.outcome.name}); the job was restarted {restarts} times")
    parts = [head]
    if death.error:  # its own traceback; of its output only where the rest is
        parts += [f"its error: {last_line(death.error)}", "its traceback (tail):",
                  "\n".join(death.error.splitlines()[-12:]), tail.splitlines()[0]]
    else:
        parts += [death.reason or "it said nothing", "its last output:", tail]
    # A rank that wrote its own error says how it died; its exit code is then the driver's
    # kill of the abandoned attempt (-9), no sign of memory.
    said = death.error if death.error else "\n".join(parts)
    if death.outcome is Outcome.SILENT or any(m in said for m in _MEMORY):
        parts.append("If it ran out of memory (or past the time limit), give its stage more "
                     "memory in the plan or use smaller micro-batches.")
    elif death.outcome is Outcome.REFUSED:
        parts.append("The invocation's time limit is too short for one iteration; raise "
                     "--invocation-seconds or plan faster stages.")
    return "\n".join(parts)
