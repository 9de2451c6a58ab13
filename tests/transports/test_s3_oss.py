"""S3Store on Alibaba OSS's S3 API: virtual-hosted addressing (OSS refuses path-style requests)
and a Content-MD5 on DeleteObjects (OSS refuses one without it; botocore sends a CRC32).
Nothing here reaches OSS: the addressing is read off the client; the digest is checked by
`add_content_md5`'s doctest, and a batch delete with the hook goes through a real S3 server on
127.0.0.1 (which, like SeaweedFS, does not check a Content-MD5 it is sent)."""

from __future__ import annotations

from transports import S3Store, store_from_spec, store_to_spec
from transports.s3_store import add_content_md5


def test_an_oss_endpoint_is_addressed_virtual_hosted_and_its_spec_says_so() -> None:
    store = S3Store("jobs", "https://s3.oss-cn-hangzhou.aliyuncs.com", region_name="cn-hangzhou",
                    aws_access_key_id="k", aws_secret_access_key="s")
    assert store.addressing_style == "virtual"
    spec = store_to_spec(store)
    assert spec["addressing_style"] == "virtual"
    again = store_from_spec(spec, aws_access_key_id="k", aws_secret_access_key="s")
    assert isinstance(again, S3Store) and again.addressing_style == "virtual"
    local = S3Store("jobs", "http://127.0.0.1:9000", aws_access_key_id="k",
                    aws_secret_access_key="s")
    assert local.addressing_style == "path"


def test_a_batch_delete_with_the_content_md5_hook_goes_through(moto_server) -> None:
    store = moto_server.store("oss-md5/")
    store.client.meta.events.register(  # pyright: ignore[reportAttributeAccessIssue]
        "before-sign.s3.DeleteObjects", add_content_md5)
    for key in ("a", "b", "c"):
        store.put(key, b"x")
    store.delete_many(["a", "b", "c"])
    assert store.list("") == []
