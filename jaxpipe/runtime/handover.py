"""Early hand-over: a window that runs slower than predicted ends at an iteration boundary
every rank agrees on, before the platform's time limit kills it.

The driver sizes a window from a prediction (`driver.window_for`); a rank with a deadline
(Lambda's context, a Lithops call's, the local platform's emulation `ClockDeadline`) checks,
before every iteration t of the window [start, stop), whether it can still run what it would
commit to:

    top of t (t-1 done)
      (1) read the marker status/<attempt>/<invocation>/handover     one GET
          its stop <= t                      -> the window ends here (replica 0 saves t)
      (2) time left < 2 x iteration + saves + HANDOVER_MARGIN_S     (`handover_stop`)
                                             -> put_if_absent {"stop": t+1}; the first
                                                writer wins, a loser obeys the stop that
                                                stands (never later than its own)
      (3) run t

Why t+1 is the earliest stop that is safe, and why every rank sees it in time: finishing
iteration t needs, on every rank, the forward of every micro-batch on every stage in t (a
backward needs the last stage's loss, a replicated stage's all-reduce needs all its
micro-batches, and every rank owns at least one). So while a rank stands at the top of t, no
rank can be past the top of t+1; a rank already inside t may be waiting for this one, so
stopping at t would strand it. And the marker is written before the writer starts t, so any
rank that reaches the top of t+1 has received data of t that came after the write: its read
there (1) sees the marker (the store reads after writes). A marker read in the background
(`cancel.RankWatch`'s poll) could be seconds late and let a rank start t+1 alone, which is
why the read is at the top of the iteration. Continuing at t commits a rank to t and t+1
(at the top of t+1 the earliest stop is t+2), hence the two iterations in (2).

The driver learns the new stop from the same marker while it waits for losses
(`watching.WindowWatch`), takes the window as ended there, and sizes the next one from the
iterations that ran.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import jax
import numpy as np

from jaxpipe.runtime.event import RankEvent, Stall
from jaxpipe.runtime.job import JobSpec, Keys
from planners import Platform
from transports import KeyNotFound, ObjectStore

__all__ = ["HANDOVER_MARGIN_S", "ClockDeadline", "Deadline", "Handover", "HandoverMarker",
           "for_rank", "handover_stop", "iteration_estimate", "read_marker", "save_seconds",
           "write_marker"]

HANDOVER_MARGIN_S = 15.0
"""Seconds kept free at the end of an invocation to close the lanes and write metrics and
status (a checkpoint's own time is counted apart)."""


class Deadline(Protocol):
    """What the rank asks of its deadline (the part of Lambda's context it uses)."""

    def get_remaining_time_in_millis(self) -> int: ...


@dataclass(frozen=True)
class ClockDeadline:
    """A deadline at epoch second `at` on this machine's clock (the local platform's
    emulation of a time limit: it kills the rank there, `platforms.local`).

    Example:
      >>> ClockDeadline(time.time() + 60).get_remaining_time_in_millis() > 59_000
      True
    """

    at: float

    def get_remaining_time_in_millis(self) -> int:
        return int(max(0.0, self.at - time.time()) * 1000)


@dataclass(frozen=True)
class HandoverMarker:
    """The marker of a window that ends early, at `Keys.handover(attempt, invocation)`.

    Attributes:
      stop: the window's new end: its last iteration is stop - 1, its checkpoint is at stop.
      rank: the rank that wrote it.
      remaining_s, needed_s: that rank's seconds left and seconds needed to go on, at the top
        of iteration stop - 1.

    Example:
      >>> m = HandoverMarker(stop=5, rank=1, remaining_s=20.0, needed_s=31.5)
      >>> HandoverMarker.from_json(m.to_json()) == m
      True
    """

    stop: int
    rank: int
    remaining_s: float
    needed_s: float

    def to_json(self) -> bytes:
        return json.dumps({"stop": self.stop, "rank": self.rank, "remaining_s": self.remaining_s,
                           "needed_s": self.needed_s}).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> HandoverMarker:
        d = json.loads(data)
        return cls(int(d["stop"]), int(d["rank"]), float(d["remaining_s"]),
                   float(d["needed_s"]))


def handover_stop(t: int, stop: int, remaining_s: float, iteration_s: float, save_s: float,
                  margin_s: float = HANDOVER_MARGIN_S) -> int | None:
    """The window's new stop if a rank at the top of iteration t must hand over, else None.

    Going on commits the rank to iterations t and t+1 (module docstring), so it hands over
    at t+1 when the time left is less than two iterations, the checkpoints they end in and
    the margin. A window with one iteration left ends at t+1 anyway: None.

    Args:
      t: the iteration about to run.
      stop: the window's current stop (exclusive).
      remaining_s: seconds left in the invocation.
      iteration_s: seconds one iteration is expected to take (`iteration_estimate`).
      save_s: seconds of the checkpoint saves ahead (0 for a rank that does not save).
      margin_s: seconds kept for closing and writing the status.

    Example:
      >>> handover_stop(4, 10, remaining_s=30.0, iteration_s=10.0, save_s=2.0, margin_s=15.0)
      5
      >>> handover_stop(4, 10, remaining_s=30.0, iteration_s=5.0, save_s=2.0, margin_s=15.0)
      >>> handover_stop(9, 10, remaining_s=1.0, iteration_s=5.0, save_s=2.0) is None  # the last
      True
    """
    if stop - t < 2:
        return None
    needed = 2 * iteration_s + save_s + margin_s
    return t + 1 if remaining_s < needed else None


def iteration_estimate(seconds: Sequence[float], predicted: float) -> float:
    """Seconds the next iteration is expected to take, from this window's iterations so far.

    None yet: `predicted` (the driver's measurement, else the plan's). One: its time, which
    includes compiling (an overestimate, on the safe side). More: the window's first left out,
    the larger of the median and the latest (a slowdown shows in the latest at once).

    Example:
      >>> iteration_estimate([], 2.0), iteration_estimate([30.0], 2.0)
      (2.0, 30.0)
      >>> iteration_estimate([30.0, 3.0, 4.0, 3.5], 2.0)  # median 3.5, latest 3.5
      3.5
    """
    if not seconds:
        return predicted
    if len(seconds) == 1:
        return seconds[0]
    steady = list(seconds[1:])
    return max(statistics.median(steady), steady[-1])


def save_seconds(nbytes: int, platform: Platform) -> float:
    """Seconds a checkpoint of `nbytes` bytes is expected to take before one was timed: its
    bytes over the uplink, plus its five requests (`checkpoint.save`).

    Example:
      >>> from planners import platforms
      >>> aws = platforms.get("aws-lambda")
      >>> save_seconds(0, aws) == 5 * aws.request_latency_s
      True
    """
    return nbytes / platform.uplink_bytes_per_s + 5 * platform.request_latency_s


def read_marker(store: ObjectStore, keys: Keys, attempt: int,
                invocation: int) -> HandoverMarker | None:
    """The window's hand-over marker, or None if no rank wrote one (one GET)."""
    try:
        return HandoverMarker.from_json(store.get(keys.handover(attempt, invocation)))
    except KeyNotFound:
        return None


def write_marker(store: ObjectStore, keys: Keys, attempt: int, invocation: int,
                 marker: HandoverMarker) -> HandoverMarker:
    """Writes `marker` unless the window has one (a conditional PUT: the first writer wins);
    returns the marker that stands."""
    if store.put_if_absent(keys.handover(attempt, invocation), marker.to_json()):
        return marker
    standing = read_marker(store, keys, attempt, invocation)
    return marker if standing is None else standing  # None: deleted since; ours stands


class Handover:
    """One rank's side of the early hand-over: `stop_at(t, stop, seconds)` before every
    iteration (module docstring).

    Args:
      store: the rank's store (the marker's GET is one of its requests).
      keys, rank, attempt, invocation: whose window it is.
      deadline: the invocation's deadline.
      predicted_s: seconds per iteration before this window measured any (the event's).
      save_s: seconds one checkpoint save takes (0 for a rank that does not save); the rank
        replaces it with each save's measured time.
      checkpoint_every: iterations between the job's checkpoints.
      margin_s: seconds kept for closing and the status.
    """

    def __init__(self, store: ObjectStore, keys: Keys, rank: int, attempt: int,
                 invocation: int, deadline: Deadline, predicted_s: float, save_s: float,
                 checkpoint_every: int, margin_s: float = HANDOVER_MARGIN_S) -> None:
        self.store, self.keys, self.rank = store, keys, rank
        self.attempt, self.invocation, self.deadline = attempt, invocation, deadline
        self.predicted_s, self.save_s, self.margin_s = predicted_s, save_s, margin_s
        self.checkpoint_every = max(1, checkpoint_every)
        self.marker: HandoverMarker | None = None  # the window's, once seen or written

    def remaining_s(self) -> float:
        return self.deadline.get_remaining_time_in_millis() / 1000.0

    def stall(self, stall: Stall | None, t: int) -> None:
        """The test hook `event.Stall`, if it names this rank and iteration t: sleeps until
        `stall.leave_s` seconds are left."""
        if stall is not None and stall.rank == self.rank and stall.iteration == t:
            time.sleep(max(0.0, self.remaining_s() - stall.leave_s))

    def stop_at(self, t: int, stop: int, seconds: Sequence[float]) -> int:
        """The window's stop as this rank must keep it, at the top of iteration t.

        Args:
          t: the iteration about to run.
          stop: the stop so far (the event's, or a marker's seen before).
          seconds: this window's iteration times on this rank so far, in seconds.

        Returns:
          int: the stop; <= t means the window ends before t.
        """
        marker = read_marker(self.store, self.keys, self.attempt, self.invocation)
        if marker is not None:
            self.marker, stop = marker, min(stop, marker.stop)
        if t >= stop:
            return stop
        per = iteration_estimate(seconds, self.predicted_s)
        # the checkpoints going on ends in: the one at the window's end, and one at t+1 when
        # the job's cadence puts one there
        saves = self.save_s * (1 + ((t + 1) % self.checkpoint_every == 0))
        left = self.remaining_s()
        wanted = handover_stop(t, stop, left, per, saves, self.margin_s)
        if wanted is None:
            return stop
        mine = HandoverMarker(wanted, self.rank, round(left, 3),
                              round(2 * per + saves + self.margin_s, 3))
        self.marker = write_marker(self.store, self.keys, self.attempt, self.invocation, mine)
        return min(stop, self.marker.stop)


def for_rank(store: ObjectStore, spec: JobSpec, event: RankEvent, deadline: Deadline | None,
             checkpoint: Any, saves: bool) -> Handover | None:
    """The `Handover` of a rank of `spec` running `event`, or None without a deadline (no
    hand-over, and no marker read: the local platform by default).

    Args:
      checkpoint: the arrays of the rank's checkpoint (any pytree).
      saves: whether the rank writes checkpoints (replica 0 of its stage).
    """
    if deadline is None:
        return None
    nbytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(checkpoint))
    save_s = save_seconds(nbytes, spec.platform) if saves else 0.0
    return Handover(store, spec.keys, event.rank, event.attempt, event.invocation, deadline,
                    event.iteration_s or spec.plan.iteration_seconds or 0.0, save_s,
                    spec.checkpoint_every)
