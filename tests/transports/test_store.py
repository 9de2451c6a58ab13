"""The store conformance suite: every backend (memory, file, S3 on moto, S3 on s3rver) passes it."""

from __future__ import annotations

import concurrent.futures as cf
import threading

import pytest

from transports import (
    FaultyStore,
    GetTimeout,
    KeyNotFound,
    ObjectStore,
    StoreStats,
    ThrottledStore,
)

TRICKY_KEYS = ["a", "a/b", "a/b/c", "ab", "a b/%20", "b/é/ü", "a.b/.hidden", "a/b-c/d_e~f"]


def test_put_then_get_returns_the_same_bytes(store: ObjectStore) -> None:
    store.put("x/one", b"hello")
    store.put("x/view", memoryview(bytearray(b"from a view")))
    store.put("x/empty", b"")
    assert store.get("x/one") == b"hello"
    assert store.get("x/view") == b"from a view"
    assert store.get("x/empty") == b""


def test_put_replaces_an_existing_object(store: ObjectStore) -> None:
    store.put("k", b"old")
    store.put("k", b"new!")
    assert store.get("k") == b"new!"
    assert store.list("") == ["k"]


def test_get_of_a_missing_key_without_timeout_raises_key_not_found_at_once(
        store: ObjectStore) -> None:
    with pytest.raises(KeyNotFound, match="nope/x") as info:
        store.get("nope/x")
    assert info.value.key == "nope/x"
    assert isinstance(info.value, KeyError)
    assert store.stats.misses == 1 and store.stats.gets == 0  # one GET, no polling


def test_get_waits_for_a_key_that_appears_later(store: ObjectStore) -> None:
    reader_done = threading.Event()

    def put_after_the_first_miss() -> None:  # so the key surely appears after a poll
        while store.stats.misses == 0 and not reader_done.wait(0.001):
            pass
        store.put("late/key", b"finally")

    writer = threading.Thread(target=put_after_the_first_miss)
    writer.start()
    try:
        assert store.get("late/key", timeout=60) == b"finally"
    finally:
        reader_done.set()
        writer.join()
    assert store.stats.gets == 1 and store.stats.misses >= 1


def test_get_timeout_names_the_key(store: ObjectStore) -> None:
    with pytest.raises(GetTimeout, match="never/there") as info:
        store.get("never/there", timeout=0.3)
    assert isinstance(info.value, TimeoutError)
    assert info.value.key == "never/there"
    assert info.value.waited_s >= 0.3  # it gave up only once the timeout had passed
    assert store.stats.misses >= 1 and store.stats.gets == 0


def test_exists_is_one_head_and_never_a_list(store: ObjectStore) -> None:
    store.put("e/1", b"1")
    before = store.stats
    assert store.exists("e/1")
    assert not store.exists("e/2")
    assert not store.exists("e")  # a folder-like prefix is not an object
    used = store.stats - before
    assert (used.heads, used.lists, used.gets) == (3, 0, 0)


def test_delete_removes_and_is_idempotent(store: ObjectStore) -> None:
    store.put("d/1", b"1")
    store.delete("d/1")
    store.delete("d/1")
    store.delete("d/never")
    assert not store.exists("d/1")
    assert store.stats.deletes == 3


def test_list_is_a_plain_string_prefix_over_tricky_keys(store: ObjectStore) -> None:
    for key in TRICKY_KEYS:
        store.put(key, key.encode())
    assert store.list("") == sorted(TRICKY_KEYS)
    assert store.list("a") == sorted(k for k in TRICKY_KEYS if k.startswith("a"))
    assert store.list("a/") == ["a/b", "a/b-c/d_e~f", "a/b/c"]
    assert store.list("a/b") == ["a/b", "a/b-c/d_e~f", "a/b/c"]
    assert store.list("a/b/") == ["a/b/c"]
    assert store.list("a.b/.h") == ["a.b/.hidden"]
    assert store.list("b/é") == ["b/é/ü"]
    assert store.list("zzz") == []
    for key in TRICKY_KEYS:
        assert store.get(key) == key.encode()


def test_list_and_delete_prefix_go_past_one_thousand_keys(store: ObjectStore) -> None:
    keys = [f"many/{i:05d}" for i in range(1001)]
    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put(k, b"."), keys))
    store.put("other/0", b"keep")
    before = store.stats
    assert store.list("many/") == keys
    assert (store.stats - before).lists == 2
    before = store.stats
    assert store.delete_prefix("many/") == 1001
    used = store.stats - before
    assert (used.lists, used.deletes) == (2, 2)  # pages of 1000 keys, batches of 1000 keys
    assert store.list("many/") == []
    assert store.list("") == ["other/0"]


def test_stats_count_requests_and_bytes_and_subtract(store: ObjectStore) -> None:
    before = store.stats
    store.put("s/1", b"12345")
    store.get("s/1")
    store.list("s/")
    store.delete_many(["s/1", "s/2"])
    used = store.stats - before
    assert used == StoreStats(puts=1, gets=1, lists=1, deletes=1, bytes_up=5, bytes_down=5)
    assert used.by_kind() == {"PUT": 1, "GET": 1, "HEAD": 0, "LIST": 1, "DELETE": 1}
    assert used.requests == 4
    assert (used + used).to_dict()["bytes_up"] == 10


@pytest.mark.parametrize("bad", ["", "/abs", "a//b", "a/./b", "../up", "dir/", "a/.."])
def test_invalid_keys_are_rejected_with_the_rule(store: ObjectStore, bad: str) -> None:
    with pytest.raises(ValueError, match="key"):
        store.put(bad, b"x")


def test_a_reader_never_sees_a_partial_object(store: ObjectStore, store_kind: str) -> None:
    if store_kind == "s3-s3rver":
        # s3rver 3.7.1 overwrites an object's file in place, so a GET racing a PUT of the same
        # key can return 0 bytes or a prefix (seen here). AWS S3 and moto replace atomically.
        # JaxPipe keys are written once, and the codec's lengths and CRC catch such reads.
        # Racing GETs also stall there for seconds at a time, so the race is not run at all.
        pytest.xfail("s3rver overwrites objects in place")
    size = 128 << 10
    store.put("atomic", bytes([0]) * size)
    # The writer may run at most 3 writes ahead of the reads, so neither starves the other
    # (s3rver, one-threaded, would otherwise serve a stream of PUTs and hardly any GET).
    ahead, stop = threading.Semaphore(3), threading.Event()
    writes = [0]
    errors: list[str] = []

    def write() -> None:
        while ahead.acquire() and not stop.is_set():
            writes[0] += 1
            store.put("atomic", bytes([writes[0] % 250]) * size)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for read in range(60):
            ahead.release(3)
            data = store.get("atomic")
            if len(data) != size or data.count(data[:1]) != size:
                errors.append(f"read {read}: {len(data)} bytes, mixed content")
    finally:
        stop.set()
        ahead.release()
        writer.join()
    assert not errors and writes[0] > 0


def test_transient_failures_are_retried_until_every_operation_succeeds(
        store: ObjectStore) -> None:
    flaky = FaultyStore(store, failure_rate=0.2, seed=1)
    for i in range(30):
        flaky.put(f"f/{i}", bytes([i]))
    assert [flaky.get(f"f/{i}") for i in range(30)] == [bytes([i]) for i in range(30)]
    assert flaky.exists("f/0")
    assert len(flaky.list("f/")) == 30
    assert flaky.delete_prefix("f/") == 30
    assert flaky.list("f/") == []
    assert flaky.stats.retries == flaky.injected > 0
    # The wrapper counts each logical request once; the store below also saw the replays of
    # requests whose reply was "lost" after it acted.
    assert flaky.stats.puts == 30 and store.stats.puts >= 30


def test_throttled_wrapper_passes_the_contract_through(store: ObjectStore) -> None:
    link = ThrottledStore(store, 50e6, 50e6, 0.002)
    link.put("t/1", b"abc")
    assert link.get("t/1") == b"abc" and link.exists("t/1")
    assert link.list("t/") == ["t/1"]
    with pytest.raises(KeyNotFound):
        link.get("t/2")
    link.delete_prefix("t/")
    assert store.list("") == []
    assert link.stats.by_kind() == {"PUT": 1, "GET": 1, "HEAD": 1, "LIST": 2, "DELETE": 1}
