"""`S3Store`: a store on any S3 API server (AWS S3, MinIO, moto, s3rver) through boto3.

What it adds to plain `put_object`/`get_object`:

* every key is written under the store's `prefix` (e.g. `jobs/<id>/`), so jobs sharing a
  bucket never see each other, and `list`/`delete_prefix` stay inside the job;
* retries live in `ObjectStore`: botocore's own retries are switched off (one attempt per
  call) so that every request sent is counted once, and throttling (SlowDown, 503, 429...),
  other 5xx and connection errors become `TransientStoreError`;
* `put_if_absent` is one `PutObject` with `If-None-Match: *` (S3 conditional writes, 2024):
  S3 answers 412 PreconditionFailed if the key exists, and 409 ConditionalRequestConflict
  while a concurrent conditional write to the key is in flight (retried: AWS advises it).
  A server that ignores the header (s3rver 3.7.1 does) silently overwrites instead; moto 5.2.5
  honours it. Conditional objects are never uploaded in parts;
* objects above `multipart_threshold` bytes are uploaded in parts of `multipart_chunksize`
  bytes, `multipart_concurrency` at a time; such a put costs `parts + 2` PUT-class requests
  (create, parts, complete), all counted as PUTs.

Credentials come from boto3's usual chain (environment, config files, instance role) unless
given explicitly; they are never part of the store's spec.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import hashlib
import urllib.parse
from collections.abc import Callable
from typing import Any, Protocol

# boto3 and botocore ship no types: every call on them goes through `_S3Client` below, and a
# botocore error's fields through `_error_fields`.
import boto3  # pyright: ignore[reportMissingTypeStubs]
import botocore.config  # pyright: ignore[reportMissingTypeStubs]
import botocore.exceptions  # pyright: ignore[reportMissingTypeStubs]

from transports.retry import Backoff, RetryPolicy
from transports.store import KeyNotFound, ObjectStore, StoreError, TransientStoreError

__all__ = ["S3Store", "add_content_md5", "addressing_style_for"]

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                    "TooManyRequests", "RequestTimeout", "RequestTimeTooSkewed",
                    "InternalError", "ServiceUnavailable", "503", "500", "429"}
_PRECONDITION = {"PreconditionFailed", "412"}
_TRANSIENT_EXCEPTIONS = (botocore.exceptions.ConnectionError,
                         botocore.exceptions.HTTPClientError,
                         botocore.exceptions.IncompleteReadError,
                         botocore.exceptions.ResponseStreamingError)


class _ClientMeta(Protocol):
    @property
    def region_name(self) -> str | None: ...


class _S3Client(Protocol):
    """The calls S3Store makes on a boto3 S3 client (which boto3 builds at run time, untyped).

    Each takes the S3 API's keyword arguments and returns its response as a dict.
    """

    @property
    def meta(self) -> _ClientMeta: ...

    def head_bucket(self, **kwargs: Any) -> dict[str, Any]: ...
    def create_bucket(self, **kwargs: Any) -> dict[str, Any]: ...
    def put_object(self, **kwargs: Any) -> dict[str, Any]: ...
    def get_object(self, **kwargs: Any) -> dict[str, Any]: ...
    def head_object(self, **kwargs: Any) -> dict[str, Any]: ...
    def delete_object(self, **kwargs: Any) -> dict[str, Any]: ...
    def delete_objects(self, **kwargs: Any) -> dict[str, Any]: ...
    def list_objects_v2(self, **kwargs: Any) -> dict[str, Any]: ...
    def create_multipart_upload(self, **kwargs: Any) -> dict[str, Any]: ...
    def upload_part(self, **kwargs: Any) -> dict[str, Any]: ...
    def complete_multipart_upload(self, **kwargs: Any) -> dict[str, Any]: ...
    def abort_multipart_upload(self, **kwargs: Any) -> dict[str, Any]: ...


def _error_fields(err: botocore.exceptions.ClientError) -> tuple[str, int]:
    """Returns the S3 error code ('' if none) and HTTP status (0 if none) of `err`."""
    response: dict[str, Any] = err.response  # pyright: ignore[reportUnknownMemberType]
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _translate(err: Exception, key: str) -> Exception:
    """Maps a botocore error onto KeyNotFound, TransientStoreError, or itself."""
    if isinstance(err, botocore.exceptions.ClientError):
        code, status = _error_fields(err)
        if code == "NoSuchBucket":
            return StoreError("the bucket does not exist; create it (`jaxpipe deploy aws` makes "
                              "the job bucket) or check --store")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") or \
                status == 403:
            return StoreError(f"access denied ({code or status}): check the credentials and that "
                              "their policy may read and write this bucket")
        if code in _NOT_FOUND or status == 404:
            return KeyNotFound(key)
        if (code in _TRANSIENT_CODES or status >= 500 or status == 429
                or code == "ConditionalRequestConflict"):
            return TransientStoreError(f"S3 request on {key!r} failed transiently: {err}")
    if isinstance(err, _TRANSIENT_EXCEPTIONS):
        return TransientStoreError(f"S3 request on {key!r} failed transiently: {err} (if it "
                                   "lasts, check that the endpoint answers: --endpoint-url)")
    if isinstance(err, botocore.exceptions.NoCredentialsError
                  | botocore.exceptions.PartialCredentialsError):
        return StoreError(f"no usable AWS credentials ({err}): set AWS_PROFILE, or "
                          "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    return err


def _is_oss(endpoint_url: str | None) -> bool:
    host = urllib.parse.urlsplit(endpoint_url).hostname or "" if endpoint_url else ""
    return host.endswith(".aliyuncs.com")


def add_content_md5(request: Any, **_: Any) -> None:
    """botocore hook: a Content-MD5 header of the request's body (Alibaba OSS's S3 API refuses
    a DeleteObjects without one, and botocore now sends a CRC32 checksum instead).

    Example:
      >>> from botocore.awsrequest import AWSRequest
      >>> request = AWSRequest("POST", "https://b.example/?delete", data=b"<Delete/>")
      >>> add_content_md5(request); request.headers["Content-MD5"]
      'ePbrFwvNFIRnzBrIv+T8Ag=='
    """
    body = request.body or b""
    body = body.encode() if isinstance(body, str) else bytes(body)
    request.headers["Content-MD5"] = base64.b64encode(hashlib.md5(body).digest()).decode()


def addressing_style_for(endpoint_url: str | None) -> str | None:
    """The addressing style an endpoint takes: None (boto3's choice) for AWS itself, "virtual"
    for Alibaba OSS (`*.aliyuncs.com`, whose S3 API refuses path-style requests), "path" for
    any other server (MinIO, Ceph, SeaweedFS, s3rver and moto on 127.0.0.1 have no per-bucket
    host names).

    Example:
      >>> addressing_style_for("https://s3.oss-cn-hangzhou.aliyuncs.com"), addressing_style_for(
      ...     "http://127.0.0.1:9000"), addressing_style_for(None)
      ('virtual', 'path', None)
    """
    if endpoint_url is None:
        return None
    return "virtual" if _is_oss(endpoint_url) else "path"


class S3Store(ObjectStore):
    """A store in an S3 bucket, under a key prefix.

    Args:
      bucket: the bucket's name.
      endpoint_url: the S3 API server, e.g. "http://127.0.0.1:9000"; None means AWS.
      prefix: prepended to every key; '' or ending with '/'.
      region_name: the bucket's region (None: boto3's default chain, else us-east-1).
      create_bucket: create the bucket if it does not exist.
      multipart_threshold: objects larger than this, in bytes, use multipart upload.
      multipart_chunksize: part size of a multipart upload, in bytes; >= 5 MiB on AWS.
      multipart_concurrency: parts uploaded at once.
      max_pool_connections: HTTP connections the client keeps; >= the threads sharing it.
      aws_access_key_id, aws_secret_access_key: explicit credentials (else boto3's chain).
      addressing_style: "path" (the bucket in the URL's path) or "virtual" (in its host name);
        None chooses by endpoint (`addressing_style_for`).
      poll, retry: see `ObjectStore`.
    """

    def __init__(self, bucket: str, endpoint_url: str | None = None, prefix: str = "", *,
                 region_name: str | None = None, create_bucket: bool = False,
                 multipart_threshold: int = 64 << 20, multipart_chunksize: int = 16 << 20,
                 multipart_concurrency: int = 4, max_pool_connections: int = 64,
                 aws_access_key_id: str | None = None, aws_secret_access_key: str | None = None,
                 addressing_style: str | None = None, poll: Backoff | None = None,
                 retry: RetryPolicy | None = None) -> None:
        super().__init__(poll=poll, retry=retry)
        if prefix and not prefix.endswith("/"):
            raise ValueError(f"S3Store prefix {prefix!r} must be '' or end with '/'")
        if multipart_chunksize < 1 or multipart_threshold < multipart_chunksize:
            raise ValueError("need 1 <= multipart_chunksize <= multipart_threshold, got "
                             f"{multipart_chunksize} and {multipart_threshold}")
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.prefix = prefix
        self.region_name = region_name
        self.multipart_threshold = multipart_threshold
        self.multipart_chunksize = multipart_chunksize
        self.multipart_concurrency = multipart_concurrency
        self.max_pool_connections = max_pool_connections
        self.addressing_style = addressing_style or addressing_style_for(endpoint_url)
        config = botocore.config.Config(
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=max_pool_connections,
            s3={"addressing_style": self.addressing_style} if self.addressing_style else None,
            # Checksums: the codec checks payloads itself; skip botocore's extra CRC pass.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required")
        session: Any = boto3.Session(aws_access_key_id=aws_access_key_id,
                                     aws_secret_access_key=aws_secret_access_key,
                                     region_name=region_name)
        if session.region_name is None:
            session = boto3.Session(aws_access_key_id=aws_access_key_id,
                                    aws_secret_access_key=aws_secret_access_key,
                                    region_name="us-east-1")
        client = session.client("s3", endpoint_url=endpoint_url, config=config)
        if _is_oss(endpoint_url):  # OSS wants Content-MD5 on DeleteObjects; botocore sends CRC32
            client.meta.events.register("before-sign.s3.DeleteObjects", add_content_md5)
        self.client: _S3Client = client
        if create_bucket:
            self.create_bucket()

    def create_bucket(self) -> None:
        """Creates the bucket if it does not exist yet (not counted: it is set-up, not traffic)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except botocore.exceptions.ClientError:
            pass
        region = self.client.meta.region_name
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**kwargs)
        except botocore.exceptions.ClientError as err:
            if _error_fields(err)[0] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def _s3(self, key: str, call: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        """Returns `call(Bucket=..., **kwargs)`'s response; errors translated for `key`."""
        try:
            return call(Bucket=self.bucket, **kwargs)
        except Exception as err:  # re-raised, translated, naming the store
            translated = _translate(err, key)
            if isinstance(translated, StoreError):
                where = f"s3://{self.bucket} at {self.endpoint_url or 'AWS'}, key {key!r}"
                raise type(translated)(f"{where}: {translated}") from err
            raise translated from err

    def _put(self, key: str, data: bytes | memoryview) -> None:
        full = self.prefix + key
        if len(data) <= self.multipart_threshold:
            self._s3(key, self.client.put_object, Key=full, Body=bytes(data) if isinstance(
                data, memoryview) else data)
            return
        self._put_multipart(key, full, memoryview(data))

    def _put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, IfNoneMatch="*",
                                   Body=bytes(data))
        except botocore.exceptions.ClientError as err:
            code, status = _error_fields(err)
            if code in _PRECONDITION or status == 412:
                return False
            raise _translate(err, key) from err
        except Exception as err:  # re-raised, translated
            raise _translate(err, key) from err
        return True

    def _put_multipart(self, key: str, full: str, data: memoryview) -> None:
        upload = self._s3(key, self.client.create_multipart_upload, Key=full)
        upload_id = upload["UploadId"]
        step = self.multipart_chunksize
        spans = [(n + 1, off, min(off + step, len(data)))
                 for n, off in enumerate(range(0, len(data), step))]

        def send(part: tuple[int, int, int]) -> dict[str, Any]:
            number, lo, hi = part
            resp = self._call(lambda: self._s3(key, self.client.upload_part, Key=full,
                                               UploadId=upload_id, PartNumber=number,
                                               Body=bytes(data[lo:hi])))
            return {"PartNumber": number, "ETag": resp["ETag"]}

        try:
            with concurrent.futures.ThreadPoolExecutor(self.multipart_concurrency) as pool:
                parts = list(pool.map(send, spans))
            self._call(lambda: self._s3(key, self.client.complete_multipart_upload, Key=full,
                                        UploadId=upload_id,
                                        MultipartUpload={"Parts": parts}))
        except Exception as err:
            with contextlib.suppress(Exception):  # the original error is what matters
                self._s3(key, self.client.abort_multipart_upload, Key=full, UploadId=upload_id)
            # Parts were already retried: do not let the outer put retry the whole object.
            raise StoreError(f"multipart upload of {key!r} failed: {err}") from err
        self._count(puts=len(spans) + 1)  # + create + complete, - the put the caller counts

    def _get(self, key: str) -> bytes:
        resp = self._s3(key, self.client.get_object, Key=self.prefix + key)
        try:
            return resp["Body"].read()
        except Exception as err:  # re-raised, translated
            raise _translate(err, key) from err

    def _exists(self, key: str) -> bool:
        try:
            self._s3(key, self.client.head_object, Key=self.prefix + key)
        except KeyNotFound:
            return False
        return True

    def _delete(self, key: str) -> None:
        self._s3(key, self.client.delete_object, Key=self.prefix + key)

    def _delete_many(self, keys: list[str]) -> None:
        resp = self._s3(keys[0], self.client.delete_objects, Delete={
            "Objects": [{"Key": self.prefix + k} for k in keys], "Quiet": True})
        errors = [e for e in resp.get("Errors", []) if e.get("Code") != "NoSuchKey"]
        if errors:
            raise StoreError(f"deleting {len(keys)} keys failed for {len(errors)}, e.g. "
                             f"{errors[0]}")

    def _list(self, prefix: str) -> tuple[list[str], int]:
        keys: list[str] = []
        pages = 0
        token: dict[str, str] = {}
        while True:
            resp = self._s3(prefix, self.client.list_objects_v2, Prefix=self.prefix + prefix,
                            **token)
            pages += 1
            keys.extend(obj["Key"][len(self.prefix):] for obj in resp.get("Contents", []))
            if not resp.get("IsTruncated"):
                break
            token = {"ContinuationToken": resp["NextContinuationToken"]}
        keys.sort()
        return keys, pages

    def _spec(self) -> dict[str, Any]:
        return {"kind": "s3", "bucket": self.bucket, "endpoint_url": self.endpoint_url,
                "prefix": self.prefix, "region_name": self.client.meta.region_name,
                "multipart_threshold": self.multipart_threshold,
                "multipart_chunksize": self.multipart_chunksize,
                "multipart_concurrency": self.multipart_concurrency,
                "max_pool_connections": self.max_pool_connections,
                "addressing_style": self.addressing_style,
                "poll": self.poll.to_dict(), "retry": self.retry.to_dict()}
