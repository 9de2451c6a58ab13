"""A job as data: the JobSpec survives JSON, and every key of a job lives under jobs/<id>/."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from jaxpipe.runtime.job import JobSpec, Keys
from planners import Plan, Platform, StagePlan, platforms

PLAN = Plan(stages=(StagePlan(0, 1, 1024, 2), StagePlan(2, 4, 2048, 1, "recompute")),
            micro_batch=2, global_batch=8)


def job_spec(job_id: str = "job-1", plan: Plan = PLAN, platform: Platform | None = None,
             **fields: Any) -> JobSpec:
    """A JobSpec for tests; the one place to adapt when JobSpec's fields change.

    `plan` and `platform` are passed as `planners` objects when JobSpec types them so, and as
    their `to_dict()` otherwise (JobSpec is moving from the dicts to the typed values).
    """
    platform = platform or platforms.get("local")
    types = {f.name: str(f.type) for f in dataclasses.fields(JobSpec)}

    def typed(name: str, value: Any) -> Any:
        return value.to_dict() if types[name].startswith("dict") else value

    defaults: dict[str, Any] = {"model": "test", "iterations": 3}
    return JobSpec(job_id=job_id, plan=typed("plan", plan),
                   platform=typed("platform", platform), **{**defaults, **fields})


def plan_of(spec: JobSpec) -> Plan:
    """The spec's plan as a `planners.Plan`, whichever way JobSpec holds it."""
    return spec.plan if isinstance(spec.plan, Plan) else Plan.from_dict(spec.plan)


def every_key(keys: Keys) -> dict[str, str]:
    """One key (or prefix) of each kind the layout has, by a readable name."""
    return {
        "spec": keys.spec,
        "bundle": keys.bundle,
        "shard": keys.shard(3),
        "checkpoint": keys.checkpoint(5, 1, "params"),
        "checkpoints": keys.checkpoints(),
        "run": keys.run(2),
        "message": keys.message(2, 7, "act", 1, 3),
        "sync_group": keys.sync_group(2, 7, 1),
        "loss": keys.loss(7, 4, 1),
        "metrics": keys.metrics(4, 2, 1),
        "status": keys.status(2, 1, 4),
    }


def test_every_key_has_the_documented_layout():
    assert every_key(Keys("j")) == {
        "spec": "jobs/j/job.json",
        "bundle": "jobs/j/bundle.zip",
        "shard": "jobs/j/data/000003",
        "checkpoint": "jobs/j/ckpt/00000005/stage1/params",
        "checkpoints": "jobs/j/ckpt/",
        "run": "jobs/j/run/2/",
        "message": "jobs/j/run/2/it/7/act/1/3",
        "sync_group": "jobs/j/run/2/it/7/sync/1",
        "loss": "jobs/j/metrics/loss/00000007/1/rank4",
        "metrics": "jobs/j/metrics/rank4/2-1.json",
        "status": "jobs/j/status/2/1/rank4",
    }


@pytest.mark.parametrize("job_id", ["j", "mlp-20240101-abc", "a.b_c"])
def test_every_key_lives_under_the_job_prefix(job_id):
    keys = Keys(job_id)
    assert keys.prefix == f"jobs/{job_id}/"
    for name, key in every_key(keys).items():
        assert key.startswith(f"jobs/{job_id}/"), name
        assert "//" not in key, name


def test_a_job_whose_id_extends_another_shares_no_key_with_it():
    # "jobs/a" is a string prefix of "jobs/ab/..."; the trailing slash keeps the jobs apart
    a, ab = Keys("a"), Keys("ab")
    for key in every_key(ab).values():
        assert not key.startswith(a.prefix)
    for key in every_key(a).values():
        assert not key.startswith(ab.prefix)


def test_a_run_of_one_attempt_is_no_prefix_of_another():
    keys = Keys("j")
    assert not keys.run(10).startswith(keys.run(1))
    assert keys.message(10, 0, "act", 0, 0).startswith(keys.run(10))
    assert not keys.message(10, 0, "act", 0, 0).startswith(keys.run(1))
    assert keys.sync_group(3, 0, 1).startswith(keys.run(3))


def test_sync_groups_are_prefixes_without_a_trailing_slash_and_apart_per_stage():
    keys = Keys("j")
    group = keys.sync_group(0, 4, 1)
    assert not group.endswith("/")  # transports.allreduce_mean refuses a trailing slash
    assert not (keys.sync_group(0, 4, 10) + "/").startswith(group + "/")
    assert not (keys.sync_group(0, 40, 1) + "/").startswith(group + "/")


def test_messages_of_different_iterations_stages_and_micro_batches_are_distinct():
    keys = Keys("j")
    messages = {keys.message(0, t, kind, s, m)
                for t in (1, 11) for kind in ("act", "grad") for s in (1, 11) for m in (1, 11)}
    assert len(messages) == 16


def test_checkpoint_and_loss_keys_sort_in_iteration_order():
    keys = Keys("j")
    ts = [0, 9, 10, 99, 100, 12345]
    assert sorted(keys.checkpoint(t, 0, "done") for t in ts) == [
        keys.checkpoint(t, 0, "done") for t in ts]
    assert sorted(keys.loss(t, 0, 0) for t in ts) == [keys.loss(t, 0, 0) for t in ts]
    assert sorted(keys.shard(i) for i in ts) == [keys.shard(i) for i in ts]


def test_every_checkpoint_part_of_every_stage_has_its_own_key():
    keys = Keys("j")
    parts = ("params", "opt", "state", "done")
    all_keys = {keys.checkpoint(t, k, p) for t in (1, 10) for k in (1, 10) for p in parts}
    assert len(all_keys) == 16
    assert all(key.startswith(keys.checkpoints()) for key in all_keys)


def test_the_spec_carries_its_keys():
    assert job_spec("abc").keys == Keys("abc")


def test_the_spec_survives_json():
    spec = job_spec("json-job", optimizer="momentum", learning_rate=0.05, seed=7,
                    num_samples=1797, shard_size=100, rng_names=("dropout", "noise"),
                    checkpoint_every=4, wait_timeout_s=30.0, allreduce="lambdaml",
                    meta={"model_overrides": {"width": 8}})
    back = JobSpec.from_json(spec.to_json())
    assert back == spec
    assert back.rng_names == ("dropout", "noise")
    assert back.meta == {"model_overrides": {"width": 8}}  # meta is left out of ==
    assert plan_of(back) == PLAN
    assert plan_of(back).cuts == (2,)


def test_the_spec_json_is_plain_json_with_the_plan():
    import json

    body = json.loads(job_spec("j").to_json())
    assert body["job_id"] == "j"
    assert Plan.from_dict(body["plan"]) == PLAN
    assert Platform.from_dict(body["platform"]) == platforms.get("local")


def test_the_spec_is_frozen():
    spec = job_spec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.iterations = 10  # type: ignore[misc]
