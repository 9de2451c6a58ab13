"""Fixtures shared by the jaxpipe tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    """A real S3 API server (moto's ThreadedMotoServer) on a free 127.0.0.1 port; its URL."""
    from moto.server import ThreadedMotoServer

    mp = pytest.MonkeyPatch()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        mp.setenv(name, "testing")
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()
    mp.undo()


def _worker_descendants() -> list[int]:
    """Live descendants of this process that run a JaxPipe worker or a `jaxpipe` driver."""
    children: dict[int, list[int]] = {}
    commands: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                commands[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z":  # a zombie has ended; only its parent's wait is missing
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            argv = commands.get(child, "").split()
            if any(a in ("jaxpipe.runtime.worker", "jaxpipe.cli") for a in argv) or (
                    argv and os.path.basename(argv[0]) == "jaxpipe"):
                found.append(child)
    return found


@pytest.fixture(autouse=True)
def no_rank_outlives_its_test() -> Iterator[None]:
    """Fails a test that leaves a worker (or driver) process running a few seconds after it
    ended, and kills what it finds."""
    yield
    deadline = time.monotonic() + 10.0
    while (left := _worker_descendants()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running after the test: {left}"
