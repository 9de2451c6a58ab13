"""The compile cache: a fresh function loads its stage's compiled programs instead of compiling.

Every fresh invocation of a rank imports JAX and compiles its stage's programs (forward,
backward, the optimizer's update) before its first micro-batch: tens of seconds for a large
stage, paid again by every window of a long job. JAX's persistent compilation cache keeps the
compiled executables on disk; this module points it at a local directory and ships its entries
through the job's store, so every later invocation of the same stage, on any function, reads
them instead of compiling:

    local dir   jax's cache (`jax_compilation_cache_dir`, every program cached: minimum
                compile time 0). Lambda: /tmp/jaxpipe-xla-cache, which a warm container keeps
                between invocations; the local platform: a fresh temporary directory per rank
                process, removed when it ends (a cold container), so only the store carries
                entries from one window to the next
    store       jobs/<job>/xla-cache/<host>/stage<k>/<entry>: the raw bytes of jax's cache
                files (a compressed serialised XLA executable and its compile time; no pickle)
    fetch       before the stage loads: the entries of this host and stage the dir lacks
    publish     after the first iteration (everything is compiled by then) and at the end:
                the entries the store lacks

<host> is a digest of the CPU's instruction-set flags and the visible cores, since XLA:CPU
compiles for the machine it runs on: an executable is only ever loaded where it was built for.
JAX's own key covers the program, jaxlib, the backend and the XLA flags.

The cache is the process's (jax's configuration is global), so it is turned on only where a
platform asks for it, by `CACHE_DIR_VARIABLE` (the local platform sets it for its rank
processes) or by running inside Lambda; an in-process run (the tests') never changes the
configuration of the process it runs in.
"""

from __future__ import annotations

import hashlib
import os
import platform as _platform
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import jax
from jax import monitoring

from jaxpipe.runtime.job import JobSpec
from jaxpipe.runtime.metrics import CompileRecord
from transports import ObjectStore

__all__ = ["CACHE_DIR_VARIABLE", "FRESH", "LAMBDA_DIR", "CompileCache", "CompileMonitor",
           "for_rank", "host_fingerprint", "local_dir", "prune"]

CACHE_DIR_VARIABLE = "JAXPIPE_COMPILE_CACHE_DIR"
"""A directory for jax's cache, or `FRESH` for a new temporary one per process."""
FRESH = "fresh"
LAMBDA_DIR = "/tmp/jaxpipe-xla-cache"  # /tmp is the only writable place in a Lambda function
LOCAL_BUDGET_BYTES = 256 * 2**20
"""Most bytes the local dir keeps before an invocation fetches more (Lambda's /tmp is 512 MB by
default): past it the oldest entries go first."""
_SUFFIX = "-cache"  # jax's file cache writes <key>-cache (and <key>-atime with a size limit)
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # compile or cache load, seconds
_HIT, _MISS = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"


def local_dir(environ: Mapping[str, str]) -> tuple[Path | None, bool]:
    """(the directory for jax's cache or None for no cache, whether it is a fresh temporary one).

    Example:
      >>> local_dir({})
      (None, False)
      >>> local_dir({"AWS_LAMBDA_FUNCTION_NAME": "jaxpipe-worker-2048"})
      (PosixPath('/tmp/jaxpipe-xla-cache'), False)
    """
    given = environ.get(CACHE_DIR_VARIABLE)
    if given == FRESH:
        return Path(tempfile.mkdtemp(prefix="jaxpipe-xla-cache-")), True
    if given:
        return Path(given), False
    if environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        return Path(LAMBDA_DIR), False
    return None, False


def host_fingerprint() -> str:
    """12 hex digits naming what an XLA:CPU executable depends on in this machine: its CPU's
    instruction-set flags and the cores this process may use."""
    flags = _platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1] for line in f if line.startswith("flags")), flags)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"{_platform.machine()} {' '.join(sorted(flags.split()))} cores={cores}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class CompileMonitor:
    """Counts compilations while it is open: seconds in XLA's compile (or cache load), cache
    hits and misses (jax.monitoring listeners, removed by `close`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds, self.hits, self.misses = 0.0, 0, 0
        monitoring.register_event_duration_secs_listener(self._duration)
        monitoring.register_event_listener(self._event)

    def _duration(self, event: str, duration_secs: float, **_: str | int) -> None:
        if event == _COMPILE_EVENT:
            with self._lock:
                self.seconds += duration_secs

    def _event(self, event: str, **_: str | int) -> None:
        if event in (_HIT, _MISS):
            with self._lock:
                self.hits += event == _HIT
                self.misses += event == _MISS

    def close(self) -> None:
        monitoring.unregister_event_duration_listener(self._duration)
        monitoring.unregister_event_listener(self._event)


class CompileCache:
    """One invocation's compiling: jax's cache in `directory`, its entries under `prefix`.

    Args:
      store: the job's store.
      prefix: `Keys.compile_cache(host, stage)`.
      directory: the local dir (`local_dir`), or None for no cache (compilations are still
        counted); `temporary` removes it at `close`.
    """

    def __init__(self, store: ObjectStore, prefix: str, directory: Path | None,
                 temporary: bool = False) -> None:
        self.store, self.prefix = store, prefix
        self.directory = _activate(directory) if directory is not None else None
        self.temporary = temporary and self.directory == directory
        if temporary and not self.temporary and directory is not None:  # cached elsewhere
            shutil.rmtree(directory, ignore_errors=True)
        self.published: set[str] = set()
        self.fetched, self.fetched_bytes, self.fetch_s = 0, 0, 0.0
        self.monitor = CompileMonitor()

    def fetch(self) -> int:
        """Downloads the store's entries the local dir lacks; returns how many."""
        if self.directory is None:
            return 0
        began = time.perf_counter()
        prune(self.directory, LOCAL_BUDGET_BYTES)
        names = [key[len(self.prefix):] for key in self.store.list(self.prefix)]
        self.published.update(names)
        for name in names:
            path = self.directory / name
            if path.exists() or not name.endswith(_SUFFIX) or "/" in name:
                continue
            data = self.store.get(self.prefix + name)
            partial = path.with_name(path.name + ".part")  # jax never reads half a file
            partial.write_bytes(data)
            partial.replace(path)
            self.fetched += 1
            self.fetched_bytes += len(data)
        self.fetch_s += time.perf_counter() - began
        return self.fetched

    def publish(self) -> int:
        """Uploads the local entries the store lacks (as far as this rank knows); returns how
        many. Two replicas may both upload one entry: either copy is valid."""
        if self.directory is None:
            return 0
        sent = 0
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            if path.name in self.published:
                continue
            self.store.put(self.prefix + path.name, path.read_bytes())
            self.published.add(path.name)
            sent += 1
        return sent

    def record(self) -> CompileRecord:
        """What compiling cost in this invocation, for the rank's metrics."""
        m = self.monitor
        return CompileRecord(compile_s=round(m.seconds, 4), hits=m.hits, misses=m.misses,
                             fetched=self.fetched, fetched_bytes=self.fetched_bytes,
                             fetch_s=round(self.fetch_s, 4), cached=self.directory is not None)

    def close(self) -> None:
        """Stops counting; removes a temporary local dir (jax keeps pointing at it, and a
        missing entry is only a miss)."""
        self.monitor.close()
        if self.temporary and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def for_rank(store: ObjectStore, spec: JobSpec, stage: int,
             environ: Mapping[str, str]) -> CompileCache:
    """The compile cache of a rank of `stage`, its entries fetched: on where the job allows it
    (`JobSpec.compile_cache`) and the platform turned it on (`local_dir`), else counting only."""
    directory, temporary = local_dir(environ) if spec.compile_cache else (None, False)
    cache = CompileCache(store, spec.keys.compile_cache(host_fingerprint(), stage), directory,
                         temporary)
    cache.fetch()
    return cache


def _activate(directory: Path) -> Path:
    """Points jax's persistent cache at `directory` (every program, however fast it compiled);
    once set in a process (a warm Lambda container), the directory already in use is kept."""
    current = jax.config.values.get("jax_compilation_cache_dir")  # None until set
    if current:
        return Path(current)
    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    # Not XLA's GPU autotuning cache: it writes the cache's path into the compile options, and so
    # into every key, and a fresh directory per process would then never hit.
    jax.config.update("jax_persistent_cache_enable_xla_caches", "none")
    return directory


def prune(directory: Path, budget: int) -> None:
    """Deletes the least recently modified entries until the dir holds at most `budget` bytes."""
    entries = sorted(directory.glob(f"*{_SUFFIX}"), key=lambda p: p.stat().st_mtime)
    total = sum(p.stat().st_size for p in entries)
    for path in entries:
        if total <= budget:
            break
        total -= path.stat().st_size
        path.unlink(missing_ok=True)
