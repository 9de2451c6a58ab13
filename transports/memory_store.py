"""`MemoryStore`: objects in a dict, for ranks that are threads of one process."""

from __future__ import annotations

import bisect
import threading
from typing import Any

from transports.retry import Backoff, RetryPolicy
from transports.store import KeyNotFound, ObjectStore

__all__ = ["MemoryStore"]


class _Objects:
    """The shared state behind MemoryStore handles: a dict plus a sorted key index, one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.data: dict[str, bytes] = {}
        self.sorted_keys: list[str] = []


class MemoryStore(ObjectStore):
    """An in-process store: fast, and shared only by threads of this process.

    Objects are immutable `bytes`, so a GET returns the stored object itself (no copy) and a
    reader can never see a partial write. `view()` gives another handle on the same objects with
    its own request counters, which is how threads emulating separate functions each measure
    their own requests.

    Example:
      >>> store = MemoryStore()
      >>> store.put("jobs/1/x", b"abc")
      >>> store.get("jobs/1/x"), store.list("jobs/"), store.stats.puts
      (b'abc', ['jobs/1/x'], 1)
    """

    def __init__(self, *, poll: Backoff | None = None, retry: RetryPolicy | None = None,
                 _objects: _Objects | None = None) -> None:
        super().__init__(poll=poll, retry=retry)
        self._objects = _objects or _Objects()

    def view(self) -> MemoryStore:
        """Returns a new handle on the same objects, with fresh request counters."""
        return MemoryStore(poll=self.poll, retry=self.retry, _objects=self._objects)

    def _put(self, key: str, data: bytes | memoryview) -> None:
        blob = bytes(data)  # bytes(bytes) is the same object: no copy for the common case
        objs = self._objects
        with objs.lock:
            if key not in objs.data:
                bisect.insort(objs.sorted_keys, key)
            objs.data[key] = blob

    def _put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        objs = self._objects
        with objs.lock:
            if key in objs.data:
                return False
            bisect.insort(objs.sorted_keys, key)
            objs.data[key] = bytes(data)
        return True

    def _get(self, key: str) -> bytes:
        try:
            return self._objects.data[key]
        except KeyError:
            raise KeyNotFound(key) from None

    def _exists(self, key: str) -> bool:
        return key in self._objects.data

    def _delete(self, key: str) -> None:
        objs = self._objects
        with objs.lock:
            if objs.data.pop(key, None) is not None:
                del objs.sorted_keys[bisect.bisect_left(objs.sorted_keys, key)]

    def _list(self, prefix: str) -> tuple[list[str], int]:
        objs = self._objects
        with objs.lock:
            start = bisect.bisect_left(objs.sorted_keys, prefix)
            keys: list[str] = []
            for key in objs.sorted_keys[start:]:
                if not key.startswith(prefix):
                    break
                keys.append(key)
        return keys, -(-len(keys) // 1000)

    def _spec(self) -> dict[str, Any]:
        raise ValueError("a MemoryStore lives in one process and cannot be described to another; "
                         "use FileStore or S3Store for ranks in separate processes")
