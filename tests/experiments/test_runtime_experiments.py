"""The runtime experiments' quick modes on their smallest settings, with their comparisons checked.

Each local job starts fresh processes that import JAX, so every experiment runs once per module
(fixtures) and the assertions share the runs. Timing assertions are loose: this machine has 2
cores shared with other work.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import convergence, fidelity, scatter_reduce
from transports import allreduce_requests


@pytest.fixture(scope="module")
def reduce_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("scatter_reduce")
    return out, scatter_reduce.run(quick=True, out=out, sizes_mb=[1], worlds=[2, 4])


@pytest.fixture(scope="module")
def convergence_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("convergence")
    return out, convergence.run(quick=True, out=out, iterations=5,
                                names=("1 stage", "2 stages", "2 stages x 2 replicas"),
                                workdir=out / "work")


@pytest.fixture(scope="module")
def fidelity_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("fidelity")
    case = dict(fidelity.QUICK[0], iterations=4)
    return out, fidelity.run(quick=True, out=out, cases=[case], workdir=out / "work")


def test_scatter_reduce_counts_requests_as_the_formula_and_writes_its_outputs(reduce_results):
    out, data = reduce_results
    assert (out / "scatter_reduce.png").stat().st_size > 0
    assert json.loads((out / "scatter_reduce.json").read_text())["rows"] == json.loads(
        json.dumps(data["rows"]))
    for row in data["rows"]:
        for algorithm in ("pipelined", "lambdaml"):
            got = row[algorithm]
            formula = allreduce_requests(row["world"], algorithm)
            assert got["formula_per_rank"] == formula
            for kind in ("PUT", "GET", "HEAD", "LIST"):
                assert got["requests_per_rank"][kind] == formula[kind]
            assert got["requests_match_formula"]
            assert got["leftover_keys"] == 0
            assert got["predicted_s"] > 0 and got["dollars"] > got["request_dollars"] > 0


def test_pipelined_scatter_reduce_is_not_slower_than_lambdaml_from_four_ranks(reduce_results):
    _, data = reduce_results
    for row in data["rows"]:
        if row["world"] >= 4:
            # The model predicts pipelined faster; measured, allow 25% noise on a busy machine.
            assert row["predicted_speedup"] > 1
            assert row["pipelined"]["seconds"] <= 1.25 * row["lambdaml"]["seconds"], row


def test_scatter_reduce_is_predicted_by_the_cost_model_within_a_factor(reduce_results):
    _, data = reduce_results
    for row in data["rows"]:
        ratio = row["pipelined"]["measured_over_predicted"]
        assert 0.5 < ratio < 4, row  # measured includes polls and cleanup the model leaves out


def test_convergence_loss_curves_are_the_same_for_every_plan(convergence_results):
    out, data = convergence_results
    assert (out / "convergence.png").stat().st_size > 0
    rows = data["rows"]
    assert [r["functions"] for r in rows] == [1, 2, 4]
    reference = np.asarray(rows[0]["losses"])
    assert len(reference) == 5 and reference[-1] < reference[0]
    for row in rows[1:]:
        np.testing.assert_allclose(row["losses"], reference, rtol=1e-5)
        assert row["max_relative_loss_difference"] <= 1e-5
    for row in rows:
        assert set(row["test_accuracy"]) == {5}
        assert row["seconds_per_iteration"] > 0 and row["dollars_per_iteration"] > 0
    accuracies = [r["test_accuracy"][5] for r in rows]
    assert max(accuracies) - min(accuracies) <= 1e-3  # same parameters, same predictions


def test_fidelity_compares_measured_with_closed_form_and_simulator(fidelity_results):
    out, data = fidelity_results
    (row,) = data["rows"]
    assert (out / "fidelity.png").stat().st_size > 0
    assert (out / row["timeline_png"]).stat().st_size > 0
    assert row["closed_form_s"] > 0 and row["simulated_s"] > 0
    assert row["measured_s"] > 0
    # The measured iteration is within a factor of 2 of both predictions, even on a loaded box.
    assert 0.5 < row["measured_over_closed_form"] < 2
    assert 0.5 < row["measured_over_simulated"] < 2
    # Replaying the schedule with the measured task durations never beats the measurement by
    # much (the replay is a lower bound up to clock noise), and the overhead is small.
    assert row["replay_with_measured_durations_s"] <= row["timeline_window_s"] * 1.05
    assert row["overhead_per_micro_batch_s"] < 0.05
    busy = row["lane_busy_s"]
    assert set(busy) == {"0", "1"} or set(busy) == {0, 1}


def test_cpu_share_is_what_the_cores_leave_the_plans_compute_demand() -> None:
    from experiments.runtime_common import cpu_share
    from planners import Plan, Problem, StagePlan
    from tests.planners.conftest import hand_platform, hand_profile

    # free links: F = 1 s, G = 2 s per stage and micro-batch, M = 2, two stages:
    # T = fill 1+1 + bottleneck 1 + fill 2+2 + bottleneck 2 = 9 s; busy 2 x 2 x 3 = 12 core-s
    fast = hand_platform(uplink_bytes_per_s=1e15, downlink_bytes_per_s=1e15)
    prob = Problem(hand_profile(), fast, global_batch=2, micro_batches=(1,), replica_options=(1,),
                   update_seconds_per_byte=0.0)
    plan = Plan((StagePlan(0, 0, 1024), StagePlan(1, 1, 1024)), micro_batch=1, global_batch=2)
    assert cpu_share(plan, prob, cores=2) == 1.0  # 12/9 = 1.33 cores busy on average: fits
    assert cpu_share(plan, prob, cores=1) == pytest.approx(9 / 12)


def test_handoff_gaps_add_the_waits_between_ready_inputs_and_task_starts() -> None:
    from experiments.timelines import IterationSpans, RankIteration, handoff_gaps
    from jaxpipe.runtime.metrics import Span

    def span(name, lane, start, end):
        return Span(lane, name, start, end)

    spans = [span("RECV_ACT 0", "download", 0.0, 1.0),
             span("FWD 0", "compute", 1.5, 2.0),         # 0.5 after its input arrived
             span("SEND_ACT 0", "upload", 2.25, 3.0),    # 0.25 after FWD 0 ended
             span("RECV_GRAD 0", "download", 1.0, 5.0),
             span("BWD 0", "compute", 5.0, 6.0),         # no gap: its gradient came at 5.0
             span("SYNC", "storage", 6.125, 7.0),        # 0.125 after the last BWD
             span("UPDATE", "compute", 7.0, 7.5)]
    it = IterationSpans(t=0, start=0.0, end=7.5, ranks={0: RankIteration(0, 0, tuple(spans))})
    assert handoff_gaps(it) == {0: 0.875}
