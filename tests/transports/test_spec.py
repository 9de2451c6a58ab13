"""Store specs: JSON-able, credential-free, and rebuilt into an equivalent store."""

from __future__ import annotations

import json
import math

import pytest

from transports import (
    Backoff,
    FaultyStore,
    FileStore,
    MemoryStore,
    S3Store,
    ThrottledStore,
    store_from_spec,
    store_to_spec,
)


def test_a_file_store_spec_rebuilds_a_store_on_the_same_objects(tmp_path) -> None:
    store = FileStore(tmp_path, poll=Backoff(initial_s=0.001, max_s=0.01))
    store.put("a/b", b"1")
    spec = json.loads(json.dumps(store_to_spec(store)))
    again = store_from_spec(spec)
    assert isinstance(again, FileStore) and again.get("a/b") == b"1"
    assert again.poll == store.poll and again.stats.requests == 1


def test_nested_specs_survive_json_including_infinite_bandwidth(tmp_path) -> None:
    store = FaultyStore(ThrottledStore(FileStore(tmp_path), math.inf, 5e7, 0.02), 0.2, seed=3)
    text = json.dumps(store_to_spec(store), allow_nan=False)
    again = store_from_spec(json.loads(text))
    assert isinstance(again, FaultyStore) and again.failure_rate == 0.2 and again.seed == 3
    inner = again.store
    assert isinstance(inner, ThrottledStore)
    assert math.isinf(inner.uplink.rate_bps) and inner.downlink.rate_bps == 5e7
    assert inner.latency_s == 0.02


def test_an_s3_spec_holds_no_credentials_and_rebuilds(moto_server) -> None:
    store = moto_server.store("spec/")
    spec = store_to_spec(store)
    assert "secret" not in json.dumps(spec).lower() and "testing" not in json.dumps(spec)
    assert spec["endpoint_url"] == moto_server.endpoint_url and spec["prefix"] == "spec/"
    again = store_from_spec(spec, aws_access_key_id="testing", aws_secret_access_key="testing")
    assert isinstance(again, S3Store)
    store.put("k", b"v")
    assert again.get("k") == b"v"


def test_a_memory_store_cannot_be_described_to_another_process() -> None:
    with pytest.raises(ValueError, match="one process"):
        store_to_spec(MemoryStore())


def test_an_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known kinds: 'file', 's3'"):
        store_from_spec({"kind": "ftp"})
