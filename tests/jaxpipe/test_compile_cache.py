"""The compile cache: a rank's second launch loads its stage's programs instead of compiling
them, through the store, on the local platform (fresh processes with fresh cache directories,
as cold functions have); the worker's metrics say so. Counts only, never times."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jaxpipe.runtime import compile_cache
from jaxpipe.runtime.driver import RunConfig
from jaxpipe.runtime.metrics import CompileRecord, RankMetrics
from jaxpipe.runtime.train import TrainOptions, open_store, train
from planners import Plan, StagePlan
from transports import FileStore

PLAN = Plan(stages=(StagePlan(0, 0, 1024), StagePlan(1, 3, 1024)), micro_batch=4,
            global_batch=8)


def run_two_windows(tmp_path, job: str, cache: bool) -> list[RankMetrics]:
    """Two windows of one iteration each (a hand-over between), every rank a fresh process."""
    (tmp_path / "plan.json").write_text(json.dumps(PLAN.to_dict()))
    options = TrainOptions(
        model="mlp", plan_file=str(tmp_path / "plan.json"), batch=8, iterations=2,
        store=str(tmp_path / "store"), job_id=job, checkpoint_every=1, compile_cache=cache,
        profile_cache=str(tmp_path / "profiles"), wait_timeout_s=600,  # a loaded machine
        run=RunConfig(log_dir=str(tmp_path / "logs"), invocation_seconds=0.001,
                      startup_seconds=0))
    summary = train(options, show_progress=False)
    assert summary.handovers == 1
    store = open_store(str(tmp_path / "store"))
    assert store.list(f"jobs/{job}/xla-cache/") == []  # cleaned up with the job's scratch
    return [RankMetrics.from_dict(json.loads(store.get(k)))
            for k in store.list(f"jobs/{job}/metrics/rank")]


def records(metrics: list[RankMetrics], invocation: int) -> list[CompileRecord]:
    found = [m.compile for m in metrics if m.invocation == invocation]
    assert len(found) == len(PLAN.stages) and all(r is not None for r in found)
    return [r for r in found if r is not None]


def test_the_second_window_loads_every_program_from_the_cache_the_first_compiled(tmp_path):
    metrics = run_two_windows(tmp_path, "cached", cache=True)
    for first in records(metrics, 0):
        assert first.cached and first.misses > 0 and first.hits == 0 and first.fetched == 0
    for second in records(metrics, 1):
        assert second.cached and second.fetched > 0 and second.fetched_bytes > 0
        assert second.hits > 0 and second.misses == 0  # nothing compiled


def test_without_the_cache_every_window_compiles_again(tmp_path):
    metrics = run_two_windows(tmp_path, "uncached", cache=False)
    for invocation in (0, 1):
        for record in records(metrics, invocation):
            assert not record.cached and record.misses == 0 and record.hits == 0
            assert record.fetched == 0 and record.compile_s > 0


def test_the_local_directory_is_chosen_by_the_platform_and_off_in_process(tmp_path):
    assert compile_cache.local_dir({}) == (None, False)
    assert compile_cache.local_dir({compile_cache.CACHE_DIR_VARIABLE: str(tmp_path)}) == (
        tmp_path, False)
    fresh, temporary = compile_cache.local_dir({compile_cache.CACHE_DIR_VARIABLE: "fresh"})
    assert temporary and fresh is not None and fresh.is_dir() and not any(fresh.iterdir())
    fresh.rmdir()
    lam = compile_cache.local_dir({"AWS_LAMBDA_FUNCTION_NAME": "jaxpipe-worker-2048"})
    assert lam == (Path(compile_cache.LAMBDA_DIR), False)


def test_entries_are_kept_per_host_and_stage_under_the_job(tmp_path):
    host = compile_cache.host_fingerprint()
    assert len(host) == 12 and host == compile_cache.host_fingerprint()
    store = FileStore(tmp_path)
    cache = compile_cache.CompileCache(store, f"jobs/j/xla-cache/{host}/stage1/", None)
    try:
        assert cache.fetch() == 0 and cache.publish() == 0  # no directory: counting only
        assert not cache.record().cached
    finally:
        cache.close()


@pytest.mark.parametrize("budget, kept", [(10, ["c"]), (100, ["a", "b", "c"]), (0, [])])
def test_the_local_directory_is_pruned_oldest_first(tmp_path, budget, kept):
    import os

    for i, name in enumerate("abc"):
        path = tmp_path / f"{name}-cache"
        path.write_bytes(b"x" * 10)
        os.utime(path, (i, i))
    compile_cache.prune(tmp_path, budget)
    assert sorted(p.name[0] for p in tmp_path.glob("*-cache")) == kept
