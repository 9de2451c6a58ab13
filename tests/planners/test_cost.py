"""The cost model on hand-computed cases."""

from __future__ import annotations

import pytest

from planners import Plan, StagePlan, cost

from .conftest import MIB


def two_stage_plan() -> Plan:
    return Plan((StagePlan(0, 0, 1024), StagePlan(1, 1, 1024)), micro_batch=1, global_batch=2)


def test_two_stage_pipeline_time_by_hand(hand_problem) -> None:
    # F=1 G=2 per stage; every transfer 1 s; M=2.
    # forward fill (1+1+1) + (1+1+0) = 5, bottleneck (2-1) * 1 = 1
    # backward fill (1+2+0) + (0+2+1) = 6, bottleneck (2-1) * 2 = 2; no sync, free update
    b = cost.breakdown(two_stage_plan(), hand_problem)
    assert b.seconds == pytest.approx(14.0)
    assert b.fill_seconds == pytest.approx(11.0) and b.bottleneck_seconds == pytest.approx(3.0)
    assert b.dollars == pytest.approx(1e-5 * 14.0 * 2)  # 2 GB for 14 s
    # stage 0: PUT act x2, GET input x2 + grad x2; stage 1: PUT grad x2 + the loss record,
    # GET act x2
    assert (b.puts, b.gets) == (5, 6)


def test_a_cached_training_set_costs_stage_0_memory_not_downloads(hand_problem) -> None:
    import dataclasses
    cached = dataclasses.replace(hand_problem, cached_input_bytes=8 * MIB)
    b, c = cost.breakdown(two_stage_plan(), hand_problem), cost.breakdown(two_stage_plan(), cached)
    # stage 0's input downloads (1 s each) leave the forward fill: 14 - 1 = 13 s, and its two
    # input GETs the bill; stage 0 holds the 8 MiB set, stage 1 nothing more
    assert c.seconds == pytest.approx(13.0) and c.gets == b.gets - 2 and c.puts == b.puts
    assert c.stages[0].act_down == 0.0 and c.stages[1].act_down == b.stages[1].act_down
    assert c.stages[0].peak_mb == pytest.approx(b.stages[0].peak_mb + 8)
    assert c.stages[1].peak_mb == pytest.approx(b.stages[1].peak_mb)


def test_a_streaming_data_cache_costs_stage_0_memory_and_keeps_its_reads(hand_problem) -> None:
    import dataclasses
    streaming = dataclasses.replace(hand_problem, input_cache_bytes=8 * MIB)
    b, c = cost.breakdown(two_stage_plan(), hand_problem), cost.breakdown(two_stage_plan(),
                                                                          streaming)
    # the shards in stage 0's cache take memory there only; every input is still downloaded
    assert c.seconds == b.seconds and (c.gets, c.puts) == (b.gets, b.puts)
    assert c.stages[0].peak_mb == pytest.approx(b.stages[0].peak_mb + 8)
    assert c.stages[1].peak_mb == pytest.approx(b.stages[1].peak_mb)


def test_peak_memory_counts_stash_of_every_micro_batch_in_flight(hand_problem) -> None:
    peaks = cost.peak_memory(two_stage_plan(), hand_problem)
    io = 2 * (1e6 + 1e6) / MIB  # double-buffered input and output of one micro-batch
    assert peaks[0] == pytest.approx(2 * 1 + io + 150)  # 2 micro-batches x 1 MiB stash
    assert peaks[1] == pytest.approx(2 * 1 + 2 * 1e6 / MIB + 150)  # last stage sends nothing


def test_recompute_keeps_inputs_and_pays_a_second_forward(hand_problem) -> None:
    model = cost.StageModel(hand_problem, 1)
    stash, rec = model.terms(0, 1, 1024, 1, "stash"), model.terms(0, 1, 1024, 1, "recompute")
    assert rec.bwd == pytest.approx(stash.bwd + stash.fwd)
    assert rec.peak_mb == pytest.approx(stash.peak_mb - 2 * 2 + 2 * 1e6 / MIB + 2)


def test_scatter_reduce_tends_to_two_w_over_bandwidth() -> None:
    assert cost.sync_seconds(4e6, 1, 1e6, 1e6, 0.5) == 0.0
    assert cost.sync_seconds(4e6, 4, 1e6, 1e6, 0.0) == pytest.approx(8.0)  # 2W/B
    # chunks of 1 s, 0.5 s latency paid per phase, not per step: scatter 3 overlapped + 1,
    # publish 1 (longer than the latency its readers' first poll costs), gather 3, and 2 lat
    assert cost.sync_seconds(4e6, 4, 1e6, 1e6, 0.5) == pytest.approx(3 + 1 + 1 + 3 + 1.0)
    # chunks of 0.1 s: the readers of the reduced chunks see it a round trip after they ask
    assert cost.sync_seconds(4e5, 4, 1e6, 1e6, 0.5) == pytest.approx(0.3 + 0.1 + 0.5 + 0.3
                                                                      + 1.0)
    # a faster uplink (u = 0.5 s, v = 1 s): the scatter runs at the downlink's pace
    assert cost.sync_seconds(4e6, 4, 2e6, 1e6, 0.1) == pytest.approx(3 + 0.5 + 0.5 + 3 + 0.2)


def test_scatter_reduce_pays_latency_per_phase_not_per_replica() -> None:
    # tiny gradients: two round trips and one poll whatever the replica count
    times = [cost.sync_seconds(1e3, d, 70e6, 70e6, 0.02) for d in (2, 4, 8, 16)]
    assert times == pytest.approx([3 * 0.02] * 4, rel=1e-3)


def test_checkpoints_inside_a_window_add_four_puts_per_stage_every_k_iterations(
        hand_problem) -> None:
    import dataclasses

    from planners import PlanError
    every = dataclasses.replace(hand_problem, checkpoint_every=5)
    b, c = cost.breakdown(two_stage_plan(), hand_problem), cost.breakdown(two_stage_plan(), every)
    assert b.puts == 5 and c.puts == pytest.approx(5 + 2 * 4 / 5)  # 2 stages, replica 0 each
    assert c.gets == b.gets and c.seconds == b.seconds
    with pytest.raises(PlanError, match="checkpoint_every"):
        dataclasses.replace(hand_problem, checkpoint_every=0)


def test_replicas_divide_the_bottleneck_and_add_sync(hand_problem) -> None:
    import dataclasses
    prob = dataclasses.replace(hand_problem, global_batch=4, replica_options=(1, 2))
    one = Plan((StagePlan(0, 1, 1024, 1),), 1, 4)
    two = Plan((StagePlan(0, 1, 1024, 2),), 1, 4)
    t1, t2 = cost.iteration_time(one, prob), cost.iteration_time(two, prob)
    # one stage: fill (1+2+0)+(0+4+0) = 7, bottleneck (n-1) * (2 + 4) with n = 4 or 2
    assert t1 == pytest.approx(7 + 3 * 6) and t2 == pytest.approx(7 + 1 * 6)


def test_violations_name_the_stage_and_the_numbers(hand_problem) -> None:
    plan = Plan((StagePlan(0, 1, 100),), 1, 2)
    assert any("stage 0 needs" in v and "has 100 MB" in v for v in
               cost.violations(plan, hand_problem))
