"""One driver per job: the lease at `jobs/<id>/driver.json`, and its heartbeat.

A driver claims a job id before it writes anything else of the job (`DriverLease.acquire`, a
conditional PUT), and holds the lease until it ends (`release`, in a `finally`). While it
holds it, a daemon thread rewrites the record every `BEAT_S` seconds with `beat` + 1: ranks
read it (`cancel.RankWatch`) and stop when it has been still for `cancel.DRIVER_STALE_S`, so no
rank outlives its driver for long on any platform.

    {"token": "<hex>", "host": "laptop", "pid": 4242, "started": 1.7e9, "beat": 17,
     "command": "train"}

A second driver for the same job id is refused with `JobRunningError` naming the holder,
unless the holder is gone: a lease from this host whose pid no longer runs is taken over at
once; one from another host once its beat has not changed for `stale_s` seconds (watched on
this machine's clock, so clocks are never compared). Of drivers that find the same dead lease
at once, one takes it over: the first conditional write of `driver.takeover/<hash of the dead
record>`; the others are refused as if the lease were live.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from jaxpipe.errors import JobRunningError
from jaxpipe.runtime.cancel import DRIVER_STALE_S
from jaxpipe.runtime.job import Keys
from transports import KeyNotFound, ObjectStore, StoreError

__all__ = ["BEAT_S", "DriverLease", "LeaseRecord"]

BEAT_S = 2.0
"""Seconds between heartbeats of a driver's lease."""


@dataclass(frozen=True)
class LeaseRecord:
    """What `driver.json` holds (see the module docstring)."""

    token: str
    host: str
    pid: int
    started: float
    beat: int = 0
    command: str = "train"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> LeaseRecord:
        d = json.loads(data)
        return cls(str(d["token"]), str(d["host"]), int(d["pid"]), float(d["started"]),
                   int(d.get("beat", 0)), str(d.get("command", "train")))

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on host {self.host}, started {started} ({self.command})"


class DriverLease:
    """A held lease and its heartbeat thread; `release()` ends both and deletes the key."""

    def __init__(self, store: ObjectStore, keys: Keys, record: LeaseRecord,
                 beat_s: float = BEAT_S) -> None:
        self.store, self.keys, self.record, self.beat_s = store, keys, record, beat_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="driver-heartbeat", daemon=True)

    @classmethod
    def acquire(cls, store: ObjectStore, keys: Keys, command: str = "train",
                stale_s: float = DRIVER_STALE_S, beat_s: float = BEAT_S) -> DriverLease:
        """Claims the job for this process (see the module docstring); starts the heartbeat.

        Raises:
          JobRunningError: a live driver holds the job; the message names it.
        """
        mine = LeaseRecord(uuid.uuid4().hex, socket.gethostname(), os.getpid(), time.time(),
                           command=command)
        while not store.put_if_absent(keys.driver, mine.to_json()):
            try:
                raw = store.get(keys.driver)
            except KeyNotFound:
                continue  # released meanwhile: claim it afresh
            holder = _parse(raw)
            if not _gone(store, keys, holder, stale_s):
                raise JobRunningError(
                    f"job {keys.job_id} is held by another driver ({holder.describe()}, "
                    f"heartbeat {holder.beat}); wait for it, stop it, or choose another "
                    "--job-id")
            # The holder is gone. Drivers that found it gone at once (two resumes on one host)
            # race here: only the first conditional write on that dead record takes over.
            dead = hashlib.sha256(raw).hexdigest()[:16]
            if not store.put_if_absent(keys.takeover(dead), mine.to_json()):
                raise JobRunningError(
                    f"job {keys.job_id}: another driver is taking over its dead driver's "
                    "lease at this moment; wait for it, stop it, or choose another --job-id")
            store.put(keys.driver, mine.to_json())
            break
        lease = cls(store, keys, mine, beat_s)
        lease._thread.start()
        return lease

    def release(self) -> None:
        """Stops the heartbeat and deletes the lease if it is still this driver's. A job that
        has no `job.json` by now was never made (its setup failed or was refused): whatever
        of it was uploaded is deleted with the lease, so a half-made job is never taken for a
        job."""
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.beat_s + 30.0)
        try:
            holder = _read(self.store, self.keys)
            if holder is not None and holder.token == self.record.token:
                if not self.store.exists(self.keys.spec):
                    self.store.delete_prefix(self.keys.prefix)
                self.store.delete_prefix(self.keys.takeover(""))
                self.store.delete(self.keys.driver)
        except StoreError:
            pass  # a stale lease is taken over by the next driver

    def _beat(self) -> None:
        beat = 0
        while not self._done.wait(self.beat_s):
            beat += 1
            try:
                holder = _read(self.store, self.keys)
                if holder is not None and holder.token != self.record.token:
                    return  # taken over: this driver's lease is gone
                record = LeaseRecord(**{**asdict(self.record), "beat": beat})
                if not self._done.is_set():
                    self.store.put(self.keys.driver, record.to_json())
            except (StoreError, ValueError):
                continue  # an outage: the next beat tries again


def _read(store: ObjectStore, keys: Keys) -> LeaseRecord | None:
    try:
        return _parse(store.get(keys.driver))
    except KeyNotFound:
        return None


def _parse(raw: bytes) -> LeaseRecord:
    try:
        return LeaseRecord.from_json(raw)
    except (ValueError, KeyError):  # a half-written or foreign record counts as stale
        return LeaseRecord("?", "?", -1, 0.0, -1)


def _gone(store: ObjectStore, keys: Keys, holder: LeaseRecord, stale_s: float) -> bool:
    """Whether the holder is dead: its pid is gone (same host), or its beat stays still."""
    if holder.token == "?":
        return True
    if holder.host == socket.gethostname():
        try:
            os.kill(holder.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, another user's
        else:
            if holder.pid == os.getpid():
                return False
    end = time.monotonic() + stale_s
    while time.monotonic() < end:
        time.sleep(min(1.0, stale_s))
        now = _read(store, keys)
        if now is None or now.beat != holder.beat or now.token != holder.token:
            return now is None
    return True
