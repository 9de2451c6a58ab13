"""The receives of one iteration, downloaded at most two ahead of use per kind.

A rank's task list names its receives (RECV_ACT, RECV_GRAD) in the order its compute thread
consumes them: under both schedules of `planners.schedule` FWD(m) takes RECV_ACT(m) and BWD(m)
takes RECV_GRAD(m) in list order. `Receives` submits them to the download lane in that same
order, but holds back receive k while `depth` (2) receives of its kind are downloaded and not
yet taken, and the compute thread drops each value once it takes it. So a rank holds at most
`depth` boundary messages per kind besides the one it computes on, the double buffer the cost
model budgets (`planners.cost`: 2 b (in + out)), instead of every message of the iteration.

Why this cannot deadlock where queueing every receive at once did not: receives are submitted
in consumption order and the lane runs them in submission order, so when compute waits for
receive k, every receive before k has been taken; none of k's kind is outstanding, k has been
submitted, and only k's own object can hold it up. Each receive starts no later than compute
takes the one before it, which compute must do before it needs k anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from typing import Any

from planners.schedule import Kind, Task

__all__: list[str] = []  # internal to jaxpipe.runtime.rank

RECEIVES = (Kind.RECV_ACT, Kind.RECV_GRAD)
DEPTH = 2  # receives of one kind downloaded ahead of use: a double buffer


class Receives:
    """One iteration's receives on the download lane, at most `depth` outstanding per kind.

    Args:
      tasks: the rank's task list; its RECV_ACT and RECV_GRAD tasks are taken in list order.
      fetch: downloads one receive (runs on `lane`).
      lane: the download lane (one thread: receives run in submission order).
      depth: receives of a kind submitted and not yet taken; None: no bound (every receive
        queued at once, as the runtime did before).
    """

    def __init__(self, tasks: Sequence[Task], fetch: Callable[[Task], list[Any]],
                 lane: Executor, depth: int | None = DEPTH) -> None:
        if depth is not None and depth < 1:
            raise ValueError(f"depth must be >= 1 or None, got {depth}")
        self._order = [t for t in tasks if t.kind in RECEIVES]
        self._fetch, self._lane, self._depth = fetch, lane, depth
        self._next = 0  # index in _order of the next receive to submit
        self._pending: dict[tuple[Kind, int], Future[list[Any]]] = {}
        self._count = {kind: 0 for kind in RECEIVES}  # outstanding per kind
        self.most = {kind: 0 for kind in RECEIVES}  # the largest _count seen
        self._submit()

    def _submit(self) -> None:
        """Submits receives in order until the next one's kind has `depth` outstanding."""
        while self._next < len(self._order):
            task = self._order[self._next]
            if self._depth is not None and self._count[task.kind] >= self._depth:
                return
            key = (task.kind, micro_batch(task))
            self._pending[key] = self._lane.submit(self._fetch, task)
            self._count[task.kind] += 1
            self.most[task.kind] = max(self.most[task.kind], self._count[task.kind])
            self._next += 1

    def take(self, kind: Kind, m: int, timeout: float) -> list[Any]:
        """Waits for (kind, m)'s download, forgets it, and submits the receives it made room
        for. Raises KeyError for a receive that is not in the list or was taken already."""
        future = self._pending[(kind, m)]
        value = future.result(timeout=timeout)
        del self._pending[(kind, m)]
        self._count[kind] -= 1
        self._submit()
        return value

    @property
    def outstanding(self) -> int:
        """Receives submitted and not yet taken."""
        return len(self._pending)


def micro_batch(task: Task) -> int:
    """The micro-batch a FWD, BWD or receive task works on."""
    assert task.micro_batch is not None, f"{task.kind} tasks name their micro-batch"
    return task.micro_batch
