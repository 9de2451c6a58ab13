"""`--platform lithops` end to end on Lithops' localhost backend over a real S3 server.

Lithops' localhost backend runs every call in a fresh local process by the same code path as
its cloud backends (the call pickled into Lithops' storage, a runner that loads and runs it,
its status written back). Here its storage is a `weed mini` S3 server on 127.0.0.1 (which
enforces If-None-Match, the workers' claim), and the job's store is a bucket on the same
server. The same plan trained on `--platform local` is the reference: the parameters must be
bitwise equal, with a duplicate call of one rank, and with a rank killed mid-iteration (that
one through `jaxpipe.fit(..., platform="lithops")`).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import sys
from pathlib import Path

import boto3
import jax
import numpy as np
import pytest
import yaml

import jaxpipe
from jaxpipe.errors import LithopsStorageError, LithopsWorkersError
from jaxpipe.runtime import lithops_job
from jaxpipe.runtime.driver import RunConfig, run_job
from jaxpipe.runtime.event import Fault, RankEvent
from jaxpipe.runtime.platforms.lithops import LithopsInvocation, LithopsPlatform
from jaxpipe.runtime.train import TrainOptions, open_store, prepare, train
from jaxpipe.runtime.zoo import zoo_setup
from jaxpipe.tree import nest
from planners import Plan, StagePlan
from tests.transports.seaweedfs import seaweedfs, weed_binary
from transports import codec

BATCH, ITERATIONS = 16, 3
# Three stages, the middle one replicated twice and recomputing: 4 functions.
PLAN = Plan(stages=(StagePlan(0, 0, 1024), StagePlan(1, 2, 1024, 2, "recompute"),
                    StagePlan(3, 3, 1024)), micro_batch=4, global_batch=BATCH)
KEY, SECRET, BUCKET = "jaxpipe-test-key", "jaxpipe-test-secret", "jaxpipe-lithops"

pytestmark = pytest.mark.skipif(weed_binary() is None and not os.environ.get("CI"),
                                reason="SeaweedFS (`weed`) is not installed")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A `weed mini` S3 endpoint with the job bucket, and the environment a call inherits:
    the server's keys, and this venv first on PATH (Lithops' localhost runtime default)."""
    mp = pytest.MonkeyPatch()
    for name, value in (("AWS_ACCESS_KEY_ID", KEY), ("AWS_SECRET_ACCESS_KEY", SECRET),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        mp.setenv(name, value)
    mp.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    with seaweedfs(KEY, SECRET) as url:
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket=BUCKET)
        yield url
    mp.undo()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, s3):
    folder = tmp_path_factory.mktemp("lithops")
    (folder / "plan.json").write_text(json.dumps(PLAN.to_dict()))
    (folder / "lithops.yaml").write_text(yaml.safe_dump(lithops_yaml(s3, PLAN.num_functions + 1)))
    return folder


def lithops_yaml(endpoint: str, workers: int) -> dict:
    """Lithops' own format: localhost compute, its storage on the S3 server."""
    return {"lithops": {"backend": "localhost", "storage": "minio", "log_level": "WARNING"},
            "localhost": {"worker_processes": workers, "runtime": sys.executable},
            "minio": {"endpoint": endpoint, "access_key_id": KEY, "secret_access_key": SECRET,
                      "storage_bucket": BUCKET}}


def options(workdir, s3, job, platform, **run_config) -> TrainOptions:
    return TrainOptions(
        model="mlp", plan_file=str(workdir / "plan.json"), batch=BATCH, iterations=ITERATIONS,
        optimizer="momentum", learning_rate=0.05, store=f"s3://{BUCKET}", endpoint_url=s3,
        job_id=job, checkpoint_every=1, profile_cache=str(workdir / "profiles"),
        wait_timeout_s=60, platform=platform, lithops_config=str(workdir / "lithops.yaml"),
        run=RunConfig(log_dir=str(workdir / "logs"), link=False, **run_config))


def flatten(tree, prefix=""):
    """{"a/b/c": array} of a nested dict, the keys `nest` reads back."""
    if not isinstance(tree, dict):
        return {prefix[:-1]: np.asarray(tree)}
    return {k: v for name, sub in tree.items() for k, v in flatten(sub, f"{prefix}{name}/").items()}


def final_params(store, job):
    params = {}
    for k in range(len(PLAN.stages)):
        key = f"jobs/{job}/ckpt/{ITERATIONS:08d}/stage{k}/params"
        params.update(codec.decode(store.get(key), key=key))
    return nest(params, strip="params")


def assert_bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def on_local(workdir, s3, tmp_path_factory):
    """The reference: the plan on --platform local, trained once per test session (pytest-xdist
    workers share it through a file under the session's base directory, behind a lock)."""
    base = tmp_path_factory.getbasetemp()  # an xdist worker's is popen-gwN/ in the session's
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "lithops-reference"
    shared.mkdir(exist_ok=True)
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        saved = shared / "params.npz"
        if not saved.exists():
            summary = train(options(workdir, s3, "on-local", "local"), show_progress=False)
            flat = flatten(final_params(open_store(f"s3://{BUCKET}", s3), "on-local"))
            np.savez(shared / "tmp.npz", **flat)
            (shared / "losses.json").write_text(json.dumps(summary.losses))
            (shared / "tmp.npz").rename(saved)
        with np.load(saved) as arrays:
            params = nest({k: arrays[k] for k in arrays.files}, strip="params")
        return json.loads((shared / "losses.json").read_text()), params


def test_training_through_lithops_equals_the_local_platform_bitwise(workdir, s3, on_local):
    summary = train(options(workdir, s3, "on-lithops", "lithops"), show_progress=False)
    store = open_store(f"s3://{BUCKET}", s3)
    assert_bitwise_equal(final_params(store, "on-lithops"), on_local[1])
    assert list(summary.losses) == on_local[0]
    assert summary.restarts == 0
    # the bill: Lithops' call statistics at the catalog's prices
    bill = json.loads(store.get("jobs/on-lithops/" + lithops_job.BILL_FILE))
    assert bill["backend"] == "localhost" and bill["catalog"] == "local"
    calls = bill["calls"]
    assert sorted(c["rank"] for c in calls) == list(range(PLAN.num_functions))
    assert all(c["seconds"] > 0 and c["memory_mb"] == 1024 for c in calls)
    gb_s = sum(c["seconds"] * c["memory_mb"] / 1024 for c in calls)
    assert bill["dollars"] == pytest.approx(gb_s * 0.0000166667 + len(calls) * 0.20e-6)
    # Lithops' own objects (its pickled calls) are gone with its executor
    assert not store.list("lithops.jobs/")
    # everything JaxPipe keeps under the job's prefix is JSON or raw arrays, never a pickle
    for key in store.list("jobs/on-lithops/"):
        assert not store.get(key).startswith(b"\x80"), key


class Duplicating:
    """Launches `rank` twice in the first window, as a platform delivering one event twice;
    the driver watches the first call, and either one may claim the slot first."""

    def __init__(self, platform: LithopsPlatform, rank: int) -> None:
        self.platform, self.rank, self.name = platform, rank, platform.name
        self.calls: list[LithopsInvocation] = []

    def launch(self, event: RankEvent, memory_mb: int) -> LithopsInvocation:
        first = self.platform.launch(event, memory_mb)
        if event.rank == self.rank and not self.calls:
            self.calls = [first, self.platform.launch(event, memory_mb)]
        return first


def test_a_duplicate_call_of_one_rank_runs_once(workdir, s3, on_local):
    opts = lithops_job.resolve(options(workdir, s3, "duplicate", "lithops"))
    prepared = prepare(opts)
    platform = lithops_job.launcher(prepared.spec, prepared.store, opts)
    twice = Duplicating(platform, rank=1)
    try:
        progress = run_job(prepared.store, prepared.spec, 0, opts.run, launcher=twice)
        replies = [json.loads(call.future.result()) for call in twice.calls]
    finally:
        platform.close()
    assert sorted(r["status"] for r in replies) == ["done", "duplicate"]  # one ran the rank
    assert [r["metrics"] is None for r in replies].count(True) == 1
    assert progress.restarts == 0
    assert_bitwise_equal(final_params(prepared.store, "duplicate"), on_local[1])


def test_a_rank_killed_mid_iteration_under_lithops_is_recovered(workdir, s3, on_local):
    # through the Python API: jaxpipe.fit with platform="lithops", on the zoo's own setup
    opts = options(workdir, s3, "killed", "lithops", faults=(Fault(rank=2, iteration=1),))
    setup = zoo_setup("mlp", {}, opts.seed, BATCH)
    result = jaxpipe.fit(
        setup.model, setup.loss_fn, setup.data, variables=setup.variables,
        optimizer="momentum", learning_rate=0.05, batch_size=BATCH, iterations=ITERATIONS,
        platform="lithops", plan=opts.plan_file, store=opts.store, progress=False,
        **{name: getattr(opts, name) for name in ("endpoint_url", "lithops_config", "job_id",
                                                  "checkpoint_every", "profile_cache",
                                                  "wait_timeout_s", "run")})
    assert result.summary.restarts == 1
    assert_bitwise_equal(result.variables["params"], on_local[1])
    store = open_store(f"s3://{BUCKET}", s3)
    bill = json.loads(store.get("jobs/killed/" + lithops_job.BILL_FILE))
    assert bill["unreported"] >= 1  # the killed call's process died before Lithops' report


def test_too_few_localhost_workers_are_refused_before_anything_is_written(workdir, s3,
                                                                           tmp_path):
    config = tmp_path / "few.yaml"
    config.write_text(yaml.safe_dump(lithops_yaml(s3, 2)))
    opts = dataclasses.replace(options(workdir, s3, "too-few", "lithops"),
                               lithops_config=str(config))
    with pytest.raises(LithopsWorkersError, match="worker_processes is 2.*4 functions"):
        train(opts, show_progress=False)
    assert not open_store(f"s3://{BUCKET}", s3).list("jobs/too-few/")


def test_a_store_without_an_s3_api_is_refused_before_anything_is_written(workdir, s3,
                                                                          tmp_path):
    config = tmp_path / "gcp.yaml"
    config.write_text(yaml.safe_dump({
        "lithops": {"backend": "gcp_functions", "storage": "gcp_storage"},
        "gcp": {"region": "europe-west1", "credentials_path": str(tmp_path / "key.json")},
        "gcp_functions": {"runtime": "jaxpipe-runtime"},
        "gcp_storage": {"storage_bucket": "jaxpipe-jobs"}}))
    opts = dataclasses.replace(options(workdir, s3, "no-s3", "lithops"),
                               lithops_config=str(config), store=TrainOptions().store)
    with pytest.raises(LithopsStorageError, match="gcp_storage' has no S3 API"):
        train(opts, show_progress=False)


def test_calibration_runs_inside_a_lithops_call_of_each_memory_size(workdir, s3, tmp_path):
    from jaxpipe.cli import main

    out = tmp_path / "platform.json"
    assert main(["calibrate", "--platform", "lithops", "--lithops-config",
                 str(workdir / "lithops.yaml"), "--bucket", BUCKET, "--endpoint-url", s3,
                 "--memory", "1024", "--size-mb", "1", "--repeats", "2",
                 "--platform-file", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["calibration"]["1024"]["memory_mb"] == 1024
    assert written["platform"]["uplink_bytes_per_s"] > 0
    assert written["platform"]["request_latency_s"] > 0
