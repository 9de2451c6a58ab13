"""The runtime's border values survive JSON exactly: the worker's events and status, its
metrics, and the training summary; and the rules they carry (the timeline cut, billed
requests) on hand-made cases."""

from __future__ import annotations

import json

import pytest

from jaxpipe.runtime.event import (
    Fault,
    RankEvent,
    RankStatus,
    Status,
    TaskEvent,
    parse_event,
)
from jaxpipe.runtime.job import JobSpec
from jaxpipe.runtime.metrics import (
    TIMELINE_SPANS,
    IterationRecord,
    LossRecord,
    RankMetrics,
    Span,
    Timeline,
    billed_requests,
    keep_whole_iterations,
)
from jaxpipe.runtime.summary import Summary, iteration_period
from planners import Plan, StagePlan, platforms
from transports import StoreStats

STORE = {"kind": "file", "root": "/tmp/store"}
PLAN = Plan(stages=(StagePlan(0, 1, 1024), StagePlan(2, 3, 2048, 2, "recompute")),
            micro_batch=4, global_batch=16)


def through_json(data: dict) -> dict:
    return json.loads(json.dumps(data))


# -- events and status ---------------------------------------------------------------------------

# The event the driver sent before events were typed, key for key.
DRIVER_EVENT = {"job": "j", "store": STORE, "start": 4, "stop": 8, "attempt": 1,
                "invocation": 3, "link": True, "iteration_s": 0.25, "rank": 2}


def test_a_driver_event_parses_and_writes_back_the_same_json():
    event = parse_event(through_json(DRIVER_EVENT))
    assert isinstance(event, RankEvent)
    assert (event.rank, event.start, event.stop, event.iteration_s) == (2, 4, 8, 0.25)
    assert event.to_dict() == DRIVER_EVENT


def test_optional_event_fields_appear_only_when_set_and_default_when_absent():
    bare = {"job": "j", "rank": 0, "store": STORE, "start": 0, "stop": 1, "attempt": 0,
            "invocation": 0}
    event = RankEvent.from_dict(bare)
    assert event.link is True and event.iteration_s is None and event.fault is None
    assert event.to_dict() == {**bare, "link": True}
    full = RankEvent.from_dict({**bare, "launched_at": 12.5, "fault": {"rank": 1, "iteration": 2}})
    assert full.fault == Fault(rank=1, iteration=2)
    assert through_json(full.to_dict())["fault"] == {"rank": 1, "iteration": 2}
    assert RankEvent.from_dict(through_json(full.to_dict())) == full


def test_an_event_names_its_status_claim_and_metrics_keys():
    event = RankEvent.from_dict(DRIVER_EVENT)
    assert event.status_key == "jobs/j/status/1/3/rank2"
    assert event.claim_key == "jobs/j/status/1/3/rank2.claim"
    assert event.metrics_key == "jobs/j/metrics/rank2/1-3.json"


@pytest.mark.parametrize("task, fields, keys", [
    ("calibrate", {"size_bytes": 1 << 20, "repeats": 2},
     {"task", "store", "key", "memory_mb", "repeats", "size_bytes"}),
    ("profile", {"model": "mlp", "micro_batches": (1, 2), "repeats": 1},
     {"task", "store", "key", "memory_mb", "repeats", "model", "micro_batches"}),
])
def test_task_events_carry_only_their_tasks_fields(task, fields, keys):
    event = TaskEvent(task, STORE, "jobs/calibration-x/k.json", 1024, **fields)
    data = through_json(event.to_dict())
    assert set(data) == keys
    parsed = parse_event(data)
    assert isinstance(parsed, TaskEvent) and parsed == event


@pytest.mark.parametrize("status, stored", [
    (RankStatus(Status.DONE, next=8), {"status": "done", "next": 8}),
    (RankStatus(Status.HANDOVER, next=4), {"status": "handover", "next": 4}),
    (RankStatus(Status.FAILED, error="Traceback ..."), {"status": "failed",
                                                       "error": "Traceback ..."}),
    (RankStatus(Status.REFUSED, next=0, reason="deadline", remaining_s=10.0, needed_s=17.0),
     {"status": "refused", "next": 0, "reason": "deadline", "remaining_s": 10.0,
      "needed_s": 17.0}),
])
def test_a_status_is_stored_as_before_and_parses_back(status, stored):
    assert status.to_dict() == stored
    assert RankStatus.from_dict(through_json(stored)) == status
    assert status.ended_cleanly == (status.status in (Status.DONE, Status.HANDOVER))


# -- the job spec ----------------------------------------------------------------------------------

def test_a_stored_job_spec_parses_to_typed_plan_and_platform_and_writes_the_same_bytes():
    platform = platforms.get("aws-lambda")
    stored = json.dumps({
        "job_id": "j", "model": "mlp", "plan": PLAN.to_dict(), "platform": platform.to_dict(),
        "iterations": 3, "optimizer": "adam", "learning_rate": 0.001, "seed": 0,
        "num_samples": 5, "shard_size": 1024, "shuffle": True, "shard_cache": None,
        "rng_names": ["dropout"],
        "checkpoint_every": 10, "wait_timeout_s": 120.0, "allreduce": "pipelined",
        "meta": {}}, indent=1).encode()
    spec = JobSpec.from_json(stored)
    assert spec.plan == PLAN and spec.platform == platform
    assert spec.rng_names == ("dropout",) and spec.num_stages == 2
    assert spec.to_json() == stored


# -- metrics ---------------------------------------------------------------------------------------

def span(name: str, start: float, end: float, lane: str = "compute") -> Span:
    return Span(lane, name, start, end)


def metrics(**fields) -> RankMetrics:
    values = dict(
        rank=1, stage=1, replica=0, attempt=0, invocation=2, cold_start_s=3.0, billed_s=9.0,
        peak_rss_mb=512.0, memory_mb=2048,
        iterations=(IterationRecord(4, 1.0, 101.0, 0.1, 2), IterationRecord(5, 1.0, 102.0, 0.0, 3)),
        requests=StoreStats(puts=3, gets=4, heads=1, lists=1, misses=2, bytes_up=10),
        timeline=(span("FWD 0", 100.0, 100.5), span("UPDATE", 100.5, 101.0),
                  span("FWD 0", 101.0, 101.5), span("SEND_GRAD 0", 101.5, 102.0, "upload"),
                  span("UPDATE", 101.5, 102.0)),
        timeline_from=4)
    values.update(fields)
    return RankMetrics(**values)


def test_metrics_survive_json():
    m = metrics()
    assert RankMetrics.from_dict(through_json(m.to_dict())) == m


def test_metrics_cut_the_timeline_into_its_iterations():
    m = metrics()
    assert [s.name for s in m.spans_of(4)] == ["FWD 0", "UPDATE"]
    assert [s.name for s in m.spans_of(5)] == ["FWD 0", "SEND_GRAD 0", "UPDATE"]
    assert m.spans_of(3) == ()
    assert [r.iteration for r in m.timeline_iterations] == [4, 5]
    # the timeline may hold fewer iterations than the window ran: from timeline_from on
    later = metrics(timeline=m.timeline[2:], timeline_from=5)
    assert [r.iteration for r in later.timeline_iterations] == [5]
    assert later.spans_of(4) == () and len(later.spans_of(5)) == 3


def test_metrics_written_before_the_cut_was_recorded_still_parse_without_iterations():
    old = through_json(metrics().to_dict())
    del old["timeline_from"]
    for record in old["iterations"]:
        del record["spans"]
    m = RankMetrics.from_dict(old)
    assert m.timeline_from is None and m.timeline_iterations == () and m.spans_of(4) == ()
    assert m.billed_s == 9.0 and len(m.timeline) == 5


def test_the_timeline_keeps_the_last_whole_iterations_that_fit():
    spans = [span(str(i), i, i + 1) for i in range(10)]
    starts = [(7, 0), (8, 4), (9, 7)]  # iteration 7: spans 0-3, 8: 4-6, 9: 7-9
    assert keep_whole_iterations(spans, starts, limit=10) == (tuple(spans), 7)
    assert keep_whole_iterations(spans, starts, limit=9) == (tuple(spans[4:]), 8)
    assert keep_whole_iterations(spans, starts, limit=5) == (tuple(spans[7:]), 9)
    # the last iteration is kept whole even when it alone is over the limit
    assert keep_whole_iterations(spans, starts, limit=2) == (tuple(spans[7:]), 9)
    assert keep_whole_iterations([], [], limit=2) == ((), None)


def test_a_timeline_records_spans_per_iteration_and_cuts_at_iteration_starts():
    timeline = Timeline()
    for t in range(3):
        timeline.iteration_started(t)
        for lane in ("download", "compute"):
            with timeline.span(lane, f"T{t}"):
                pass
        assert timeline.spans_since(t) == 2
    kept, first = timeline.kept(limit=5)
    assert first == 1 and [s.name for s in kept] == ["T1", "T1", "T2", "T2"]
    assert all(s.end >= s.start for s in kept)
    assert timeline.kept()[1] == 0  # 6 spans fit in TIMELINE_SPANS
    assert TIMELINE_SPANS >= 6


def test_billed_requests_count_lists_as_puts_and_heads_and_misses_as_gets():
    assert billed_requests(metrics().requests) == (3 + 1, 4 + 1 + 2)


def test_a_loss_record_is_ordered_by_micro_batch():
    record = LossRecord.of({3: 0.25, 1: 0.75})
    assert json.loads(record.to_json()) == {"micro_batches": [1, 3], "losses": [0.75, 0.25]}
    assert LossRecord.from_json(record.to_json()) == record


def test_the_iteration_period_is_the_median_gap_between_iteration_ends_after_the_first():
    # iteration t ends when its last rank ends it; ends 10, 12, 13, 14.5, 15.5 -> gaps 2, 1,
    # 1.5, 1; the first gap (warm-up) is left out: median of 1, 1.5, 1 = 1
    a = metrics(rank=0, iterations=tuple(IterationRecord(t, 1.0, end) for t, end in
                                         enumerate([10.0, 11.0, 13.0, 14.5, 15.0])))
    b = metrics(rank=1, iterations=tuple(IterationRecord(t, 1.0, end) for t, end in
                                         enumerate([9.0, 12.0, 12.5, 14.0, 15.5])))
    assert iteration_period([a, b]) == 1.0
    assert iteration_period([metrics(iterations=())]) is None


# -- the summary -----------------------------------------------------------------------------------

def summary(**fields) -> Summary:
    values = dict(
        job="j", model="mlp", plan=PLAN, losses=(2.0, 1.5), measured_seconds_per_iteration=0.5,
        measured_dollars_per_iteration=1e-5, measured_run_dollars_per_iteration=3e-5,
        wall_seconds=30.0, restarts=0, handovers=1, invocations=2, cold_start_seconds=(3.0, 4.0),
        peak_rss_mb={0: 400.0, 1: 420.0})
    values.update(fields)
    return Summary(**values)


def test_a_summary_keeps_the_stored_keys_and_survives_json():
    s = summary(predicted_seconds_per_iteration=0.4, predicted_dollars_per_iteration=8e-6,
                simulated_seconds_per_iteration=0.45, test_accuracy=0.9)
    data = through_json(s.to_dict())
    assert set(data) == {
        "job", "model", "plan", "losses", "measured_seconds_per_iteration",
        "measured_dollars_per_iteration", "measured_run_dollars_per_iteration", "wall_seconds",
        "restarts", "handovers", "invocations", "cold_start_seconds", "peak_rss_mb",
        "predicted_seconds_per_iteration", "predicted_dollars_per_iteration",
        "simulated_seconds_per_iteration", "test_accuracy"}
    assert data["plan"] == PLAN.to_dict() and data["peak_rss_mb"] == {"0": 400.0, "1": 420.0}
    assert Summary.from_dict(data) == s and s.has_predictions


def test_a_summary_without_predictions_says_so_and_leaves_their_keys_out():
    s = summary()
    assert not s.has_predictions and s.test_accuracy is None
    data = s.to_dict()
    assert "predicted_seconds_per_iteration" not in data and "test_accuracy" not in data
    assert Summary.from_dict(through_json(data)) == s
