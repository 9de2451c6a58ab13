"""Storage requests of a replicated stage's all-reduce, as the transports count them.

Per rank of an n-way pipelined all-reduce (transports/README.md): n+1 PUTs, 2(n-1) GETs and one
LIST (billed as a PUT). The cost model must price exactly these, or replicated plans look
cheaper than they run.
"""

from __future__ import annotations

import pytest

from planners import Plan, Problem, StagePlan, cost

from .conftest import hand_platform, hand_profile


@pytest.mark.parametrize("n", [2, 4])
def test_sync_requests_match_the_transports_count(n) -> None:
    problem = Problem(hand_profile(1), hand_platform(), global_batch=n, micro_batches=(1,),
                      replica_options=(n,), update_seconds_per_byte=0.0)
    plan = Plan((StagePlan(0, 0, 1024, n),), micro_batch=1, global_batch=n)
    b = cost.breakdown(plan, problem)
    # no messages, one loss record per replica; each micro-batch reads its data
    one_stage_puts, one_stage_gets = n, n
    assert b.puts == one_stage_puts + n * (n + 1) + n
    assert b.gets == one_stage_gets + n * 2 * (n - 1)
