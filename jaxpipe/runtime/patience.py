"""The driver's store: the job's store with retries that outlast an outage.

A rank rides a store outage on its store's retries and its long waits; the driver, which
waits on losses in short polls and reads checkpoints and metrics between windows, used to die
on the first `TransientStoreError` that outlived the default `RetryPolicy` (about 5 s),
leaving its ranks running. `PatientStore` wraps the job's store so that each driver request
is retried, with capped full-jitter sleeps, for about `outage_s` seconds before it fails.

The ranks are told the wrapped store's own spec (`store_to_spec(PatientStore(s))` is
`store_to_spec(s)`), so they reach the same objects with their own policy.
"""

from __future__ import annotations

import math
from typing import Any

from transports import ObjectStore, RetryPolicy

__all__ = ["DRIVER_OUTAGE_S", "PatientStore"]

DRIVER_OUTAGE_S = 90.0
"""Seconds of store outage the driver waits out before a request fails."""


class PatientStore(ObjectStore):
    """`store`, each request retried for about `outage_s` seconds of transient failures.

    Each attempt is one call of the wrapped store's public method (itself retried by the
    wrapped store's policy), so the wait is at least `outage_s`.
    """

    def __init__(self, store: ObjectStore, outage_s: float = DRIVER_OUTAGE_S) -> None:
        # Sleeps are uniform in [0, 2 s] once capped: about 1 s each on average.
        super().__init__(poll=store.poll, retry=RetryPolicy(
            max_attempts=max(1, math.ceil(outage_s)), initial_s=0.1, max_s=2.0))
        self.store = store

    def _put(self, key: str, data: bytes | memoryview) -> None:
        self.store.put(key, data)

    def _put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        return self.store.put_if_absent(key, data)

    def _get(self, key: str) -> bytes:
        return self.store.get(key)

    def _exists(self, key: str) -> bool:
        return self.store.exists(key)

    def _delete(self, key: str) -> None:
        self.store.delete(key)

    def _delete_many(self, keys: list[str]) -> None:
        self.store.delete_many(keys)

    def _list(self, prefix: str) -> tuple[list[str], int]:
        keys = self.store.list(prefix)
        return keys, max(1, -(-len(keys) // 1000))

    def _spec(self) -> dict[str, Any]:
        return self.store._spec()  # pyright: ignore[reportPrivateUsage]
