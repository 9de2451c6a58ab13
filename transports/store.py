"""The object-store contract every backend fulfils, its errors, and its request counters.

A store maps string keys to immutable byte strings. Serverless functions cannot talk to each
other, so this is the only channel between them; three facts shape the contract:

* A reader usually asks for a key *before* the writer has put it. `get(key, timeout)` therefore
  polls with backoff (`retry.Backoff`) until the key appears or the timeout ends, and then raises
  `GetTimeout` naming the key. Polling uses GET on the exact key (a miss costs one GET, and a hit
  needs no second round trip); nothing ever lists a bucket to find a key.
* Requests cost money and time, so every store counts them (`StoreStats`): successful requests
  by kind, GETs that found nothing (`misses`), transient failures that were retried (`retries`),
  and payload bytes each way. Snapshots subtract, so a caller measures one operation as
  `after - before`.
* Transient failures (throttling, 5xx, dropped connections) are retried here, in one place,
  with `retry.RetryPolicy`; a backend only translates its native errors into
  `TransientStoreError` (retry) or `KeyNotFound` (the key is absent); anything else propagates.

Backends subclass `ObjectStore` and implement the private one-shot operations `_put`,
`_put_if_absent`, `_get`, `_exists`, `_delete`, `_list` and `_spec` (`_delete_many` too if
they can batch); the public methods add key checks, waiting, retries and counting. Keys are
'/'-separated paths: non-empty, at most 1024 UTF-8 bytes, no leading '/', and no empty, '.' or
'..' segment (S3 allows such keys; no JaxPipe key needs them and they cannot map to files).
"""

from __future__ import annotations

import abc
import dataclasses
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from transports.retry import Backoff, RetryPolicy

__all__ = ["DELETE_BATCH", "GetTimeout", "KeyNotFound", "ObjectStore", "StoreError",
           "StoreStats", "TransientStoreError", "check_key", "check_prefix"]

DELETE_BATCH = 1000
"""Keys removed by one DELETE request of `delete_many` (S3's DeleteObjects limit)."""

_MAX_KEY_BYTES = 1024
_T = TypeVar("_T")


class StoreError(Exception):
    """A store request failed for a reason other than a missing key."""


class TransientStoreError(StoreError):
    """A request failed in a way that may succeed if re-sent (throttling, 5xx, lost connection).

    Backends raise it; `ObjectStore` retries it with the store's `RetryPolicy` and raises it
    only once the attempts are used up.
    """


class KeyNotFound(KeyError):
    """The key does not exist in the store (S3 NoSuchKey/404, a missing file, ...).

    Every backend translates its own "not found" into this one type.
    """

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"key {self.key!r} does not exist"


class GetTimeout(TimeoutError):
    """`get(key, timeout)` waited `timeout` seconds and the key never appeared.

    Fix: check that the writer of the key is alive and uses the same store and prefix, or
    raise the timeout.
    """

    def __init__(self, key: str, waited_s: float, polls: int) -> None:
        super().__init__(f"timed out after {waited_s:.3g} s ({polls} polls) waiting for key "
                         f"{key!r} to appear")
        self.key = key
        self.waited_s = waited_s


@dataclass(frozen=True)
class StoreStats:
    """A snapshot of one store handle's request counters.

    Request counts are of *successful* requests by kind (what a bill counts, minus the failed
    ones); `misses` are GETs that found no key (polls), `retries` are attempts that failed
    transiently and were re-sent. Bytes are payload bytes (PUT bodies up, GET bodies down).
    Snapshots add and subtract field by field.

    Example:
      >>> a = StoreStats(puts=2, bytes_up=10)
      >>> (a + a - StoreStats(puts=1)).puts
      3
    """

    puts: int = 0
    gets: int = 0
    heads: int = 0
    lists: int = 0
    deletes: int = 0
    misses: int = 0
    retries: int = 0
    bytes_up: int = 0
    bytes_down: int = 0

    def __add__(self, other: StoreStats) -> StoreStats:
        return StoreStats(*(a + b for a, b in zip(_values(self), _values(other), strict=True)))

    def __sub__(self, other: StoreStats) -> StoreStats:
        return StoreStats(*(a - b for a, b in zip(_values(self), _values(other), strict=True)))

    @property
    def requests(self) -> int:
        """All requests sent: the five kinds, the misses and the failed attempts."""
        return (self.puts + self.gets + self.heads + self.lists + self.deletes + self.misses
                + self.retries)

    def by_kind(self) -> dict[str, int]:
        """Returns {"PUT", "GET", "HEAD", "LIST", "DELETE"} -> successful request count."""
        return {"PUT": self.puts, "GET": self.gets, "HEAD": self.heads, "LIST": self.lists,
                "DELETE": self.deletes}

    def to_dict(self) -> dict[str, int]:
        """Returns every field, JSON-able."""
        return dataclasses.asdict(self)


def _values(stats: StoreStats) -> tuple[int, ...]:
    return tuple(getattr(stats, f.name) for f in dataclasses.fields(stats))


def check_key(key: object) -> str:
    """Returns `key` if it is a valid store key; raises ValueError naming the rule it breaks
    (TypeError if it is not a str).

    Example:
      >>> check_key("jobs/1/it/0")
      'jobs/1/it/0'
    """
    if not isinstance(key, str):
        raise TypeError(f"store key must be a str, got {key!r}")
    if not key:
        raise ValueError("store key must not be empty")
    if key.endswith("/"):
        raise ValueError(f"store key {key!r} ends with '/'; keys name objects, not folders")
    _check_path(key, "key")
    return key


def check_prefix(prefix: object) -> str:
    """Returns `prefix` if it is a valid key prefix ('' or the start of a valid key)."""
    if not isinstance(prefix, str):
        raise TypeError(f"store prefix must be a str, got {prefix!r}")
    if prefix:
        _check_path(prefix, "prefix")
    return prefix


def _check_path(path: str, what: str) -> None:
    if len(path.encode("utf-8")) > _MAX_KEY_BYTES:
        raise ValueError(f"store {what} {path[:40]!r}... is longer than {_MAX_KEY_BYTES} bytes")
    if path.startswith("/"):
        raise ValueError(f"store {what} {path!r} starts with '/'; write it relative")
    segments = path.split("/")
    # A prefix's last segment may be partial ('' or '.' are the start of valid segments).
    for seg in segments if what == "key" else segments[:-1]:
        if seg in ("", ".", ".."):
            raise ValueError(f"store {what} {path!r} has an empty, '.' or '..' segment")
    if "\x00" in path:
        raise ValueError(f"store {what} {path!r} contains a NUL character")


class ObjectStore(abc.ABC):
    """A key -> bytes store shared by the functions of a job; the base of every backend.

    Public methods check keys, retry transient failures, wait for missing keys and count
    requests; subclasses implement one-shot private operations. A store handle is safe to share
    between threads.

    Args:
      poll: sleeps between polls of `get(key, timeout)`.
      retry: how transient failures are retried.
    """

    def __init__(self, *, poll: Backoff | None = None, retry: RetryPolicy | None = None) -> None:
        self.poll = poll or Backoff()
        self.retry = retry or RetryPolicy()
        self._stats = StoreStats()
        self._stats_lock = threading.Lock()
        self._rng = random.Random()

    # -- the contract -----------------------------------------------------------------------

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        """Stores `data` under `key`, replacing any object there (one PUT).

        A reader never sees a partial object: it sees the old object, the new one, or nothing.
        """
        check_key(key)
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        self._call(lambda: self._put(key, view))
        self._count(puts=1, bytes_up=len(view))

    def put_if_absent(self, key: str, data: bytes | bytearray | memoryview) -> bool:
        """Stores `data` under `key` only if no object is there; returns whether this call did.

        One conditional PUT (S3 `If-None-Match: *`): of any number of concurrent callers on one
        key, exactly one gets True, and an existing object is never replaced. This is how a
        serverless rank claims its slot when the platform delivers one event twice.

        A retried request is ambiguous: if the first attempt reached the store and only its
        reply was lost, the retry is refused although this call wrote the object. So when the
        store refuses after a transient failure, the object is read back and compared with
        `data`; callers therefore pass data unique to the caller (a random token).

        Raises:
          TransientStoreError: the store kept failing for every retry attempt.
        """
        check_key(key)
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        attempts: list[int] = []

        def attempt() -> bool:
            attempts.append(1)
            return self._put_if_absent(key, view)

        created = self._call(attempt)
        if created:
            self._count(puts=1, bytes_up=len(view))
            return True
        self._count(puts=1)  # a refused conditional PUT is still a billed request
        if len(attempts) > 1:  # ambiguous: did an attempt whose reply was lost write it?
            try:
                return self._call(lambda: self._get(key)) == bytes(view)
            except KeyNotFound:
                return False
        return False

    def get(self, key: str, timeout: float | None = None) -> bytes:
        """Returns the object under `key`, waiting up to `timeout` s for it to appear.

        Args:
          key: the object's key.
          timeout: seconds to keep polling (with `self.poll` backoff) while the key is
            missing; None means do not wait.

        Raises:
          KeyNotFound: the key is missing and `timeout` is None.
          GetTimeout: the key is still missing after `timeout` seconds; the message names it.
        """
        check_key(key)
        start = time.monotonic()
        polls = 0
        while True:
            try:
                data = self._call(lambda: self._get(key))
            except KeyNotFound:
                polls += 1
                self._count(misses=1)
                if timeout is None:
                    raise
                left = start + timeout - time.monotonic()
                if left <= 0:
                    raise GetTimeout(key, time.monotonic() - start, polls) from None
                time.sleep(min(left, self.poll.delay(polls - 1, self._rng)))
                continue
            self._count(gets=1, bytes_down=len(data))
            return data

    def exists(self, key: str) -> bool:
        """Returns whether `key` exists, with one HEAD on that exact key."""
        check_key(key)
        found = self._call(lambda: self._exists(key))
        self._count(heads=1)
        return found

    def delete(self, key: str) -> None:
        """Deletes `key` (one DELETE); deleting a missing key is not an error (as on S3)."""
        check_key(key)
        self._call(lambda: self._delete(key))
        self._count(deletes=1)

    def delete_many(self, keys: Iterable[str]) -> None:
        """Deletes `keys` with one DELETE request per `DELETE_BATCH` keys; missing keys are fine."""
        keys = [check_key(k) for k in keys]
        for i in range(0, len(keys), DELETE_BATCH):
            batch = keys[i:i + DELETE_BATCH]
            self._call(lambda batch=batch: self._delete_many(batch))
            self._count(deletes=1)

    def list(self, prefix: str) -> list[str]:
        """Returns every key that starts with `prefix` (a plain string prefix), sorted.

        Costs one LIST request per page of 1000 keys (at least one).
        """
        check_prefix(prefix)
        keys, pages = self._call(lambda: self._list(prefix))
        self._count(lists=max(1, pages))
        return keys

    def delete_prefix(self, prefix: str) -> int:
        """Deletes every key that starts with `prefix`; returns how many there were."""
        keys = self.list(prefix)
        self.delete_many(keys)
        return len(keys)

    @property
    def stats(self) -> StoreStats:
        """A snapshot of this handle's request counters."""
        with self._stats_lock:
            return self._stats

    # -- what a backend implements ------------------------------------------------------------

    @abc.abstractmethod
    def _put(self, key: str, data: bytes | memoryview) -> None:
        """Stores the object in one attempt."""

    @abc.abstractmethod
    def _put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        """Stores the object unless the key exists, atomically, in one attempt; returns whether
        it stored it."""

    @abc.abstractmethod
    def _get(self, key: str) -> bytes:
        """Returns the object in one attempt; raises KeyNotFound if it is absent."""

    @abc.abstractmethod
    def _exists(self, key: str) -> bool:
        """Returns whether the object exists, in one attempt."""

    @abc.abstractmethod
    def _delete(self, key: str) -> None:
        """Deletes the object in one attempt; a missing object is not an error."""

    def _delete_many(self, keys: list[str]) -> None:
        """Deletes up to DELETE_BATCH objects in one attempt (default: one by one)."""
        for key in keys:
            self._delete(key)

    @abc.abstractmethod
    def _list(self, prefix: str) -> tuple[list[str], int]:
        """Returns (sorted keys starting with `prefix`, LIST pages it took)."""

    @abc.abstractmethod
    def _spec(self) -> dict[str, Any]:
        """Returns the JSON-able description `transports.spec` rebuilds the store from."""

    # -- helpers ----------------------------------------------------------------------------

    def _call(self, attempt: Callable[[], _T]) -> _T:
        """Runs `attempt`, re-running it on TransientStoreError as `self.retry` allows."""
        for i in range(self.retry.max_attempts):
            try:
                return attempt()
            except TransientStoreError:
                if i + 1 >= self.retry.max_attempts:
                    raise
                self._count(retries=1)
                time.sleep(self.retry.delay(i, self._rng))
        raise AssertionError("unreachable")

    def _count(self, **increments: int) -> None:
        with self._stats_lock:
            self._stats = dataclasses.replace(
                self._stats, **{k: getattr(self._stats, k) + v for k, v in increments.items()})
