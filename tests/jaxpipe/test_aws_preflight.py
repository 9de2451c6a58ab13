"""`jaxpipe train --platform aws-lambda` checks before any work (`platforms.aws_preflight`):
the rules as data (boto3's answers as dicts), `GetFunction` and `HeadBucket` over HTTP against
moto's server (a real S3/Lambda API endpoint on 127.0.0.1), the worker's refusal of a job
built by other package versions, and the whole check with botocore's Stubber, GetAccountSettings
included: a plan above the account's unreserved concurrency is refused with the numbers."""

from __future__ import annotations

import dataclasses
import json

import boto3
import pytest

from jaxpipe.deploy.errors import BucketRegionError, RegionError
from jaxpipe.errors import ConcurrencyError, FunctionsNotReadyError, VersionMismatchError
from jaxpipe.runtime.platforms import aws_preflight as pre
from jaxpipe.runtime.platforms.aws import lambda_client
from jaxpipe.runtime.train import TrainOptions
from jaxpipe.versions import Versions, check_versions, driver_versions
from planners import Plan, StagePlan, platforms
from tests.jaxpipe.aws_stubs import BUCKET, REGION, stubbed

DRIVER = driver_versions()
IMAGE = f"123456789012.dkr.ecr.eu-west-1.amazonaws.com/jaxpipe:0123456789ab-{DRIVER.tag_part()}"


def answer(memory_mb: int, state: str = "Active", update: str = "Successful",
           image: str = IMAGE, reason: str | None = None) -> dict:
    conf = {"FunctionName": f"jaxpipe-worker-{memory_mb}", "MemorySize": memory_mb,
            "State": state, "LastUpdateStatus": update}
    if reason:
        conf["StateReason"] = reason
    return {"Configuration": conf, "Code": {"ImageUri": image}}


def states(**given: dict | None) -> dict[int, pre.FunctionState | None]:
    return {int(m[1:]): (None if a is None else pre.FunctionState.from_answer(
        f"jaxpipe-worker-{m[1:]}", a)) for m, a in given.items()}


def plan(*sizes: int, replicas: int = 1) -> Plan:
    return Plan(tuple(StagePlan(i, i, m, replicas) for i, m in enumerate(sizes)), micro_batch=1,
                global_batch=replicas)


# -- the rules as data ---------------------------------------------------------------------------

@pytest.mark.parametrize("state, update, ready", [
    ("Active", "Successful", True), ("Active", None, True), ("Pending", None, False),
    ("Active", "InProgress", False), ("Active", "Failed", False), ("Failed", None, False),
    ("Inactive", "Successful", False)])
def test_a_function_is_ready_only_when_active_and_not_updating(state, update, ready):
    assert pre.FunctionState.from_answer("f", answer(1024, state, update)).ready is ready


def test_the_planner_sees_only_the_sizes_whose_functions_are_ready():
    lam = platforms.get("aws-lambda")
    found = states(m1024=answer(1024), m2048=answer(2048, "Pending"), m3008=None)
    restricted = pre.restrict_platform(lam, found)
    assert restricted.memory_options_mb == (1024,)
    assert restricted.name == lam.name and restricted.cpus(1024) == lam.cpus(1024)
    with pytest.raises(FunctionsNotReadyError) as err:
        pre.restrict_platform(lam, states(m2048=answer(2048, "Pending", reason="Creating")))
    message = str(err.value)
    assert "jaxpipe-worker-2048: State Pending" in message and "(Creating)" in message
    assert "jaxpipe deploy aws" in message


def test_a_plan_on_an_undeployed_or_updating_size_is_refused_before_any_launch():
    found = states(m1024=answer(1024), m2048=answer(2048, update="InProgress"), m3008=None)
    pre.check_plan_functions(plan(1024, 1024), found)
    with pytest.raises(FunctionsNotReadyError) as err:
        pre.check_plan_functions(plan(1024, 2048, 3008), found)
    message = str(err.value)
    assert "2048, 3008 MB" in message and "jaxpipe-worker-3008: does not exist" in message
    assert "LastUpdateStatus InProgress" in message and "--memory 1024,2048,3008" in message


def test_a_plan_above_the_unreserved_concurrency_is_refused_with_the_numbers():
    assert pre.unreserved_of({"AccountLimit": {"ConcurrentExecutions": 10,
                                               "UnreservedConcurrentExecutions": 7}}) == 7
    pre.check_concurrency(plan(1024, 1024, replicas=5), max_functions=32, unreserved=10)
    with pytest.raises(ConcurrencyError) as err:
        pre.check_concurrency(plan(1024, 1024, 1024, replicas=4), max_functions=4, unreserved=10)
    message = str(err.value)
    assert "runs 12 functions" in message and "unreserved concurrency is 10" in message
    assert "--max-functions 10" in message and "--quota-code L-B99A9384" in message
    with pytest.raises(ConcurrencyError, match="--max-functions 32 lets"):
        pre.check_concurrency(None, max_functions=32, unreserved=10)


def test_functions_whose_image_has_other_versions_are_refused():
    other = Versions("0.4.0", "0.4.0", DRIVER.flax, DRIVER.optax)
    old = IMAGE.replace(DRIVER.tag_part(), other.tag_part())
    pre.check_image_versions(states(m1024=answer(1024)), DRIVER)
    pre.check_image_versions(states(m1024=answer(1024, image="x/jaxpipe:mine")), DRIVER)
    with pytest.raises(VersionMismatchError) as err:
        pre.check_image_versions(states(m1024=answer(1024), m2048=answer(2048, image=old)),
                                 DRIVER)
    assert "jaxpipe-worker-2048" in str(err.value) and "jax0.4.0" in str(err.value)
    assert "Redeploy" in str(err.value)


def test_the_worker_refuses_a_job_of_other_versions():
    check_versions("j", DRIVER.to_dict())
    check_versions("j", None)  # a job written before versions were recorded
    newer = dict(DRIVER.to_dict(), jax="99.0")
    with pytest.raises(VersionMismatchError, match=r"jax 99.0 \(job\) vs .* redeploy"):
        check_versions("j", newer)


# -- the region ---------------------------------------------------------------------------------

def test_one_region_for_every_client_and_no_silent_default(tmp_path, monkeypatch):
    assert pre.train_region("eu-west-1", {"AWS_REGION": "us-east-1"}) == "eu-west-1"
    assert pre.train_region(None, {"AWS_REGION": "eu-north-1"}) == "eu-north-1"
    assert pre.train_region(None, {"AWS_DEFAULT_REGION": "ap-south-1"}) == "ap-south-1"
    config = tmp_path / "config"
    config.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    with pytest.raises(RegionError, match="--region"):
        pre.train_region(None, {"AWS_CONFIG_FILE": str(config)})
    with pytest.raises(RegionError, match="disagree"):
        pre.train_region(None, {"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-east-1"})
    assert lambda_client(region_name="eu-west-1").meta.region_name == "eu-west-1"


# -- over HTTP, against moto's server -------------------------------------------------------------

def test_get_function_and_head_bucket_over_http(s3_url):
    iam = boto3.client("iam", endpoint_url=s3_url, region_name="eu-west-1")
    role = iam.create_role(RoleName="preflight-worker",
                           AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17",
                                                                "Statement": []}))["Role"]["Arn"]
    lam = boto3.client("lambda", endpoint_url=s3_url, region_name="eu-west-1")
    lam.create_function(FunctionName="jaxpipe-worker-1024", PackageType="Image",
                        Code={"ImageUri": IMAGE}, Role=role, MemorySize=1024, Timeout=900)
    found = pre.read_functions(lam, [1024, 2048])
    assert found[2048] is None
    first = found[1024]
    assert first is not None and first.ready and first.memory_mb == 1024
    assert first.versions == DRIVER
    pre.check_image_versions(found, DRIVER)
    with pytest.raises(FunctionsNotReadyError, match="jaxpipe-worker-2048: does not exist"):
        pre.check_plan_functions(plan(1024, 2048), found)

    s3 = boto3.client("s3", endpoint_url=s3_url, region_name="eu-west-1")
    s3.create_bucket(Bucket="preflight-bucket",
                     CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    pre.check_bucket_region(s3, "preflight-bucket", "eu-west-1")
    with pytest.raises(BucketRegionError, match="is in eu-west-1, but the functions are in "
                                                "us-east-1"):
        pre.check_bucket_region(s3, "preflight-bucket", "us-east-1")


# -- GetAccountSettings through the whole check, with botocore's Stubber --------------------------

def account(unreserved: int, total: int = 10) -> dict:
    """A `GetAccountSettings` answer of an account with `unreserved` free executions."""
    return {"AccountLimit": {"ConcurrentExecutions": total,
                             "UnreservedConcurrentExecutions": unreserved}}


def stubbed_account(unreserved: int, sizes: tuple[int, ...] = (1024, 2048)):
    """Stubbed S3 and Lambda clients answering every request `check_train` sends, in order:
    HeadBucket, GetFunction of each size (all ready, the driver's image), GetAccountSettings."""
    s3, s3_stub = stubbed("s3", REGION)
    s3_stub.add_response("head_bucket", {"BucketRegion": REGION}, {"Bucket": BUCKET})
    lam, lam_stub = stubbed("lambda", REGION)
    for m in sizes:
        lam_stub.add_response("get_function", answer(m), {"FunctionName": f"jaxpipe-worker-{m}"})
    lam_stub.add_response("get_account_settings", account(unreserved), {})
    return s3, s3_stub, lam, lam_stub


def train_options(max_functions: int = 4) -> TrainOptions:
    return TrainOptions(platform="aws-lambda", store=f"s3://{BUCKET}", region=REGION,
                        max_functions=max_functions)


SMALL_AWS = dataclasses.replace(platforms.get("aws-lambda"), memory_options_mb=(1024, 2048))


def test_train_refuses_a_plan_above_the_accounts_unreserved_concurrency():
    s3, s3_stub, lam, lam_stub = stubbed_account(unreserved=10)
    twelve = plan(1024, 2048, 1024, replicas=4)  # 3 stages x 4 replicas: 12 at once
    with s3_stub, lam_stub, pytest.raises(ConcurrencyError) as err:
        pre.check_train(train_options(), SMALL_AWS, twelve, lam=lam, s3=s3, environ={})
    lam_stub.assert_no_pending_responses()  # GetAccountSettings was read, after the functions
    message = str(err.value)
    assert "the plan runs 12 functions at once" in message
    assert "this account's unreserved concurrency is 10" in message
    assert "--max-functions 10 or fewer" in message
    assert ("aws service-quotas request-service-quota-increase --service-code lambda "
            f"--quota-code {pre.CONCURRENCY_QUOTA_CODE} --desired-value 100") in message


def test_train_refuses_max_functions_above_the_unreserved_concurrency_before_planning():
    s3, s3_stub, lam, lam_stub = stubbed_account(unreserved=7)
    with s3_stub, lam_stub, pytest.raises(ConcurrencyError) as err:
        pre.check_train(train_options(max_functions=8), SMALL_AWS, None, lam=lam, s3=s3,
                        environ={})
    lam_stub.assert_no_pending_responses()
    assert "--max-functions 8 lets the plan run that many functions at once" in str(err.value)
    assert "unreserved concurrency is 7: plan with --max-functions 7" in str(err.value)


def test_train_accepts_a_plan_within_the_unreserved_concurrency():
    s3, s3_stub, lam, lam_stub = stubbed_account(unreserved=10)
    ten = plan(1024, 2048, replicas=5)
    with s3_stub, lam_stub:
        checked = pre.check_train(train_options(), SMALL_AWS, ten, lam=lam, s3=s3, environ={})
    s3_stub.assert_no_pending_responses()
    lam_stub.assert_no_pending_responses()
    assert checked.memory_options_mb == (1024, 2048)
    lam, stub = stubbed("lambda", REGION)
    stub.add_response("get_account_settings", account(unreserved=3, total=1000), {})
    with stub:
        assert pre.read_unreserved(lam) == 3  # the unreserved part, not the account's total
