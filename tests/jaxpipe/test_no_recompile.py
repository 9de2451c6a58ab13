"""A rank's second iteration compiles nothing.

Regression guard for the recompile bug the worker's comments describe (`grep -n -i compile
jaxpipe/runtime/rank.py`): jit specialises on whether an array is committed to a device, and
the optimizer's and the stage programs' outputs are committed. Parameters, optimizer state and
state loaded from a checkpoint, or BatchNorm state coming back from the replicas' all-reduce,
left uncommitted, made every rank compile its stage programs (and the loaded ones, its
optimizer step) a second time in its second iteration, a cost every invocation paid again.

The job runs in this process, every rank a `handler` call on its own thread: two stages, the
first replicated twice and holding BatchNorm state (so its state goes through the all-reduce),
dropout keys, one stash and one recompute stage. Every XLA compilation in the process is
counted (the `jax.monitoring` event JAX records around each backend compile), and the ranks
cross a barrier at the start and at the end of each iteration, so the count between the two
barriers of iteration 1 is exactly what the second iteration compiled, on any rank and lane.
The barriers wrap `Rank.iteration`, the test's one hook into the worker's internals.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import pytest

import jaxpipe
from jaxpipe.runtime import checkpoint, dataset, optim, worker
from jaxpipe.runtime.job import JobSpec
from jaxpipe.runtime.optimizer import compile_optimizer
from planners import Plan, StagePlan
from tests.jaxpipe.helpers import cross_entropy, skipnet_case
from tests.jaxpipe.test_job import job_spec
from transports import FileStore, store_to_spec

try:  # the rank moved out of the worker module in the runtime's refactor
    from jaxpipe.runtime.rank import Rank
except ImportError:
    Rank = worker.Rank

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
ITERATIONS = 2
# SkipNet's layers: block0, block1 (both with BatchNorm), drop, block2, head.
PLAN = Plan(stages=(StagePlan(0, 1, 1024, 2, "stash"), StagePlan(2, 4, 1024, 1, "recompute")),
            micro_batch=2, global_batch=8)
RANKS = sum(s.replicas for s in PLAN.stages)


def prepare_job(store: FileStore, job_id: str) -> JobSpec:
    """Uploads what `jaxpipe.runtime.train.prepare` would: bundle, shards, checkpoint 0, spec."""
    model, variables, _, rngs = skipnet_case(norm=True, dropout=0.5, batch=PLAN.global_batch)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 6)).astype(np.float32)
    y = (np.arange(24) % 4).astype(np.int32)
    traced = jaxpipe.trace(model, variables, (x[:PLAN.global_batch], y[:PLAN.global_batch]),
                           cross_entropy, rngs=rngs)
    staged = traced.split(PLAN.cuts, [s.mode for s in PLAN.stages])
    stages = staged.stages(PLAN.micro_batch)
    assert stages[0].spec.state_paths, "the replicated stage must hold state to sync"
    spec = job_spec(job_id, plan=PLAN, iterations=ITERATIONS, optimizer="adam",
                    num_samples=len(x), shard_size=10, rng_names=tuple(traced.rng_names),
                    checkpoint_every=ITERATIONS, wait_timeout_s=60.0)
    keys = spec.keys
    store.put(keys.bundle, staged.export(PLAN.micro_batch))
    dataset.write_shards(store, keys, [x, y], spec.shard_size)
    params = dict(zip(traced.params.paths, traced.params.leaves))
    programs = compile_optimizer(optim.make(spec.optimizer, spec.learning_rate),
                                 [{p: params[p] for p in s.spec.param_paths} for s in stages])
    store.put(keys.optimizer, programs.export())
    checkpoint.save_initial(
        store, keys, [(list(s.spec.param_paths), list(s.spec.state_paths)) for s in stages],
        params, dict(zip(traced.state.paths, traced.state.leaves)), programs)
    store.put(keys.spec, spec.to_json())
    return spec


def rank_event(store: FileStore, spec: JobSpec, rank: int) -> dict[str, Any]:
    """The event the driver sends rank `rank` for the whole job, without the link emulation."""
    return {"job": spec.job_id, "rank": rank, "store": store_to_spec(store), "start": 0,
            "stop": spec.iterations, "attempt": 0, "invocation": 0, "link": False}


class CompileLog:
    """Every backend compilation in the process while active, with the function's name."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, event: str, duration: float, **kwargs: Any) -> None:
        if event == BACKEND_COMPILE:
            with self.lock:
                self.names.append(str(kwargs.get("fun_name", "?")))

    def __len__(self) -> int:
        with self.lock:
            return len(self.names)


@pytest.fixture
def compile_log() -> Iterator[CompileLog]:
    log = CompileLog()
    jax.monitoring.register_event_duration_secs_listener(log)
    try:
        yield log
    finally:
        jax.monitoring.unregister_event_duration_listener(log)


def run_ranks(spec: JobSpec, store: FileStore, log: CompileLog,
              monkeypatch: pytest.MonkeyPatch) -> dict[int, list[str]]:
    """Runs every rank's handler on a thread; returns what each iteration compiled."""
    marks: list[int] = []  # len(log) each time all ranks cross a barrier
    barrier = threading.Barrier(RANKS, action=lambda: marks.append(len(log)), timeout=120)
    original = Rank.iteration

    def iteration(self: Any, t: int) -> None:
        barrier.wait()  # every rank starts iteration t together ...
        original(self, t)
        barrier.wait()  # ... and has finished it before any starts the next

    monkeypatch.setattr(Rank, "iteration", iteration)
    results: dict[int, Any] = {}

    def run(rank: int) -> None:
        try:
            results[rank] = worker.handler(rank_event(store, spec, rank))
        except BaseException as exc:  # reported below, with the rank
            results[rank] = exc
            barrier.abort()

    threads = [threading.Thread(target=run, args=(r,), daemon=True) for r in range(RANKS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    failed = {r: e for r, e in results.items() if isinstance(e, BaseException)}
    # the rank that failed first, not those the aborted barrier then broke
    for rank, exc in sorted(failed.items(), key=lambda f: isinstance(
            f[1], threading.BrokenBarrierError)):
        raise AssertionError(f"rank {rank} failed") from exc
    for rank in range(RANKS):
        assert results.get(rank, {}).get("status") == "done", (rank, results.get(rank))
    assert len(marks) == 2 * ITERATIONS
    return {t: log.names[marks[2 * t]:marks[2 * t + 1]] for t in range(ITERATIONS)}


def test_the_second_iteration_of_every_rank_compiles_nothing(tmp_path, compile_log,
                                                            monkeypatch):
    store = FileStore(str(tmp_path / "store"))
    spec = prepare_job(store, "no-recompile")
    compiled = run_ranks(spec, store, compile_log, monkeypatch)
    # the listener does see compilations: the first iteration compiles the stage programs
    # each rank loaded from the bundle, and its optimizer step
    assert compiled[0], "no compilation seen at all: is the monitoring event still named so?"
    assert compiled[1] == [], f"iteration 1 compiled again: {compiled[1]}"
    # and the job did train: every stage wrote its final checkpoint
    assert checkpoint.latest_complete(store, spec.keys, len(PLAN.stages)) == ITERATIONS
