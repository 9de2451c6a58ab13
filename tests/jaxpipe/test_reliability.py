"""Faults on the local platform, with real rank processes: a rank that raises ends its attempt
within seconds with its own error, and every rank of a given-up attempt stops.

The autouse fixture of tests/jaxpipe/conftest.py fails any test here that leaves a rank
process running after it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from jaxpipe.errors import JobFailed, NonFiniteLossError
from jaxpipe.runtime.cancel import cancellation
from jaxpipe.runtime.driver import RunConfig, run_job
from jaxpipe.runtime.train import Prepared, TrainOptions, prepare
from planners import Plan, StagePlan

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


def test_a_diverging_loss_ends_the_job_with_an_error(workdir):
    job = prepare(options(workdir, "diverges", learning_rate=1e30))
    with pytest.raises(NonFiniteLossError, match="the loss of iteration [12] is (nan|inf)"):
        run_job(job.store, job.spec, config=RunConfig(log_dir=str(workdir / "logs"), link=False))
    marker = cancellation(job.store, job.spec.keys, 0)
    assert marker is not None and "NonFiniteLossError" in marker.reason
