"""Schedules against literal tables, and invariants on larger cases."""

from __future__ import annotations

import itertools

import pytest

from planners import PlanError, schedule
from planners.schedule import Kind

RA, F, SA, RG, B, SG, SY, U = (Kind.RECV_ACT, Kind.FWD, Kind.SEND_ACT, Kind.RECV_GRAD, Kind.BWD,
                               Kind.SEND_GRAD, Kind.SYNC, Kind.UPDATE)


def table(sched: schedule.Schedule) -> list[list[tuple]]:
    return [[(t.kind, t.micro_batch, t.peer) for t in row] for row in sched.tasks]


def test_funcpipe_two_stages_two_micro_batches() -> None:
    assert table(schedule.build([1, 1], 2)) == [
        [(RA, 0, None), (RA, 1, None), (F, 0, None), (SA, 0, 1), (F, 1, None), (SA, 1, 1),
         (RG, 1, 1), (RG, 0, 1), (B, 1, None), (B, 0, None), (U, None, None)],
        [(RA, 0, 0), (RA, 1, 0), (F, 0, None), (F, 1, None),
         (B, 1, None), (SG, 1, 0), (B, 0, None), (SG, 0, 0), (U, None, None)],
    ]


def test_funcpipe_replicas_round_robin_and_peers() -> None:
    # stage 0 has 1 replica (rank 0), stage 1 has 2 (ranks 1, 2); M = 4
    rows = table(schedule.build([1, 2], 4))
    assert rows[1] == [(RA, 0, 0), (RA, 2, 0), (F, 0, None), (F, 2, None), (B, 2, None),
                       (SG, 2, 0), (B, 0, None), (SG, 0, 0), (SY, None, None), (U, None, None)]
    assert [(k, m, p) for k, m, p in rows[0] if k == SA] == [(SA, 0, 1), (SA, 1, 2), (SA, 2, 1),
                                                             (SA, 3, 2)]


def test_1f1b_three_stages() -> None:
    rows = table(schedule.build([1, 1, 1], 3, "1f1b"))
    kinds = [[k for k, m, _ in row if k in (F, B)] for row in rows]
    mbs = [[m for k, m, _ in row if k in (F, B)] for row in rows]
    assert kinds[0] == [F, F, F, B, B, B] and mbs[0] == [0, 1, 2, 0, 1, 2]
    assert kinds[1] == [F, F, B, F, B, B] and mbs[1] == [0, 1, 0, 2, 1, 2]
    assert kinds[2] == [F, B, F, B, F, B] and mbs[2] == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("reps,M,policy", list(itertools.product(
    [(1,), (2, 1), (1, 4, 2), (3, 3)], [4, 6], ["funcpipe", "1f1b"])))
def test_every_micro_batch_runs_once_per_stage_forward_before_backward(reps, M, policy) -> None:
    sched = schedule.build(list(reps), M, policy)
    assert len(sched.tasks) == sum(reps)
    for s, d in enumerate(reps):
        ranks = range(sched.rank(s, 0), sched.rank(s, 0) + d)
        for kind in (F, B):
            done = sorted(t.micro_batch for r in ranks for t in sched.tasks[r] if t.kind == kind)
            assert done == list(range(M))
        for r in ranks:
            row = sched.tasks[r]
            assert row[-1].kind == U and (row[-2].kind == SY) == (d > 1)
            for t in row:
                assert t.micro_batch is None or t.micro_batch % d == r - sched.rank(s, 0)
                if t.kind == F:
                    assert row.index(t) < row.index(next(x for x in row if x.kind == B
                                                         and x.micro_batch == t.micro_batch))


def test_bad_policy_is_rejected() -> None:
    with pytest.raises(PlanError, match="choose one of"):
        schedule.build([1], 2, "zigzag")
