"""Faults on the local platform, with real rank processes: a rank that raises ends its attempt
within seconds with its own error, and every rank of a given-up attempt stops.

The autouse fixture of tests/jaxpipe/conftest.py fails any test here that leaves a rank
process running after it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jaxpipe.errors import JobFailed, JobFinishedError, JobRunningError, NonFiniteLossError
from jaxpipe.runtime import lease as lease_module
from jaxpipe.runtime.arrays import decode_named
from jaxpipe.runtime.cancel import cancellation
from jaxpipe.runtime.driver import RunConfig, run_job
from jaxpipe.runtime.event import Fault
from jaxpipe.runtime.job import Keys
from jaxpipe.runtime.lease import DriverLease, LeaseRecord
from jaxpipe.runtime.metrics import LossRecord
from jaxpipe.runtime.summary import Summary
from jaxpipe.runtime.train import Prepared, TrainOptions, open_store, prepare, train
from planners import Plan, StagePlan
from transports import ObjectStore, RetryPolicy, TransientStoreError

BATCH, ITERATIONS = 16, 3
# Two stages: stage 1 waits for stage 0's activations, which never come if stage 0 fails.
PLAN = Plan(stages=(StagePlan(0, 1, 1024), StagePlan(2, 3, 1024)), micro_batch=4,
            global_batch=BATCH)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("reliability")
    (folder / "plan.json").write_text(json.dumps(PLAN.to_dict()))
    return folder


def options(workdir: Path, job: str, **changes: Any) -> TrainOptions:
    base = TrainOptions(model="mlp", plan_file=str(workdir / "plan.json"), batch=BATCH,
                        iterations=ITERATIONS, optimizer="momentum", learning_rate=0.05,
                        store=str(workdir / "store"), job_id=job, checkpoint_every=1,
                        profile_cache=str(workdir / "profiles"), wait_timeout_s=60,
                        run=RunConfig(log_dir=str(workdir / "logs"), link=False))
    return dataclasses.replace(base, **changes)


def test_a_rank_that_raises_ends_its_attempt_with_its_own_error(workdir):
    job: Prepared = prepare(options(workdir, "corrupt-shard"))
    job.store.put(job.spec.keys.shard(0), b"not a shard")  # stage 0 reads it in iteration 0
    with pytest.raises(JobFailed) as failed:
        run_job(job.store, job.spec, config=RunConfig(log_dir=str(workdir / "logs"), link=False))
    text = str(failed.value)
    # rank 0's own error, not its peer's 60 s wait for activations that never came
    assert "rank 0 (stage 0) failed in attempt 1" in text
    assert "CodecError" in text and "GetTimeout" not in text
    assert "ran out of memory" not in text
    # the same error twice in a row: no third attempt; each was cancelled by rank 0 itself
    for attempt in (0, 1):
        marker = cancellation(job.store, job.spec.keys, attempt)
        assert marker is not None and marker.by == "rank 0" and marker.rank == 0
    assert cancellation(job.store, job.spec.keys, 2) is None
    # the given-up attempts leave no messages or claims (their statuses say why)
    assert not job.store.list(job.spec.keys.prefix + "run/")
    statuses = job.store.list(job.spec.keys.prefix + "status/")
    assert statuses and not [k for k in statuses if k.endswith(".claim")]


def test_a_truncated_bundle_fails_the_job_naming_it_and_the_fix(workdir):
    job = prepare(options(workdir, "cut-bundle"))
    whole = job.store.get(job.spec.keys.bundle)
    job.store.put(job.spec.keys.bundle, whole[:len(whole) // 3])  # an upload cut short
    with pytest.raises(JobFailed) as failed:
        run_job(job.store, job.spec, config=RunConfig(log_dir=str(workdir / "logs"), link=False))
    text = str(failed.value)
    where = workdir / "store" / "jobs" / "cut-bundle" / "bundle.zip"
    assert (f"its error: jaxpipe.errors.CorruptBundleError: re-run the job: the bundle at "
            f"{where} ({len(whole) // 3} bytes) does not read as a stage bundle") in text, text
    assert "ran out of memory" not in text  # not a memory failure: no memory hint
    assert cancellation(job.store, job.spec.keys, 2) is None  # the same error twice: given up


def test_an_out_of_memory_stage_ends_its_attempt_with_a_memory_message(workdir):
    # The case: stage 1 capped at the smallest memory option, 512 MB (RLIMIT_DATA on
    # the local platform; a JAX process takes about 350 MB of it) with micro-batches of 65536
    # (64 MB per activation) dies allocating while stage 0 waits for its gradients. Stage 0's
    # wait is 120 s, the default: the job must end on rank 1's status, never on that wait.
    # (At 32768, 32 MB per activation, the stage died only sometimes once each receive was
    # dropped as soon as it was consumed.)
    micro = 65536
    plan = Plan(stages=(StagePlan(0, 1, 1024), StagePlan(2, 3, 512)), micro_batch=micro,
                global_batch=micro)
    job = prepare(options(workdir, "out-of-memory", plan=plan, batch=micro, iterations=1,
                          wait_timeout_s=120))
    with pytest.raises(JobFailed) as failed:
        run_job(job.store, job.spec, config=RunConfig(log_dir=str(workdir / "logs"), link=False))
    text = str(failed.value)
    # It dies a JAX RESOURCE_EXHAUSTED or, allocating outside XLA, a std::bad_alloc abort
    # (exit code -6, no status): which one varies, and so does the number of attempts.
    assert re.match(r"rank 1 \(stage 1\) failed in attempt \d+ \(FAILED\)", text), text
    assert any(m in text for m in ("RESOURCE_EXHAUSTED", "MemoryError", "bad_alloc",
                                   "exit code -6")), text
    assert "give its stage more memory in the plan or use smaller micro-batches" in text
    assert "GetTimeout" not in text and "rank 0" not in text
    # every attempt was ended by rank 1's death (its own marker or the driver's), never by rank
    # 0's wait for gradients that never came
    attempts = int(re.findall(r"failed in attempt (\d+)", text)[0])
    for attempt in range(attempts + 1):
        marker = cancellation(job.store, job.spec.keys, attempt)
        assert marker is not None, attempt
        assert (marker.by, marker.rank) == ("rank 1", 1) or (
            marker.by == "driver" and marker.reason.startswith("rank 1 ended FAILED")), marker
    assert cancellation(job.store, job.spec.keys, attempts + 1) is None


def test_a_diverging_loss_ends_the_job_with_an_error(workdir):
    job = prepare(options(workdir, "diverges", learning_rate=1e30))
    with pytest.raises(NonFiniteLossError, match="the loss of iteration [12] is (nan|inf)"):
        run_job(job.store, job.spec, config=RunConfig(log_dir=str(workdir / "logs"), link=False))
    marker = cancellation(job.store, job.spec.keys, 0)
    assert marker is not None and "NonFiniteLossError" in marker.reason


# -- resume always works -------------------------------------------------------------------------

CRASHING_DRIVER = """
import os, signal, sys
from pathlib import Path
from tests.jaxpipe.test_reliability import options
from jaxpipe.runtime.driver import run_job
from jaxpipe.runtime.job import Keys
from jaxpipe.runtime.lease import DriverLease
from jaxpipe.runtime.train import prepare

workdir, job = Path(sys.argv[1]), sys.argv[2]
opts = options(workdir, job)
job_prepared = prepare(opts)
DriverLease.acquire(job_prepared.store, Keys(job))

def crash(t, progress):
    if t == 0:  # the machine dies: the driver and every rank at once, mid-run (or, if the
        # ranks ran ahead to the end, before the summary: the resume must finish it either way)
        os.killpg(0, signal.SIGKILL)

run_job(job_prepared.store, job_prepared.spec, config=opts.run, on_iteration=crash)
"""


def final_params(store, job: str, t: int = ITERATIONS) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for k in range(len(PLAN.stages)):
        key = f"jobs/{job}/ckpt/{t:08d}/stage{k}/params"
        params.update(decode_named(store.get(key), key))
    return params


def assert_bitwise(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert sorted(a) == sorted(b)
    for path in a:
        np.testing.assert_array_equal(a[path], b[path], err_msg=path)


@pytest.fixture(scope="module")
def fault_free(workdir) -> tuple[Summary, dict[str, Any]]:
    summary = train(options(workdir, "fault-free"), show_progress=False)
    return summary, final_params(open_store(str(workdir / "store")), "fault-free")


def test_a_crash_of_the_driver_and_every_rank_resumes_to_the_same_parameters(workdir, fault_free):
    crashed = subprocess.run([sys.executable, "-c", CRASHING_DRIVER, str(workdir), "crash"],
                             cwd=Path(__file__).parents[2], start_new_session=True,
                             capture_output=True, text=True, timeout=600)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    store = open_store(str(workdir / "store"))
    keys = Keys("crash")
    assert store.exists(keys.driver)  # the dead driver's lease, its claims and messages
    assert any(k.endswith(".claim") for k in store.list(keys.prefix + "status/0/"))
    # a stale record of the crashed attempt for an iteration it never finished
    store.put(keys.loss(ITERATIONS - 1, 1, 0), LossRecord.of({0: 99.0}).to_json())
    summary = train(options(workdir, "crash"), resume="crash", show_progress=False)
    assert_bitwise(final_params(store, "crash"), fault_free[1])
    assert summary.losses == fault_free[0].losses  # every iteration's, none of them 99.0
    assert not store.exists(keys.driver) and not store.list(keys.prefix + "run/")

    before = store.get(keys.summary)
    with pytest.raises(JobFinishedError, match=f"job crash already finished its {ITERATIONS} "
                                               "iterations .*pass --iterations N"):
        train(options(workdir, "crash"), resume="crash", show_progress=False)
    assert store.get(keys.summary) == before


def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(workdir, fault_free, capfd):
    store = open_store(str(workdir / "store"))
    job = "fallback"
    killed = options(workdir, job, run=RunConfig(log_dir=str(workdir / "logs"), link=False,
                                                 max_restarts=0, faults=(Fault(1, 2),)))
    with pytest.raises(JobFailed):  # rank 1 dies in iteration 2; checkpoint 2 is the latest
        train(killed, show_progress=False)
    latest = f"jobs/{job}/ckpt/{2:08d}/stage1/params"
    store.put(latest, store.get(latest)[:100])  # truncated
    summary = train(options(workdir, job), resume=job, show_progress=False)
    assert "checkpoint 2 skipped, it is corrupt: stage 1 params: object " \
        f"'{latest}' is truncated" in capfd.readouterr().err
    assert summary.restarts == 1
    assert_bitwise(final_params(store, job), fault_free[1])
    assert summary.losses == fault_free[0].losses
    with pytest.raises(JobFinishedError, match="cannot run further"):  # programs cleaned up
        train(options(workdir, job), resume=job, show_progress=False, extend_to=ITERATIONS + 1)


def test_a_second_start_of_a_running_job_id_is_refused(workdir):
    store = open_store(str(workdir / "store"))
    lease = DriverLease.acquire(store, Keys("busy"))
    try:
        with pytest.raises(JobRunningError, match=f"job busy is held by another driver "
                                                  f"\\(pid {os.getpid()} on host"):
            train(options(workdir, "busy"), show_progress=False)
    finally:
        lease.release()
    assert not store.list("jobs/busy/")


# -- the driver survives its own faults ----------------------------------------------------------

class OutageStore(ObjectStore):
    """A store whose every request fails transiently while an outage lasts (`begin(s)`)."""

    def __init__(self, store: ObjectStore) -> None:
        super().__init__(poll=store.poll, retry=RetryPolicy(max_attempts=2, initial_s=0.01,
                                                            max_s=0.01))
        self.store, self.until, self.failed = store, 0.0, 0

    def begin(self, seconds: float) -> None:
        self.until = time.monotonic() + seconds

    def _call(self, attempt):  # type: ignore[override]
        if time.monotonic() < self.until:
            self.failed += 1
            time.sleep(0.01)
            raise TransientStoreError("outage")
        return super()._call(attempt)

    def _put(self, key, data):
        self.store.put(key, data)

    def _put_if_absent(self, key, data):
        return self.store.put_if_absent(key, data)

    def _get(self, key):
        return self.store.get(key)

    def _exists(self, key):
        return self.store.exists(key)

    def _delete(self, key):
        self.store.delete(key)

    def _list(self, prefix):
        return self.store.list(prefix), 1

    def _spec(self):
        return self.store._spec()  # the ranks reach the store itself


def test_the_driver_rides_a_store_outage(workdir, fault_free):
    job = prepare(options(workdir, "outage"))
    store = OutageStore(job.store)

    def outage(t: int, progress) -> None:
        if t == ITERATIONS - 1:  # the window's end: statuses and metrics are read in it
            store.begin(6.0)

    run_job(store, job.spec, config=RunConfig(log_dir=str(workdir / "logs"), link=False),
            on_iteration=outage)
    assert store.failed > 0
    assert_bitwise(final_params(job.store, "outage"), fault_free[1])


def driver_command(workdir: Path, job: str, iterations: int) -> list[str]:
    return [sys.executable, "-m", "jaxpipe.cli", "train", "--model", "mlp", "--plan",
            str(workdir / "plan.json"), "--batch", str(BATCH), "--iterations", str(iterations),
            "--optimizer", "momentum", "--lr", "0.05", "--store", str(workdir / "store"),
            "--job-id", job, "--checkpoint-every", "1", "--profile-cache",
            str(workdir / "profiles"), "--no-link"]


def group_members(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(entry))
    return out


def started_driver(workdir: Path, job: str, iterations: int) -> subprocess.Popen:
    """A `jaxpipe train` driver in a process group of its own, once its checkpoint 1 is done."""
    driver = subprocess.Popen(driver_command(workdir, job, iterations),
                              cwd=Path(__file__).parents[2], start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = open_store(str(workdir / "store"))
    done = [Keys(job).checkpoint(1, k, "done") for k in range(len(PLAN.stages))]
    deadline = time.monotonic() + 600
    while not all(store.exists(k) for k in done) and driver.poll() is None:
        assert time.monotonic() < deadline, "the driver never reached checkpoint 1"
        time.sleep(0.2)
    return driver


def wait_empty(pgid: int) -> list[int]:
    deadline = time.monotonic() + 30
    while (left := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_sigterm_of_the_driver_cancels_the_attempt_and_leaves_the_job_resumable(workdir):
    driver = started_driver(workdir, "sigterm", 60)
    assert driver.poll() is None, "the job ended before it could be stopped"
    driver.send_signal(signal.SIGTERM)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 1, err[-3000:]
    assert "jaxpipe: DriverStopped: the driver was stopped (SIGTERM received)" in err
    assert "is resumable: jaxpipe train --resume sigterm" in err
    assert wait_empty(driver.pid) == []  # no rank outlived it
    store = open_store(str(workdir / "store"))
    marker = cancellation(store, Keys("sigterm"), 0)
    assert marker is not None and marker.by == "driver" and "SIGTERM" in marker.reason
    assert not store.exists(Keys("sigterm").driver)  # the lease was released
    summary = train(options(workdir, "sigterm", iterations=60), resume="sigterm",
                    show_progress=False)
    assert len(summary.losses) == 60 and all(np.isfinite(summary.losses))


def test_ranks_die_with_a_killed_driver(workdir):
    driver = started_driver(workdir, "sigkill", 60)
    assert driver.poll() is None, "the job ended before it could be killed"
    driver.kill()
    driver.communicate(timeout=60)
    assert wait_empty(driver.pid) == []


def test_a_job_whose_setup_failed_leaves_nothing_and_a_made_one_is_kept(tmp_path):
    store = open_store(str(tmp_path))
    half, made = Keys("half"), Keys("made")
    for keys in (half, made):
        lease = DriverLease.acquire(store, keys)
        store.put(keys.bundle, b"zip")  # uploaded before the failure
        if keys is made:
            store.put(keys.spec, b"{}")  # job.json goes last: the job exists
        lease.release()
    assert store.list("jobs/") == [made.bundle, made.spec]


def test_of_two_drivers_finding_one_dead_lease_at_once_one_takes_it_over(tmp_path, monkeypatch):
    store, keys = open_store(str(tmp_path)), Keys("orphan")
    dead = LeaseRecord("dead", socket.gethostname(), 2**22 + 12345, 0.0)  # no such pid runs
    store.put(keys.driver, dead.to_json())
    # Both drivers have read the dead record and judged it gone before either writes: the race
    # two `jaxpipe train --resume` started together on one host run into.
    both_judged = threading.Barrier(2, timeout=30)
    monkeypatch.setattr(lease_module, "_gone", lambda *_: both_judged.wait() >= 0)
    held, refused = [], []

    def resume() -> None:
        try:
            held.append(DriverLease.acquire(store, keys))
        except JobRunningError as err:
            refused.append(str(err))

    threads = [threading.Thread(target=resume) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(held) == 1 and len(refused) == 1, (held, refused)
    assert "another driver is taking over its dead driver's lease" in refused[0]
    assert LeaseRecord.from_json(store.get(keys.driver)).token == held[0].record.token
    held[0].release()
    assert store.list("jobs/orphan/") == []  # lease and takeover claim gone (no job.json)
