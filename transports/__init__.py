"""transports: object stores, a serverless link emulator, and all-reduce over storage.

Serverless functions cannot reach each other, so every activation, gradient and parameter of a
JaxPipe job travels through object storage. This package holds that layer and nothing else: it
imports only the standard library, numpy and boto3 (never jax, jaxpipe or planners).

* `ObjectStore` and its backends `MemoryStore`, `FileStore`, `S3Store`; `StoreStats` counts
  their requests; `KeyNotFound` and `GetTimeout` are the two ways a key can be missing.
* `ThrottledStore` emulates a function's link (bandwidth each way, request latency);
  `FaultyStore` injects throttling errors for tests.
* `Clock`: what the emulator and the all-reduce read the time from and wait on; real time by
  default, a `VirtualClock` in tests.
* `store_to_spec` / `store_from_spec` carry a store to another process as a small JSON dict.
* `codec.encode` / `codec.decode`: arrays <-> bytes, with a checksum and no pickle.
* `allreduce_mean`: FuncPipe's pipelined scatter-reduce (and LambdaML's baseline), with the
  per-rank request counts in `allreduce_requests`.
"""

from transports import codec
from transports.clock import Clock, VirtualClock
from transports.codec import CodecError, decode, encode
from transports.collectives import (
    ALGORITHMS,
    PeerTimeout,
    allreduce_mean,
    allreduce_requests,
    chunk_bounds,
)
from transports.faulty import FaultyStore
from transports.file_store import FileStore
from transports.memory_store import MemoryStore
from transports.pacing import pipeline_depth, pipeline_pieces
from transports.retry import Backoff, RetryPolicy
from transports.s3_store import S3Store
from transports.spec import store_from_spec, store_to_spec
from transports.store import (
    GetTimeout,
    KeyNotFound,
    ObjectStore,
    StoreError,
    StoreStats,
    TransientStoreError,
)
from transports.throttle import Link, ThrottledStore

__all__ = [
    "ALGORITHMS",
    "Backoff",
    "Clock",
    "CodecError",
    "FaultyStore",
    "FileStore",
    "GetTimeout",
    "KeyNotFound",
    "Link",
    "MemoryStore",
    "ObjectStore",
    "PeerTimeout",
    "RetryPolicy",
    "S3Store",
    "StoreError",
    "StoreStats",
    "ThrottledStore",
    "TransientStoreError",
    "VirtualClock",
    "allreduce_mean",
    "allreduce_requests",
    "chunk_bounds",
    "codec",
    "decode",
    "encode",
    "pipeline_depth",
    "pipeline_pieces",
    "store_from_spec",
    "store_to_spec",
]
