"""The driver's decisions on hand-made cases: window sizes, the cost guard, and what it does
when ranks finish, fail, refuse or go silent, with a fake launcher whose ranks only write what
the driver reads (losses, metrics, checkpoint markers); no process starts. And the outcomes
each platform reports, from exit codes and status records."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from jaxpipe.errors import BudgetExceeded, JobFailed
from jaxpipe.runtime.billing import CostGuard, functions_gigabytes, measured_dollars
from jaxpipe.runtime.driver import (
    RankDeath,
    Recovery,
    RunConfig,
    Window,
    recovery,
    run_job,
    window_for,
)
from jaxpipe.runtime.event import Fault, RankEvent, RankStatus, Status
from jaxpipe.runtime.handover import HandoverMarker, write_marker
from jaxpipe.runtime.job import JobSpec
from jaxpipe.runtime.metrics import CompileRecord, IterationRecord, LossRecord, RankMetrics
from jaxpipe.runtime.platforms import LocalInvocation, Outcome
from jaxpipe.runtime.platforms.aws import LambdaInvocation
from planners import Plan, StagePlan, platforms
from planners.schedule import build
from transports import FileStore, StoreStats

# Stage 0 on one 1024 MB function, stage 1 on two 2048 MB replicas: ranks 0, 1, 2.
PLAN = Plan(stages=(StagePlan(0, 0, 1024), StagePlan(1, 1, 2048, 2)), micro_batch=2,
            global_batch=4, iteration_seconds=1.0)
SCHEDULE = build(PLAN)
AWS = platforms.get("aws-lambda")
BILLED_S = 10.0
REQUESTS = StoreStats(puts=2, lists=1, gets=3, heads=1, misses=2)


def job(iterations: int, wait_timeout_s: float = 30.0) -> JobSpec:
    return JobSpec(job_id="fake", model="mlp", plan=PLAN, platform=AWS, iterations=iterations,
                   wait_timeout_s=wait_timeout_s)


# -- a launcher whose ranks do nothing but report ----------------------------------------------

@dataclass
class FakeRank:
    rank: int
    polled: Outcome | None  # what poll() says at once (None: still running)
    ended: Outcome  # what wait() returns
    killed: bool = False

    def poll(self) -> Outcome | None:
        return self.polled

    def wait(self, timeout: float) -> Outcome:
        return self.ended

    def kill(self) -> None:
        self.killed = True

    def tail(self, lines: int = 15) -> str:
        return f"rank {self.rank}: the last words"


class FakeLauncher:
    """Launches `FakeRank`s; `script(event)` decides each one's outcome. A finishing rank
    writes what a worker would: its losses (last stage), its metrics, its stage's checkpoint
    marker at the window's end (replica 0) and a message under the attempt's run prefix."""

    name = "fake"

    def __init__(self, store: FileStore, spec: JobSpec,
                 script: Callable[[RankEvent], Outcome] = lambda event: Outcome.FINISHED,
                 cold_start_s: float = 1.0, compile_s: float = 0.0):
        self.store, self.spec, self.script = store, spec, script
        self.cold_start_s, self.compile_s = cold_start_s, compile_s
        self.events: list[tuple[RankEvent, int]] = []
        self.ranks: list[FakeRank] = []

    def launch(self, event: RankEvent, memory_mb: int) -> FakeRank:
        self.events.append((event, memory_mb))
        outcome = self.script(event)
        if outcome is Outcome.FINISHED:
            self._finish(event, memory_mb)
        rank = FakeRank(event.rank, None if outcome is Outcome.SILENT else outcome, outcome)
        self.ranks.append(rank)
        return rank

    def _finish(self, event: RankEvent, memory_mb: int) -> None:
        keys, task = self.spec.keys, SCHEDULE.tasks[event.rank][0]
        self.store.put(keys.message(event.attempt, event.start, "act", task.stage, 0), b"x")
        if task.stage == len(PLAN.stages) - 1:
            for t in range(event.start, event.stop):
                self.store.put(keys.loss(t, event.rank, event.attempt), LossRecord.of(
                    {task.replica: loss(t, event.rank)}).to_json())
        metrics = RankMetrics(
            rank=event.rank, stage=task.stage, replica=task.replica, attempt=event.attempt,
            invocation=event.invocation, cold_start_s=self.cold_start_s, billed_s=BILLED_S,
            peak_rss_mb=100.0, memory_mb=memory_mb,
            iterations=tuple(IterationRecord(t, 0.1, 0.0) for t in range(event.start, event.stop)),
            requests=REQUESTS, timeline=(), compile=CompileRecord(compile_s=self.compile_s))
        self.store.put(event.metrics_key, json.dumps(metrics.to_dict()).encode())
        if task.replica == 0:
            self.store.put(keys.checkpoint(event.stop, task.stage, "done"), b"{}")

    def windows(self) -> list[tuple[int, int, int]]:
        """(start, stop, attempt) of every launch, once per window."""
        return [(e.start, e.stop, e.attempt) for e, _ in self.events if e.rank == 0]


def loss(t: int, rank: int) -> float:
    return 10.0 * t + rank


@pytest.fixture
def store(tmp_path) -> FileStore:
    store = FileStore(str(tmp_path / "store"))
    for stage in range(len(PLAN.stages)):  # checkpoint 0, as train.prepare leaves it
        store.put(job(1).keys.checkpoint(0, stage, "done"), b"{}")
    return store


def window_dollars(functions: int = 3) -> float:
    """What one window of the fake costs: every rank billed BILLED_S at its memory, one
    invocation each, and REQUESTS each (puts + lists as PUTs; gets, heads, misses as GETs)."""
    gb_s = BILLED_S * (1024 + 2 * 2048) / 1024
    return (gb_s * AWS.price_gb_second + functions * AWS.price_invocation
            + functions * (3 * AWS.price_put + 6 * AWS.price_get))


# -- windows and the budget ----------------------------------------------------------------------

@pytest.mark.parametrize("limit, per_iteration, startup, expected", [
    (900.0, 2.0, 20.0, 220),  # (900 - 20) / (2 x 2): a factor 2 of slack
    (900.0, 0.5, 0.0, 900),
    (10.0, 2.0, 20.0, 1),  # never less than one
    (4.0, 1.0, 0.0, 2),
])
def test_a_window_is_what_fits_in_half_the_invocations_time(limit, per_iteration, startup,
                                                            expected):
    assert window_for(limit, per_iteration, startup) == expected


def test_the_cost_guard_predicts_from_the_plans_seconds_without_its_dollars():
    # 1 GB + 2 x 2 GB = 5 GB for 1 s per iteration at the GB-s price
    guard = CostGuard(max_cost=1.0, platform=AWS, plan=PLAN)
    assert functions_gigabytes(PLAN) == 5.0
    assert guard.per_iteration() == pytest.approx(5.0 * AWS.price_gb_second)
    fits = int(1.0 / (5.0 * AWS.price_gb_second))
    assert guard.affordable(10**9, 0, "j") == fits


def test_a_failed_window_is_charged_its_wall_time_for_every_function():
    guard = CostGuard(max_cost=None, platform=AWS, plan=PLAN)
    guard.charge_failure(seconds=8.0, functions=3)
    assert guard.spent == pytest.approx(8.0 * 5.0 * AWS.price_gb_second
                                        + 3 * AWS.price_invocation)
    assert guard.measured_iterations == 0  # a failure measures nothing per iteration


def test_measured_dollars_bill_gb_seconds_invocations_and_requests():
    ranks = [RankMetrics(rank=r, stage=s, replica=0, attempt=0, invocation=0, cold_start_s=0.0,
                         billed_s=BILLED_S, peak_rss_mb=0.0, memory_mb=mb, iterations=(),
                         requests=REQUESTS, timeline=())
             for r, (s, mb) in enumerate([(0, 1024), (1, 2048), (1, 2048)])]
    assert measured_dollars(AWS, ranks) == pytest.approx(window_dollars())


def test_the_job_stops_before_a_window_over_budget_and_launches_nothing(store):
    launcher = FakeLauncher(store, job(4))
    with pytest.raises(BudgetExceeded, match="--resume fake --max-cost"):
        run_job(store, job(4), config=RunConfig(max_cost=1e-12), launcher=launcher)
    assert launcher.events == []


# -- recovery decisions --------------------------------------------------------------------------

@pytest.mark.parametrize("outcome, checkpoint_at, expected", [
    (Outcome.FAILED, 4, Recovery(restart_at=4, cap=100)),
    (Outcome.SILENT, 4, Recovery(restart_at=4, cap=100)),
    (Outcome.FAILED, None, Recovery(restart_at=0, cap=100)),  # no checkpoint: from the start
    (Outcome.REFUSED, 4, Recovery(restart_at=4, cap=3)),  # 7 iterations refused: at most 3
])
def test_recovery_restarts_at_the_checkpoint_and_halves_only_refused_windows(
        outcome, checkpoint_at, expected):
    died = Window(start=4, stop=11, attempt=0, invocation=2)
    assert recovery(RankDeath(1, outcome), died, 100, checkpoint_at) == expected


def test_a_refused_window_of_one_iteration_stays_one():
    one = Window(start=4, stop=5, attempt=0, invocation=2)
    assert recovery(RankDeath(0, Outcome.REFUSED), one, 100, 4).cap == 1


# -- run_job with the fake launcher --------------------------------------------------------------

def test_ranks_that_finish_hand_over_window_after_window(store):
    spec = job(6)
    launcher = FakeLauncher(store, spec)
    seen: list[int] = []
    progress = run_job(store, spec, config=RunConfig(invocation_seconds=4.0, startup_seconds=0),
                       on_iteration=lambda t, p: seen.append(t), launcher=launcher)
    windows = launcher.windows()
    assert windows[0] == (0, 2, 0)  # 4 s limit, 1 s per iteration predicted, slack 2
    assert [w[0] for w in windows] == [0] + [w[1] for w in windows[:-1]]  # contiguous
    assert windows[-1][1] == 6 and all(w[2] == 0 for w in windows)
    assert progress.invocations == len(windows) and progress.handovers == len(windows) - 1
    assert progress.restarts == 0 and seen == list(range(6))
    # every iteration's loss is the mean over the last stage's two replicas (ranks 1 and 2)
    assert progress.losses == {t: (loss(t, 1) + loss(t, 2)) / 2 for t in range(6)}
    assert progress.dollars == pytest.approx(len(windows) * window_dollars())
    # each rank was launched with its stage's memory and the driver's estimate
    first = [(e.rank, mb) for e, mb in launcher.events[:3]]
    assert first == [(0, 1024), (1, 2048), (2, 2048)]
    assert launcher.events[0][0].iteration_s == 1.0
    assert store.list(spec.keys.run(0)) == []  # scratch deleted at the end


def test_windows_are_sized_with_the_plans_start_up_then_with_the_measured_one(store):
    spec = job(13)
    launcher = FakeLauncher(store, spec, cold_start_s=50.0, compile_s=6.0)
    run_job(store, spec, config=RunConfig(invocation_seconds=40.0), launcher=launcher)
    # first window: (40 s - aws-lambda's 18 s cold start) / (2 x the plan's 1 s) = 11; its ranks
    # then measured 50 s of start-up (cold start + first iteration - a steady one), more than
    # the limit: every later window is the least, one iteration
    assert AWS.cold_start_s == 18.0
    assert launcher.windows() == [(0, 11, 0), (11, 12, 0), (12, 13, 0)]
    # each rank learns every stage's start-up: the plan's, then cold start + compile measured
    assert {e.stages_startup_s for e, _ in launcher.events[:3]} == {(18.0, 18.0)}
    assert {e.stages_startup_s for e, _ in launcher.events[3:]} == {(56.0, 56.0)}
    # an explicit start-up overrides both: (40 - 0) / 2 = 20 iterations fit, 13 are left
    other = FakeLauncher(store, spec, cold_start_s=50.0)
    run_job(store, spec, config=RunConfig(invocation_seconds=40.0, startup_seconds=0),
            launcher=other)
    assert other.windows() == [(0, 13, 1)]


def test_a_failed_rank_restarts_the_attempt_from_the_latest_complete_checkpoint(store):
    spec = job(4)

    def script(event: RankEvent) -> Outcome:
        died = event.attempt == 0 and event.start == 2 and event.rank == 1
        return Outcome.FAILED if died else Outcome.FINISHED

    launcher = FakeLauncher(store, spec, script)
    config = RunConfig(invocation_seconds=4.0, startup_seconds=0,
                       faults=(Fault(rank=1, iteration=3),))
    progress = run_job(store, spec, config=config, launcher=launcher)
    assert launcher.windows() == [(0, 2, 0), (2, 4, 0), (2, 4, 1)]
    assert progress.restarts == 1 and progress.handovers == 1
    # the attempt's ranks were all stopped, and its messages deleted
    assert all(r.killed for r in launcher.ranks[3:6]) and store.list(spec.keys.run(0)) == []
    # the fault hook rides only on the first attempt's events
    assert {e.fault for e, _ in launcher.events if e.attempt == 0} == {Fault(1, 3)}
    assert {e.fault for e, _ in launcher.events if e.attempt == 1} == {None}
    assert sorted(progress.losses) == [0, 1, 2, 3]


def test_a_refused_window_is_tried_again_at_half_its_size(store):
    spec = job(8)

    def script(event: RankEvent) -> Outcome:
        return Outcome.REFUSED if event.attempt == 0 else Outcome.FINISHED

    launcher = FakeLauncher(store, spec, script)
    progress = run_job(store, spec, config=RunConfig(invocation_seconds=100.0, startup_seconds=0),
                       launcher=launcher)
    assert launcher.windows() == [(0, 8, 0), (0, 4, 1), (4, 8, 1)]
    assert progress.restarts == 1 and progress.handovers == 1


class HandsOverEarly(FakeLauncher):
    """The first window's ranks end it at iteration `at` through its hand-over marker, as
    ranks do whose iterations run slower than predicted (`runtime.handover`)."""

    def __init__(self, store: FileStore, spec: JobSpec, at: int):
        super().__init__(store, spec)
        self.at = at

    def _finish(self, event: RankEvent, memory_mb: int) -> None:
        if event.invocation == 0:
            write_marker(self.store, self.spec.keys, event.attempt, event.invocation,
                         HandoverMarker(self.at, event.rank, 10.0, 20.0))
            event = dataclasses.replace(event, stop=self.at)
        super()._finish(event, memory_mb)


def test_a_window_handed_over_early_continues_from_the_markers_stop(store):
    spec = job(6)
    launcher = HandsOverEarly(store, spec, at=2)
    progress = run_job(store, spec, config=RunConfig(invocation_seconds=100.0, startup_seconds=0),
                       launcher=launcher)
    # the first window was planned for all six iterations and ran two: a handover, no restart
    assert launcher.windows() == [(0, 6, 0), (2, 6, 0)]
    assert progress.restarts == 0 and progress.handovers == 1
    assert progress.early_handovers == 1
    assert sorted(progress.losses) == list(range(6))
    # the next window is sized from the iterations that ran: iteration 1's time alone
    second = launcher.events[3][0]
    assert second.start == 2 and second.iteration_s == pytest.approx(progress.times[1])
    assert progress.dollars == pytest.approx(2 * window_dollars())


def test_the_cost_guard_prices_a_handed_over_window_by_the_iterations_that_ran(store):
    spec, dollars = job(6), window_dollars()
    launcher = HandsOverEarly(store, spec, at=2)
    # After the first window, 2.6 windows' dollars leave 1.6 of them; at one window's dollars
    # per 2 iterations that affords 3 more (as per 6 planned iterations it would be 9).
    config = RunConfig(invocation_seconds=100.0, startup_seconds=0, max_cost=2.6 * dollars)
    progress = run_job(store, spec, config=config, launcher=launcher)
    assert launcher.windows() == [(0, 6, 0), (2, 5, 0), (5, 6, 0)]
    assert progress.dollars == pytest.approx(3 * dollars)


def test_a_silent_rank_counts_as_dead_after_the_wait_timeout_and_the_limit(store):
    spec = job(1, wait_timeout_s=0.2)

    def script(event: RankEvent) -> Outcome:
        return Outcome.SILENT if event.attempt == 0 else Outcome.FINISHED

    launcher = FakeLauncher(store, spec, script)
    progress = run_job(store, spec, config=RunConfig(invocation_seconds=0.1, startup_seconds=0),
                       launcher=launcher)
    assert launcher.windows() == [(0, 1, 0), (0, 1, 1)]
    assert progress.restarts == 1 and progress.losses == {0: (loss(0, 1) + loss(0, 2)) / 2}


def test_ranks_that_keep_dying_fail_the_job_with_the_ranks_last_output(store):
    spec = job(4)
    launcher = FakeLauncher(store, spec, lambda event: Outcome.FAILED)
    with pytest.raises(JobFailed, match="rank 0 .*FAILED.* restarted 2 times") as failed:
        run_job(store, spec, config=RunConfig(max_restarts=2, startup_seconds=0),
                launcher=launcher)
    assert "rank 0: the last words" in str(failed.value)
    assert [w[2] for w in launcher.windows()] == [0, 1, 2]


# -- outcomes as the platforms report them ------------------------------------------------------

def local(code: str, tmp_path) -> LocalInvocation:
    log = tmp_path / "rank.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-c", code], stdout=out,
                                   stderr=subprocess.STDOUT)
    return LocalInvocation(0, process, log)


@pytest.mark.parametrize("code, outcome", [
    ("print('bye')", Outcome.FINISHED),
    ("raise SystemExit(3)", Outcome.FAILED),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", Outcome.FAILED),
])
def test_a_local_rank_reports_its_exit_as_an_outcome(code, outcome, tmp_path):
    rank = local(code, tmp_path)
    assert rank.wait(timeout=60) is outcome and rank.poll() is outcome
    assert "exit code" in rank.tail()


def test_a_local_rank_still_running_after_the_wait_is_silent(tmp_path):
    rank = local("import time; time.sleep(60)", tmp_path)
    try:
        assert rank.poll() is None
        assert rank.wait(timeout=0.1) is Outcome.SILENT
    finally:
        rank.kill()
    assert rank.poll() is Outcome.FAILED


@pytest.mark.parametrize("status, outcome", [
    (RankStatus(Status.DONE, next=4), Outcome.FINISHED),
    (RankStatus(Status.HANDOVER, next=2), Outcome.FINISHED),
    (RankStatus(Status.FAILED, error="Traceback: boom"), Outcome.FAILED),
    (RankStatus(Status.REFUSED, next=0, reason="deadline", remaining_s=1.0, needed_s=20.0),
     Outcome.REFUSED),
])
def test_a_lambda_rank_reads_its_outcome_from_its_status(status, outcome, tmp_path):
    store = FileStore(str(tmp_path))
    rank = LambdaInvocation(0, "jaxpipe-worker-1024", "r-1", store, "status/rank0",
                            deadline=time.time() + 60, poll_every_s=0.0)
    assert rank.poll() is None  # no status yet, deadline ahead
    store.put("status/rank0", json.dumps(status.to_dict()).encode())
    assert rank.poll() is outcome and rank.wait(timeout=1) is outcome
    if status.error:
        assert "boom" in rank.tail()
    if status.status is Status.REFUSED:
        assert "20.0 s needed" in rank.tail()


def test_a_lambda_rank_without_status_past_its_deadline_is_silent(tmp_path):
    rank = LambdaInvocation(0, "jaxpipe-worker-1024", "r-1", FileStore(str(tmp_path)),
                            "status/rank0", deadline=time.time() - 1, poll_every_s=0.0)
    assert rank.poll() is Outcome.SILENT
    assert "aws logs tail /aws/lambda/jaxpipe-worker-1024" in rank.tail()


def test_a_loss_record_that_does_not_parse_fails_the_attempt_not_the_driver(store):
    spec = job(2)

    class Garbling(FakeLauncher):
        def _finish(self, event: RankEvent, memory_mb: int) -> None:
            super()._finish(event, memory_mb)
            if event.attempt == 0:  # the record is garbled and the window never checkpoints
                self.store.put(spec.keys.loss(0, 1, 0), b"not json")
                for stage in range(len(PLAN.stages)):
                    self.store.delete(spec.keys.checkpoint(event.stop, stage, "done"))

    launcher = Garbling(store, spec)
    progress = run_job(store, spec, config=RunConfig(startup_seconds=0), launcher=launcher)
    assert [w[2] for w in launcher.windows()] == [0, 1] and progress.restarts == 1
    assert progress.losses == {t: (loss(t, 1) + loss(t, 2)) / 2 for t in range(2)}


def test_the_memory_hint_follows_how_the_rank_died_not_the_drivers_kill() -> None:
    from jaxpipe.runtime.attempts import failure_message

    killed = "(exit code -9; log /tmp/rank1.log)\nlast line"  # the driver killed the attempt

    def hint(death: RankDeath, tail: str) -> bool:
        return "give its stage more memory" in failure_message(death, 1, 0, tail, 0)

    corrupt = "Traceback\njaxpipe.errors.CorruptBundleError: re-run the job"
    assert not hint(RankDeath(1, Outcome.FAILED, error=corrupt), killed)
    exhausted = "Traceback\nXlaRuntimeError: RESOURCE_EXHAUSTED: out of memory"
    assert hint(RankDeath(1, Outcome.FAILED, error=exhausted), killed)
    assert hint(RankDeath(1, Outcome.FAILED), "(exit code -6; log x)")  # no status: an abort
    assert hint(RankDeath(1, Outcome.SILENT), "(still running)")
