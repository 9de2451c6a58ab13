"""The local platform's rank environment: only flags XLA reads, each once, and a fresh compile
cache per process (`runtime.compile_cache`)."""

from __future__ import annotations

from jaxpipe.runtime.platforms.local import SINGLE_THREAD_XLA, worker_env
from planners import platforms


def test_a_one_core_rank_turns_eigens_pool_off_with_xla_flags_only():
    local = platforms.get("local")
    small = min(m for m in local.memory_options_mb if local.cpus(m) < 1.5)
    flags = worker_env(local, small)["XLA_FLAGS"].split()
    assert flags == [SINGLE_THREAD_XLA] and all(f.startswith("--xla_") for f in flags)
    # flags the driver already runs with are kept, and ours are not written twice
    again = worker_env(local, small, f"--xla_dump_to=/tmp/d {SINGLE_THREAD_XLA}")["XLA_FLAGS"]
    assert again.split() == ["--xla_dump_to=/tmp/d", SINGLE_THREAD_XLA]
