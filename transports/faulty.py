"""`FaultyStore`: a wrapper that fails a fraction of requests with throttling errors, for tests.

Real buckets answer "503 SlowDown" under load, and connections drop after the server has acted.
`FaultyStore` reproduces both: each attempt fails with probability `failure_rate`, half of the
failures *before* the request reaches the wrapped store and half *after* it acted (the reply
was lost). Code above a store must still give correct answers: the retry loop of `ObjectStore`
re-sends the request, which is why every operation of the contract is idempotent.
"""

from __future__ import annotations

import random
import threading
from typing import Any

from transports.retry import Backoff, RetryPolicy
from transports.store import ObjectStore, TransientStoreError

__all__ = ["FaultyStore"]


class FaultyStore(ObjectStore):
    """Wraps `store`, failing each attempt with probability `failure_rate` (TransientStoreError).

    Args:
      store: the store that holds the objects.
      failure_rate: probability that an attempt fails, in [0, 1).
      seed: seed of the failure draws (their order still depends on thread timing).
      poll, retry: see `ObjectStore`; the default retry policy retries fast (1 ms, 12 attempts),
        because the failures are simulated.
    """

    def __init__(self, store: ObjectStore, failure_rate: float = 0.2, seed: int = 0, *,
                 poll: Backoff | None = None, retry: RetryPolicy | None = None) -> None:
        super().__init__(poll=poll or store.poll,
                         retry=retry or RetryPolicy(max_attempts=12, initial_s=0.001, max_s=0.02))
        if not 0 <= failure_rate < 1:
            raise ValueError(f"failure_rate must be in [0, 1), got {failure_rate}")
        self.store = store
        self.failure_rate = failure_rate
        self.seed = seed
        self._draws = random.Random(seed)
        self._draws_lock = threading.Lock()
        self.injected = 0

    def _around(self, what: str, key: str, call: Any) -> Any:
        with self._draws_lock:
            u = self._draws.random()
        fail_before = u < self.failure_rate / 2
        fail_after = not fail_before and u < self.failure_rate
        if fail_before:
            self._inject(what, key, "before the request was sent")
        result = call()
        if fail_after:
            self._inject(what, key, "after the store acted")
        return result

    def _inject(self, what: str, key: str, when: str) -> None:
        with self._draws_lock:
            self.injected += 1
        raise TransientStoreError(f"injected SlowDown on {what} {key!r} ({when})")

    def _put(self, key: str, data: bytes | memoryview) -> None:
        self._around("PUT", key, lambda: self.store.put(key, data))

    def _put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        return self._around("PUT", key, lambda: self.store.put_if_absent(key, data))

    def _get(self, key: str) -> bytes:
        return self._around("GET", key, lambda: self.store.get(key))

    def _exists(self, key: str) -> bool:
        return self._around("HEAD", key, lambda: self.store.exists(key))

    def _delete(self, key: str) -> None:
        self._around("DELETE", key, lambda: self.store.delete(key))

    def _delete_many(self, keys: list[str]) -> None:
        self._around("DELETE", keys[0], lambda: self.store.delete_many(keys))

    def _list(self, prefix: str) -> tuple[list[str], int]:
        keys = self._around("LIST", prefix, lambda: self.store.list(prefix))
        return keys, -(-len(keys) // 1000)

    def _spec(self) -> dict[str, Any]:
        return {"kind": "faulty", "store": self.store._spec(), "failure_rate": self.failure_rate,
                "seed": self.seed, "poll": self.poll.to_dict(), "retry": self.retry.to_dict()}
