"""INIT-phase billing: Lambda bills a container image's INIT, so the measured dollars and the
budget guard count it (`runtime.billing`)."""

from __future__ import annotations

import time

import pytest

from jaxpipe.errors import BudgetExceeded
from jaxpipe.runtime.billing import CostGuard, init_seconds, measured_dollars, process_started_at
from jaxpipe.runtime.metrics import IterationRecord, RankMetrics
from planners import Plan, StagePlan, platforms
from transports import StoreStats

AWS = platforms.get("aws-lambda")
PLAN = Plan((StagePlan(0, 0, 2048), StagePlan(1, 1, 1024)), micro_batch=1, global_batch=1,
            iteration_seconds=1.0)


def metrics(billed_s: float, init_s: float = 0.0, memory_mb: int = 2048) -> RankMetrics:
    return RankMetrics(rank=0, stage=0, replica=0, attempt=0, invocation=0, cold_start_s=1.0,
                       billed_s=billed_s, peak_rss_mb=1.0, memory_mb=memory_mb,
                       iterations=(IterationRecord(0, 1.0, 1.0),), requests=StoreStats(),
                       timeline=(), init_s=init_s)


def test_an_invocations_init_phase_is_billed_like_its_handler_time():
    cold = measured_dollars(AWS, [metrics(60.0, init_s=7.5)])
    assert cold == pytest.approx(measured_dollars(AWS, [metrics(67.5)]))
    assert cold > measured_dollars(AWS, [metrics(60.0)])
    assert RankMetrics.from_dict(metrics(60.0, 7.5).to_dict()).init_s == 7.5
    old = metrics(60.0).to_dict()
    del old["init_s"]  # metrics written before INIT was recorded
    assert RankMetrics.from_dict(old).init_s == 0.0


def test_only_a_process_first_invocation_pays_init():
    assert init_seconds(10.0, 16.0, 16.5) == 6.0
    assert init_seconds(10.0, 16.0, 916.0) == 0.0  # warm: the next window in the same process
    assert init_seconds(None, 16.0, 16.5) == 0.0
    started = process_started_at()
    assert started is not None and started <= time.time()


def test_the_budget_reserves_every_windows_start_up_apart_from_its_iterations():
    gigabytes = 3.0  # 2048 + 1024 MB
    per = AWS.compute_dollars(gigabytes, 1.0)
    startup = AWS.compute_dollars(gigabytes, 20.0)
    plain = CostGuard(per * 100.5, AWS, PLAN)
    reserving = CostGuard(per * 100.5, AWS, PLAN, startup_s=20.0)
    assert plain.affordable(1000, 0, "j") == 100
    assert reserving.startup_dollars() == pytest.approx(startup)
    assert reserving.affordable(1000, 0, "j") == 80  # (100.5 - 20) per
    # a measured window of 10 iterations that started up in 20 s: its dollars less the start-up
    # are its iterations', and the next window reserves the same start-up
    reserving.charge_window(per * 10 + startup, 10, startup_s=20.0)
    assert reserving.per_iteration() == pytest.approx(per)
    assert reserving.startup_dollars() == pytest.approx(startup)
    assert reserving.affordable(1000, 10, "j") == 50  # (100.5 - 30 spent - 20 start-up) per
    # a window that started up in 4 s: the next one reserves 4 s of every function
    reserving.charge_window(per * 5 + AWS.compute_dollars(gigabytes, 4.0), 5, startup_s=4.0)
    assert reserving.per_iteration() == pytest.approx(per)
    assert reserving.startup_dollars() == pytest.approx(AWS.compute_dollars(gigabytes, 4.0))
    with pytest.raises(BudgetExceeded):
        CostGuard(startup, AWS, PLAN, startup_s=20.0).affordable(10, 0, "j")
