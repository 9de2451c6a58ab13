"""A rank's store whose waits end when the rank ends, so no lane outlives its invocation.

A rank's lanes (download, upload, cleanup, the all-reduce) wait for messages with
`store.get(key, timeout)`, which polls for up to the job's wait timeout. When the rank fails or
its attempt is cancelled, the handler returns while those threads still poll; a local process
exits and takes them along, but a Lambda container is frozen and thawed for its next
invocation, and the old threads would go on polling (and billing) inside it. The worker gives
its rank a `StoppableStore` and, on every exit path but a clean one, sets its `stop` event
and shuts the lanes down (`abort`): every poll of the store checks the event first, so each
waiting thread raises `RankStopped` within one poll interval and the pools join. The store
also stops at the attempt's cancellation (`runtime.cancel`), so a rank blocked in a wait for a
peer that is gone ends within seconds of the marker, not at its wait timeout.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from transports import ObjectStore

__all__ = ["RankStopped", "StoppableStore", "abort"]


class RankStopped(Exception):
    """Raised in a thread of a rank that has ended, at its next request to the store."""


class StoppableStore(ObjectStore):
    """`store` (requests counted here, as the rank's) whose requests raise `RankStopped` once
    `stop`, or any of `also` (the rank's `RankWatch.stopped`: its attempt was cancelled), is
    set: a lane blocked in a wait then ends within one poll, and so does the compute thread
    waiting on that lane.

    Example:
      >>> from transports.memory_store import MemoryStore
      >>> stop = threading.Event()
      >>> store = StoppableStore(MemoryStore(), stop)
      >>> store.put("k", b"v"); stop.set()
      >>> store.get("never", timeout=60)
      Traceback (most recent call last):
      ...
      jaxpipe.runtime.stoppable.RankStopped: the rank ended; no more requests (never)
    """

    def __init__(self, store: ObjectStore, stop: threading.Event,
                 *also: threading.Event) -> None:
        super().__init__(poll=store.poll, retry=store.retry)
        self.store, self.stop, self.also = store, stop, also

    def _check(self, key: str) -> None:
        if self.stop.is_set() or any(event.is_set() for event in self.also):
            raise RankStopped(f"the rank ended; no more requests ({key})")

    def _put(self, key: str, data: bytes | memoryview) -> None:
        self._check(key)
        self.store._put(key, data)

    def _put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        self._check(key)
        return self.store._put_if_absent(key, data)

    def _get(self, key: str) -> bytes:
        self._check(key)
        return self.store._get(key)

    def _exists(self, key: str) -> bool:
        self._check(key)
        return self.store._exists(key)

    def _delete(self, key: str) -> None:
        self._check(key)
        self.store._delete(key)

    def _delete_many(self, keys: list[str]) -> None:
        self._check(keys[0] if keys else "")
        self.store._delete_many(keys)

    def _list(self, prefix: str) -> tuple[list[str], int]:
        self._check(prefix)
        return self.store._list(prefix)

    def _spec(self) -> dict[str, Any]:
        return self.store._spec()


def abort(stop: threading.Event, pools: list[ThreadPoolExecutor]) -> None:
    """Ends a rank that did not finish cleanly: its store refuses every request from now on,
    queued work is dropped, and the pools' threads are joined (each ends within one poll)."""
    stop.set()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)
