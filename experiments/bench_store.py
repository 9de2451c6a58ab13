"""Does S3Store cost anything over raw boto3, and how fast is the codec?

1. S3Store.put/get against raw boto3 `put_object`/`get_object` (a default client) on the same
   local S3 API server, for 1-64 MB objects: median seconds of `repeats` round trips (the two
   alternated, after a warm-up call each), and the
   ratio raw / S3Store (>= 0.9 is the target: the store adds at most ~10%). Servers: moto's
   standalone server in a subprocess, and s3rver when node_modules/.bin/s3rver exists.
2. codec.encode and codec.decode (CRC-32 included) on one large float32 array and on a dict of
   100 arrays: GB/s, best of 5 (target >= 1 GB/s).

Usage:
    python experiments/bench_store.py           # 1, 4, 16, 64 MB, 9 repeats, 256 MB codec
    python experiments/bench_store.py --quick   # 1, 4 MB, 2 repeats, 16 MB codec
Writes experiments/results/bench_store[_quick].json and .png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import botocore.config
import numpy as np

from transports import S3Store, codec

MB = 1_000_000
RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]
BUCKET = "bench-store"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(what: str, ready: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def moto_server() -> Iterator[tuple[str, str]]:
    """Runs moto's standalone S3 server in a subprocess; yields (endpoint, access key)."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        _wait_for(f"moto server on port {port}", up)
        yield f"http://127.0.0.1:{port}", "testing"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def s3rver_server() -> Iterator[tuple[str, str]]:
    """Runs s3rver (see tests/transports/conftest.py for the legacy-provider flag)."""
    data = tempfile.mkdtemp(prefix="s3rver-bench-")
    env = {**os.environ, "NODE_OPTIONS": "--openssl-legacy-provider"}
    proc = subprocess.Popen([str(REPO / "node_modules/.bin/s3rver"), "-d", data, "-a",
                             "127.0.0.1", "-p", "0", "--silent"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = ""
        deadline = time.monotonic() + 30
        while "listening on" not in line:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise TimeoutError("timed out waiting for s3rver to print its port")
            line = proc.stdout.readline()
        port = re.search(r":(\d+)", line).group(1)
        yield f"http://127.0.0.1:{port}", "S3RVER"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(data, ignore_errors=True)


def _seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _median_times(first: Callable[[], object], second: Callable[[], object],
                  repeats: int) -> tuple[float, float]:
    """Median seconds of each of two calls, alternated after one warm-up call each, so that a
    server or machine slowing down for a while hits both sides alike."""
    times: tuple[list[float], list[float]] = ([], [])
    first(), second()
    for _ in range(repeats):
        times[0].append(_seconds(first))
        times[1].append(_seconds(second))
    return statistics.median(times[0]), statistics.median(times[1])


def bench_server(name: str, endpoint: str, key: str, sizes: list[int], repeats: int) -> list:
    raw = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key,
                       aws_secret_access_key=key, region_name="us-east-1",
                       config=botocore.config.Config(s3={"addressing_style": "path"}))
    store = S3Store(BUCKET, endpoint, "store/", aws_access_key_id=key,
                    aws_secret_access_key=key, create_bucket=True)
    rows = []
    for size in sizes:
        data = np.random.default_rng(size).bytes(size * MB)
        row = {"server": name, "size_mb": size}
        row["raw_put_s"], row["store_put_s"] = _median_times(
            lambda d=data: raw.put_object(Bucket=BUCKET, Key="raw/obj", Body=d),
            lambda d=data: store.put("obj", d), repeats)
        row["raw_get_s"], row["store_get_s"] = _median_times(
            lambda: raw.get_object(Bucket=BUCKET, Key="raw/obj")["Body"].read(),
            lambda: store.get("obj"), repeats)
        row["put_ratio"] = row["raw_put_s"] / row["store_put_s"]
        row["get_ratio"] = row["raw_get_s"] / row["store_get_s"]
        rows.append(row)
        print(f"{name:7s} {size:3d} MB  put raw {size / row['raw_put_s']:6.0f} MB/s store "
              f"{size / row['store_put_s']:6.0f} MB/s ({row['put_ratio']:.2f}x)   get raw "
              f"{size / row['raw_get_s']:6.0f} MB/s store {size / row['store_get_s']:6.0f} MB/s "
              f"({row['get_ratio']:.2f}x)", flush=True)
    return rows


def bench_codec(size_mb: int) -> list[dict]:
    big = np.random.default_rng(0).standard_normal(size_mb * MB // 4).astype(np.float32)
    many = {f"layer{i}": big[i * len(big) // 100:(i + 1) * len(big) // 100] for i in range(100)}
    rows = []
    for name, value in (("one array", big), ("dict of 100", many)):
        data = codec.encode(value)
        enc = min(_seconds(lambda v=value: codec.encode(v)) for _ in range(5))
        dec = min(_seconds(lambda d=data: codec.decode(d)) for _ in range(5))
        nbytes = size_mb * MB
        rows.append({"case": name, "size_mb": size_mb, "encode_gb_s": nbytes / enc / 1e9,
                     "decode_gb_s": nbytes / dec / 1e9,
                     "round_trip_gb_s": nbytes / (enc + dec) / 1e9})
        print(f"codec {name:12s} {size_mb} MB: encode {rows[-1]['encode_gb_s']:.2f} GB/s, "
              f"decode {rows[-1]['decode_gb_s']:.2f} GB/s, encode+decode "
              f"{rows[-1]['round_trip_gb_s']:.2f} GB/s", flush=True)
    return rows


def plot(rows: list[dict], codec_rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for server in sorted({r["server"] for r in rows}):
        sub = [r for r in rows if r["server"] == server]
        sizes = [r["size_mb"] for r in sub]
        axes[0].plot(sizes, [r["put_ratio"] for r in sub], "o-", label=f"{server} put")
        axes[0].plot(sizes, [r["get_ratio"] for r in sub], "x--", label=f"{server} get")
    axes[0].axhline(0.9, color="grey", ls=":", lw=0.8, label="target 0.9")
    axes[0].set(xscale="log", xlabel="object MB", ylabel="raw time / S3Store time",
                title="S3Store vs raw boto3")
    axes[0].legend(fontsize=7)
    names = [r["case"] for r in codec_rows]
    x = np.arange(len(names))
    axes[1].bar(x - 0.2, [r["encode_gb_s"] for r in codec_rows], 0.4, label="encode")
    axes[1].bar(x + 0.2, [r["decode_gb_s"] for r in codec_rows], 0.4, label="decode")
    axes[1].axhline(1.0, color="grey", ls=":", lw=0.8, label="target 1 GB/s")
    axes[1].set_xticks(x, names)
    axes[1].set(ylabel="GB/s", title="codec throughput")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = [1, 4] if args.quick else [1, 4, 16, 64]
    repeats = 2 if args.quick else 9
    rows: list[dict] = []
    with moto_server() as (endpoint, key):
        rows += bench_server("moto", endpoint, key, sizes, repeats)
    if (REPO / "node_modules/.bin/s3rver").exists():
        with s3rver_server() as (endpoint, key):
            rows += bench_server("s3rver", endpoint, key, sizes, repeats)
    codec_rows = bench_codec(16 if args.quick else 256)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "bench_store_quick" if args.quick else "bench_store"
    meta = {"python": platform.python_version(), "numpy": np.__version__,
            "boto3": boto3.__version__, "load_avg_1m": os.getloadavg()[0]}
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"meta": meta, "s3": rows, "codec": codec_rows}, indent=1))
    plot(rows, codec_rows, RESULTS / f"{name}.png")
    print(f"wrote {RESULTS / name}.json and .png")


if __name__ == "__main__":
    main()
