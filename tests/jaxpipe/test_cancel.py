"""The cancellation marker and the driver heartbeat, as a rank's watch reads them."""

from __future__ import annotations

import json
import threading

from jaxpipe.runtime.cancel import RankWatch, cancel_attempt, cancellation
from jaxpipe.runtime.job import Keys
from transports import FileStore

KEYS = Keys("job")


def test_the_first_cancellation_of_an_attempt_stands_and_others_are_untouched(tmp_path):
    store = FileStore(str(tmp_path))
    assert cancellation(store, KEYS, 0) is None
    first = cancel_attempt(store, KEYS, 0, "rank 1 failed", by="rank 1", rank=1)
    again = cancel_attempt(store, KEYS, 0, "driver gave up")
    assert again == first and cancellation(store, KEYS, 0) == first
    assert cancellation(store, KEYS, 1) is None
    assert store.list(KEYS.prefix) == ["jobs/job/cancel/0"]


def test_a_watch_stops_its_rank_once_on_its_attempts_marker(tmp_path):
    store = FileStore(str(tmp_path))
    seen: list[str] = []
    stopped = threading.Event()

    def on_stop(reason: str) -> None:
        seen.append(reason)
        stopped.set()

    watch = RankWatch(store, KEYS, 3, on_stop=on_stop, every_s=0.01).start()
    cancel_attempt(store, KEYS, 2, "an older attempt")  # not this rank's
    assert watch.poll_once() is None
    cancel_attempt(store, KEYS, 3, "rank 0 failed")
    assert stopped.wait(timeout=30)
    watch.stop()
    assert seen == ["attempt 3 cancelled by driver: rank 0 failed"]
    assert watch.stopped.is_set()


def test_a_watch_counts_a_frozen_heartbeat_as_a_gone_driver_and_ignores_a_missing_one(tmp_path):
    store = FileStore(str(tmp_path))
    watch = RankWatch(store, KEYS, 0, driver_stale_s=0.0)
    assert watch.poll_once() is None  # no lease: no driver watches this rank
    store.put(KEYS.driver, json.dumps({"beat": 1}).encode())
    assert watch.poll_once() is None  # a new beat
    assert "the driver is gone" in (watch.poll_once() or "")  # the same beat, stale at once
    store.put(KEYS.driver, json.dumps({"beat": 2}).encode())
    assert watch.poll_once() is None
