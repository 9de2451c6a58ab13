"""Conformance of `put_if_absent`, the conditional write a serverless rank claims its slot with.

Every backend of the suite runs it (memory, file, S3 on moto, on s3rver and on SeaweedFS), plus
the two wrappers. s3rver 3.7.1 ignores `If-None-Match` on PUT and overwrites, so its run is an
expected failure: the suite is what tells a server that honours the header from one that does
not. SeaweedFS enforces it atomically, as AWS S3 does, so it is the server the concurrent claim
race runs on for real (moto's check is not atomic).
"""

from __future__ import annotations

import concurrent.futures as cf
import uuid

import pytest

from transports import FaultyStore, MemoryStore, ObjectStore, ThrottledStore


@pytest.fixture
def conditional_store(request: pytest.FixtureRequest, store: ObjectStore,
                      store_kind: str) -> ObjectStore:
    if store_kind == "s3-s3rver":
        request.applymarker(pytest.mark.xfail(
            reason="s3rver 3.7.1 ignores If-None-Match on PutObject and overwrites the object"))
    return store


def test_the_first_conditional_put_creates_and_the_second_is_refused(
        conditional_store: ObjectStore) -> None:
    store = conditional_store
    assert store.put_if_absent("claims/rank0", b"first")
    assert not store.put_if_absent("claims/rank0", b"second")
    assert store.get("claims/rank0") == b"first"
    assert store.stats.puts == 2 and store.stats.bytes_up == len(b"first")


def test_a_conditional_put_never_replaces_a_plain_put(conditional_store: ObjectStore) -> None:
    store = conditional_store
    store.put("k", b"plain")
    assert not store.put_if_absent("k", b"conditional")
    assert store.get("k") == b"plain"


def test_a_deleted_key_can_be_claimed_again(conditional_store: ObjectStore) -> None:
    store = conditional_store
    assert store.put_if_absent("a/b", memoryview(bytearray(b"one")))
    store.delete("a/b")
    assert store.put_if_absent("a/b", b"two")
    assert store.get("a/b") == b"two"
    assert store.list("a/") == ["a/b"]  # no temporary file or marker is visible


def test_exactly_one_of_many_concurrent_claims_wins(conditional_store: ObjectStore,
                                                    store_kind: str) -> None:
    if store_kind == "s3-moto":
        # moto checks and writes without a lock, so two requests in the same instant can both
        # pass; AWS S3 serialises them (the other gets 412 or 409). Sequential duplicates are
        # what Lambda's redelivery produces, and those are covered above.
        pytest.skip("moto's conditional PUT is not atomic under concurrent requests")
    store = conditional_store
    tokens = [uuid.uuid4().hex.encode() for _ in range(16)]
    with cf.ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda t: store.put_if_absent("race", t), tokens))
    assert sum(won) == 1
    assert store.get("race") == tokens[won.index(True)]


def test_wrappers_pass_conditional_puts_through() -> None:
    inner = MemoryStore()
    link = ThrottledStore(inner, 1e9, 1e9, 0.0)
    assert link.put_if_absent("k", b"x") and not link.put_if_absent("k", b"y")
    assert inner.get("k") == b"x"


def test_a_claim_whose_reply_was_lost_is_still_reported_as_won() -> None:
    """A retried conditional PUT is refused by the object its own lost attempt wrote; the
    read-back of the caller's unique token must still report the claim as won."""
    inner = MemoryStore()
    faulty = FaultyStore(inner, failure_rate=0.5, seed=3)
    results = []
    for i in range(40):
        token = uuid.uuid4().hex.encode()
        won = faulty.put_if_absent(f"claim/{i}", token)
        results.append((won, inner.get(f"claim/{i}") == token))
    assert all(won == stored for won, stored in results)
    assert all(won for won, _ in results)  # nobody else claimed: every call must win
    assert faulty.injected > 0
    assert not faulty.put_if_absent("claim/0", b"late duplicate")
