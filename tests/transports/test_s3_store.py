"""What S3Store adds on top of the conformance suite: prefixes, multipart, error translation
(on each real server: moto, s3rver and SeaweedFS)."""

from __future__ import annotations

import botocore.exceptions
import pytest

from transports import KeyNotFound, RetryPolicy, S3Store, StoreError, TransientStoreError
from transports.s3_store import _translate

SERVERS = ["moto_server", "s3rver_server", "seaweedfs_server"]


@pytest.mark.parametrize("server_name", SERVERS)
def test_prefixes_keep_two_jobs_in_one_bucket_apart(request: pytest.FixtureRequest,
                                                    server_name: str) -> None:
    server = request.getfixturevalue(server_name)
    job1, job2 = server.store("iso/jobs/1/"), server.store("iso/jobs/10/")
    job1.put("it/0/g", b"one")
    job2.put("it/0/g", b"ten")
    assert job1.get("it/0/g") == b"one" and job2.get("it/0/g") == b"ten"
    assert job1.list("") == ["it/0/g"]
    assert job1.delete_prefix("") == 1
    assert job2.list("") == ["it/0/g"]


@pytest.mark.parametrize("server_name", SERVERS)
def test_large_objects_go_up_in_parts_and_count_every_part(request: pytest.FixtureRequest,
                                                           server_name: str) -> None:
    server = request.getfixturevalue(server_name)
    store = server.store("mp/", multipart_threshold=6 << 20, multipart_chunksize=5 << 20)
    data = bytes(range(256)) * (12 << 20 >> 8)  # 12 MiB -> parts of 5, 5, 2 MiB
    store.put("big", data)
    assert store.get("big") == data
    assert store.stats.puts == 3 + 2  # create + 3 parts + complete
    assert store.stats.bytes_up == len(data)


def test_an_unreachable_server_is_retried_then_reported_as_transient() -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    store = S3Store("nobucket", f"http://127.0.0.1:{port}", aws_access_key_id="x",
                    aws_secret_access_key="x",
                    retry=RetryPolicy(max_attempts=3, initial_s=0.001, max_s=0.01))
    with pytest.raises(TransientStoreError, match="'k' failed transiently"):
        store.put("k", b"v")
    assert store.stats.retries == 2 and store.stats.puts == 0


def _client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject")


@pytest.mark.parametrize(("code", "status", "expected"), [
    ("NoSuchKey", 404, KeyNotFound), ("404", 404, KeyNotFound),
    ("SlowDown", 503, TransientStoreError), ("InternalError", 500, TransientStoreError),
    ("TooManyRequests", 429, TransientStoreError), ("AccessDenied", 403, StoreError),
    ("NoSuchBucket", 404, StoreError), ("MalformedXML", 400, None),
])
def test_botocore_errors_are_translated_by_kind(code: str, status: int, expected: type) -> None:
    err = _client_error(code, status)
    out = _translate(err, "jobs/k")
    if expected is None:
        assert out is err
    elif expected is StoreError:  # what the store cannot do, and the fix (S3Store adds where)
        assert type(out) is StoreError and ("bucket" in str(out) or "credentials" in str(out))
    else:
        assert isinstance(out, expected) and "jobs/k" in str(out)


def test_a_prefix_must_end_with_a_slash() -> None:
    with pytest.raises(ValueError, match="end with '/'"):
        S3Store("b", "http://127.0.0.1:1", "jobs/1")
