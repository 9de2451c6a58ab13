"""Store specs: a store described as a small JSON-able dict, rebuilt in another process.

A worker function receives only a small JSON event, so the driver cannot hand it a live store;
it hands it `store_to_spec(store)` and the worker calls `store_from_spec(spec)`. A spec holds no
credentials (S3 workers take them from boto3's chain: environment, role...) and no objects, so
it is safe to log. Specs nest: a ThrottledStore's spec holds the spec of the store it wraps.

    {"kind": "file", "root": "/tmp/job"}
    {"kind": "s3", "bucket": "b", "endpoint_url": "http://127.0.0.1:9000", "prefix": "jobs/1/"}
    {"kind": "throttled", "store": {...}, "uplink_bps": 7e7, "downlink_bps": 7e7,
     "latency_s": 0.02}
"""

from __future__ import annotations

import math
from typing import Any, cast

from transports.faulty import FaultyStore
from transports.file_store import FileStore
from transports.retry import Backoff, RetryPolicy
from transports.s3_store import S3Store
from transports.store import ObjectStore
from transports.throttle import ThrottledStore

__all__ = ["store_from_spec", "store_to_spec"]


def store_to_spec(store: ObjectStore) -> dict[str, Any]:
    """Returns a JSON-able dict from which `store_from_spec` rebuilds an equivalent store.

    Infinite bandwidths are written as None (JSON has no infinity).

    Raises:
      ValueError: the store cannot be rebuilt elsewhere (a MemoryStore lives in one process).

    Example:
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as root:
      ...     spec = store_to_spec(FileStore(root))
      ...     spec["kind"], spec["root"] == root, type(store_from_spec(spec)).__name__
      ('file', True, 'FileStore')
    """
    # The one reader of the backends' `_spec` outside the store classes.
    return _finite(store._spec())  # pyright: ignore[reportPrivateUsage]


def store_from_spec(spec: dict[str, Any], **s3_kwargs: Any) -> ObjectStore:
    """Builds the store `spec` describes (new handle, fresh request counters).

    Args:
      spec: a dict from `store_to_spec`.
      **s3_kwargs: extra keyword arguments for every S3Store in the spec, e.g. explicit
        credentials (`aws_access_key_id=...`) where boto3's chain has none.

    Raises:
      ValueError: unknown "kind"; the message lists the known ones.
    """
    kind = spec.get("kind")
    poll = Backoff(**spec["poll"]) if spec.get("poll") is not None else None
    retry = RetryPolicy(**spec["retry"]) if spec.get("retry") is not None else None
    if kind == "file":
        return FileStore(spec["root"], poll=poll, retry=retry)
    if kind == "s3":
        fields = {k: v for k, v in spec.items() if k not in ("kind", "poll", "retry")}
        return S3Store(**fields, poll=poll, retry=retry, **s3_kwargs)
    if kind == "throttled":
        return ThrottledStore(store_from_spec(spec["store"], **s3_kwargs),
                              _rate(spec["uplink_bps"]), _rate(spec["downlink_bps"]),
                              spec["latency_s"])
    if kind == "faulty":
        return FaultyStore(store_from_spec(spec["store"], **s3_kwargs), spec["failure_rate"],
                           spec["seed"], poll=poll, retry=retry)
    raise ValueError(f"unknown store kind {kind!r} in spec {spec}; known kinds: "
                     "'file', 's3', 'throttled', 'faulty'")


def _rate(value: float | None) -> float:
    return math.inf if value is None else float(value)


def _finite(spec: dict[str, Any]) -> dict[str, Any]:
    """Replaces infinite floats by None, recursively."""
    out: dict[str, Any] = {}
    for k, v in spec.items():
        if isinstance(v, dict):
            v = _finite(cast("dict[str, Any]", v))  # a nested store's spec
        elif isinstance(v, float) and math.isinf(v):
            v = None
        out[k] = v
    return out
