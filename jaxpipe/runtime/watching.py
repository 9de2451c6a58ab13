"""The driver's watch over one window: losses as they arrive, and every rank's fate.

    for t < stop:       wait for the last stage's loss records of (attempt, t)
                        meanwhile, every POLL_S:  each rank's `poll()`     (exit codes, statuses)
                        every WATCH_EVERY_S:      the attempt's cancellation marker, and the
                                                  window's hand-over marker: its stop ends the
                                                  window early (`runtime.handover`)
                        a non-finite loss:        NonFiniteLossError (the job ends)
    then:               every rank's end, watched the same way

A rank that fails writes its "failed" status and then its attempt's marker
(`jaxpipe.runtime.worker`), so the driver learns of a failure within about a second on any
platform, reads the failing rank's own error from its status, and names that rank even when
its peers, cancelled by the marker, exited first. Store errors while watching (an outage) are
waited out: they count toward a silent rank's timeout, never end the driver.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from jaxpipe.errors import NonFiniteLossError
from jaxpipe.runtime.attempts import RankDeath, Window
from jaxpipe.runtime.cancel import WATCH_EVERY_S, cancellation
from jaxpipe.runtime.event import RankStatus
from jaxpipe.runtime.handover import read_marker
from jaxpipe.runtime.job import JobSpec
from jaxpipe.runtime.metrics import LossRecord
from jaxpipe.runtime.platforms import Invocation, Outcome
from planners import Schedule
from transports import KeyNotFound, ObjectStore, StoreError

__all__ = ["POLL_S", "WindowWatch"]

POLL_S = 0.25
"""Seconds between the driver's looks at its ranks while it waits."""


@dataclass
class WindowWatch:
    """Follows one window of one attempt (see the module docstring).

    Attributes:
      store, spec, schedule, window, ranks: the job, its window and its launched ranks.
      silent_after_s: seconds without progress after which a rank that has not ended counts
        as SILENT (the job's wait timeout plus an invocation's limit).
      stop: where the window ends: `window.stop`, or a hand-over marker's earlier stop once
        the watch has read it.
    """

    store: ObjectStore
    spec: JobSpec
    schedule: Schedule
    window: Window
    ranks: list[Invocation]
    silent_after_s: float
    stop: int = field(init=False)
    _marker_checked: float = 0.0

    def __post_init__(self) -> None:
        self.stop = self.window.stop

    def losses(self, on_loss: Callable[[int, float], None]) -> RankDeath | None:
        """Waits for each iteration's losses, calling `on_loss(t, mean)`; the death that
        ended the window early, or None.

        Raises:
          NonFiniteLossError: an iteration's loss is NaN or infinite.
        """
        last = self.spec.num_stages - 1
        last_ranks = [self.schedule.rank(last, r)
                      for r in range(self.spec.plan.stages[last].replicas)]
        t = self.window.start
        while t < self.stop:
            losses: list[float] = []
            for r in last_ranks:
                body = self._wait_for(self.spec.keys.loss(t, r, self.window.attempt), r, t)
                if isinstance(body, RankDeath):
                    return body
                if body is None:  # the window was handed over before t
                    return None
                parsed = _parsed_losses(body)
                if parsed is None:
                    return self._culprit(RankDeath(r, Outcome.FAILED, reason=(
                        f"its loss record of iteration {t} does not parse")))
                losses += parsed
            mean = float(np.mean(losses))
            if not math.isfinite(mean):
                raise NonFiniteLossError(
                    f"the loss of iteration {t} is {mean} (job {self.spec.job_id}, attempt "
                    f"{self.window.attempt}); training diverged: lower the learning rate "
                    f"(it was {self.spec.learning_rate}) or check the data for NaN/inf")
            on_loss(t, mean)
            t += 1
        return None

    def ends(self) -> RankDeath | None:
        """Waits until every rank has ended; the first that did not finish, or None."""
        began = time.time()
        pending = list(self.ranks)
        while pending:
            death = self._look()
            if death is not None:
                return death
            pending = [r for r in pending if r.poll() is None]
            if pending and time.time() - began > self.silent_after_s:
                return RankDeath(pending[0].rank, Outcome.SILENT,
                                 reason=f"no end after {self.silent_after_s:.0f} s")
            if pending:
                time.sleep(POLL_S)
        return None

    def _wait_for(self, key: str, rank: int, t: int) -> bytes | RankDeath | None:
        """The object at `key` (of iteration t) once it appears, the death that came first, or
        None once a hand-over marker ends the window before t."""
        began = time.time()
        while True:
            death = self._look()
            if death is not None:
                return death
            if t >= self.stop:
                return None
            try:
                return self.store.get(key, timeout=POLL_S)
            except TimeoutError:
                pass
            except StoreError:  # an outage: wait it out, as the ranks do
                time.sleep(POLL_S)
            if time.time() - began > self.silent_after_s:
                return RankDeath(rank, Outcome.SILENT, reason=(
                    f"no loss for {self.silent_after_s:.0f} s (waited for {key})"))

    def _look(self) -> RankDeath | None:
        """One look at every rank and (at most every WATCH_EVERY_S) the attempt's marker."""
        for rank in self.ranks:
            outcome = rank.poll()
            if outcome is not None and outcome is not Outcome.FINISHED:
                return self._culprit(RankDeath(rank.rank, outcome))
        if time.time() - self._marker_checked >= WATCH_EVERY_S:
            self._marker_checked = time.time()
            try:
                marker = cancellation(self.store, self.spec.keys, self.window.attempt)
            except StoreError:
                return None
            if marker is not None:
                rank = marker.rank if marker.rank is not None else 0
                return self._culprit(RankDeath(rank, Outcome.FAILED, reason=marker.reason))
            self._read_handover()
        return None

    def _read_handover(self) -> None:
        """Learns the window's early stop from its hand-over marker, if a rank wrote one."""
        try:
            marker = read_marker(self.store, self.spec.keys, self.window.attempt,
                                 self.window.invocation)
        except (StoreError, ValueError, KeyError):
            return  # an outage, or a marker being written: the next look reads it
        if marker is not None:
            self.stop = min(self.stop, marker.stop)

    def _culprit(self, death: RankDeath) -> RankDeath:
        """`death` with the rank that failed first (the marker names it) and its own error."""
        try:
            marker = cancellation(self.store, self.spec.keys, self.window.attempt)
        except StoreError:
            marker = None
        rank, reason = death.rank, death.reason
        if marker is not None and marker.rank is not None:
            rank, reason = marker.rank, reason or marker.reason
        outcome = death.outcome if rank == death.rank else Outcome.FAILED
        return RankDeath(rank, outcome, self._error_of(rank), reason)

    def _error_of(self, rank: int) -> str | None:
        key = self.spec.keys.status(self.window.attempt, self.window.invocation, rank)
        try:
            return RankStatus.from_dict(json.loads(self.store.get(key))).error
        except (KeyNotFound, StoreError, ValueError):
            return None


def _parsed_losses(body: bytes) -> list[float] | None:
    """The losses of a loss record; None if it does not parse (the rank counts as failed)."""
    try:
        return list(LossRecord.from_json(body).losses)
    except (ValueError, KeyError, TypeError):
        return None
