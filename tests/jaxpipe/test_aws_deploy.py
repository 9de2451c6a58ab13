"""`jaxpipe deploy aws`, calibration and profiling on functions: every Lambda, IAM, ECR, Logs and
STS call checked request by request with botocore's Stubber (against the API's shapes), S3
calls against moto's server, and the calibration / profiling handlers run in-process against
that server. Waits are recorded through an injected `sleep`, never timed.
"""

from __future__ import annotations

import argparse
import json
import re

import boto3
import pytest
from botocore.stub import ANY, Stubber

from jaxpipe.deploy import aws, functions, image, policies, probe
from jaxpipe.deploy.cli import _cloud_setup, deploy_aws, run_aws
from jaxpipe.deploy.errors import (
    BucketRegionError,
    MemoryQuotaError,
    ProbeFailed,
    RegionError,
    RolePropagationError,
)
from jaxpipe.deploy.region import Region, resolve_region
from jaxpipe.errors import LaunchError
from jaxpipe.runtime import worker
from jaxpipe.runtime.platforms import aws_tasks
from planners import platforms
from tests.jaxpipe.aws_stubs import (
    ACCOUNT,
    BUCKET,
    REGION,
    ROLE,
    FakeSession,
    deploy_args,
    expect_fresh_account,
    expect_image_missing,
    expect_log_group_unchanged,
    expect_new_function,
    expect_new_log_group,
    expect_new_repository,
    expect_probe,
    expect_repository_unchanged,
    expect_second_run,
    function_state,
    payload,
    stubbed,
    worker_env,
)
from transports import S3Store

IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/jaxpipe:abc123"
SIZES = (1024, 2048)
VERSIONS = image.Versions("0.10.2", "0.10.2", "0.12.8", "0.2.8")
ROLE_NOT_ASSUMABLE = "The role defined for the function cannot be assumed by Lambda."
MEMORY_REFUSAL = ("'MemorySize' value failed to satisfy constraint: Member must have value "
                  "less than or equal to 3008")


def config(sizes=SIZES) -> functions.FunctionConfig:
    return functions.FunctionConfig(image_uri=IMAGE, role_arn=ROLE, memory_sizes=sizes,
                                    platform=platforms.get("aws-lambda"))


def name(memory_mb: int) -> str:
    return f"jaxpipe-worker-{memory_mb}"


# -- functions ---------------------------------------------------------------------------------

def test_first_deploy_creates_one_function_per_memory_size_with_retries_off_and_log_retention():
    lam, stub = stubbed("lambda")
    logs, logs_stub = stubbed("logs")
    for m in SIZES:
        expect_new_function(stub, name(m), m, IMAGE, worker_env(m))
        expect_new_log_group(logs_stub, name(m))
    with stub, logs_stub:
        outcome = functions.deploy_functions(lam, config(), logs, sleep=pytest.fail)
    stub.assert_no_pending_responses()
    logs_stub.assert_no_pending_responses()
    assert [c.action for c in outcome.changes] == ["created"] * 6
    assert outcome.deployed == SIZES and outcome.skipped == () and outcome.skipped_message() == ""


def test_below_one_and_a_half_vcpus_xla_gets_no_eigen_pool_and_only_real_xla_flags():
    # 2048 MB = 1.16 vCPUs: no Eigen thread pool; 3072 MB (1.74) keeps it. The flags hold only
    # `--xla_` flags: `intra_op_parallelism_threads=1` is no XLA flag and was silently ignored.
    flags = config().environment(2048)["XLA_FLAGS"].split()
    assert flags == ["--xla_cpu_multi_thread_eigen=false"]
    assert "XLA_FLAGS" not in config().environment(3072)


def test_a_second_deploy_reads_everything_and_changes_nothing():
    lam, stub = stubbed("lambda")
    logs, logs_stub = stubbed("logs")
    for m in SIZES:
        stub.add_response("get_function", function_state(name(m), m, IMAGE, worker_env(m)),
                          {"FunctionName": name(m)})
        stub.add_response("get_function_event_invoke_config",
                          {"MaximumRetryAttempts": 0, "MaximumEventAgeInSeconds": 900},
                          {"FunctionName": name(m)})
        expect_log_group_unchanged(logs_stub, name(m))
    with stub, logs_stub:  # any create/update/put call would be unstubbed and fail
        outcome = functions.deploy_functions(lam, config(), logs)
    stub.assert_no_pending_responses()
    logs_stub.assert_no_pending_responses()
    assert {c.action for c in outcome.changes} == {"unchanged"}


def test_a_changed_image_or_timeout_is_updated_and_nothing_else():
    lam, stub = stubbed("lambda")
    old = function_state(name(1024), 1024, IMAGE.replace("abc123", "old"), worker_env(1024))
    old["Configuration"]["Timeout"] = 60
    new = function_state(name(1024), 1024, IMAGE, worker_env(1024))
    stub.add_response("get_function", old, {"FunctionName": name(1024)})
    stub.add_response("update_function_code", {}, {"FunctionName": name(1024),
                                                   "ImageUri": IMAGE})
    stub.add_response("get_function", new, {"FunctionName": name(1024)})
    stub.add_response("update_function_configuration", {},
                      {"FunctionName": name(1024), "Timeout": 900})
    stub.add_response("get_function", new, {"FunctionName": name(1024)})
    stub.add_response("get_function_event_invoke_config",
                      {"MaximumRetryAttempts": 2, "MaximumEventAgeInSeconds": 21600},
                      {"FunctionName": name(1024)})
    stub.add_response("put_function_event_invoke_config", {}, {
        "FunctionName": name(1024), "MaximumRetryAttempts": 0, "MaximumEventAgeInSeconds": 900})
    with stub:
        outcome = functions.deploy_functions(lam, config((1024,)))
    stub.assert_no_pending_responses()
    assert [(c.action, c.detail.split(",")[0]) for c in outcome.changes] == [
        ("updated", "image"), ("updated", "retries 0")]


def test_a_new_role_is_retried_until_lambda_can_assume_it():
    lam, stub = stubbed("lambda")
    stub.add_client_error("get_function", "ResourceNotFoundException", http_status_code=404)
    for _ in range(2):  # IAM has not propagated the new role to Lambda yet
        stub.add_client_error("create_function", "InvalidParameterValueException",
                              ROLE_NOT_ASSUMABLE, http_status_code=400)
    stub.add_response("create_function", {}, {"FunctionName": name(1024), "Role": ROLE,
                      "PackageType": "Image", "Code": {"ImageUri": IMAGE}, "Architectures": ANY,
                      "Description": ANY, "MemorySize": 1024, "Timeout": 900,
                      "EphemeralStorage": ANY, "Environment": ANY})
    stub.add_response("get_function", function_state(name(1024), 1024, IMAGE, worker_env(1024)))
    stub.add_response("get_function_event_invoke_config", {"MaximumRetryAttempts": 0,
                      "MaximumEventAgeInSeconds": 900})
    slept = []
    with stub:
        outcome = functions.deploy_functions(lam, config((1024,)), sleep=slept.append)
    stub.assert_no_pending_responses()
    assert slept == list(functions.ROLE_PROPAGATION_DELAYS_S[:2])
    assert outcome.changes[0].action == "created"
    assert "after 2 retries for IAM to propagate the role" in outcome.changes[0].detail


def test_only_the_role_propagation_error_is_retried():
    lam, stub = stubbed("lambda")
    stub.add_client_error("get_function", "ResourceNotFoundException", http_status_code=404)
    stub.add_client_error("create_function", "InvalidParameterValueException",
                          "Source image ... does not exist.", http_status_code=400)
    slept = []
    with stub, pytest.raises(lam.exceptions.InvalidParameterValueException, match="Source"):
        functions.deploy_functions(lam, config((1024,)), sleep=slept.append)
    assert slept == []


def test_role_propagation_gives_up_after_a_bounded_wait():
    lam, stub = stubbed("lambda")
    stub.add_client_error("get_function", "ResourceNotFoundException", http_status_code=404)
    for _ in range(len(functions.ROLE_PROPAGATION_DELAYS_S) + 1):
        stub.add_client_error("create_function", "InvalidParameterValueException",
                              ROLE_NOT_ASSUMABLE, http_status_code=400)
    slept = []
    with stub, pytest.raises(RolePropagationError, match="run deploy again in a minute"):
        functions.deploy_functions(lam, config((1024,)), sleep=slept.append)
    stub.assert_no_pending_responses()
    assert slept == list(functions.ROLE_PROPAGATION_DELAYS_S) and sum(slept) < 120


def test_sizes_above_the_accounts_memory_limit_are_skipped_and_named():
    lam, stub = stubbed("lambda")
    for m in (1024, 2048):
        expect_new_function(stub, name(m), m, IMAGE, worker_env(m))
    stub.add_client_error("get_function", "ResourceNotFoundException", http_status_code=404)
    stub.add_client_error("create_function", "InvalidParameterValueException", MEMORY_REFUSAL,
                          http_status_code=400)
    with stub:  # 4096 and 10240 are never tried: an unexpected call would fail here
        outcome = functions.deploy_functions(lam, config((10240, 1024, 3072, 2048, 4096)))
    stub.assert_no_pending_responses()
    assert outcome.deployed == (1024, 2048) and outcome.skipped == (3072, 4096, 10240)
    assert outcome.limit_mb == 3008
    message = outcome.skipped_message()
    assert message.startswith("skipped 3072, 4096, 10240 MB: this account allows functions of "
                              "at most 3008 MB")
    assert "--memory 1024,2048,3008" in message and "Service limit increase" in message


def test_an_account_that_allows_none_of_the_sizes_is_refused():
    lam, stub = stubbed("lambda")
    stub.add_client_error("get_function", "ResourceNotFoundException", http_status_code=404)
    stub.add_client_error("create_function", "InvalidParameterValueException", MEMORY_REFUSAL,
                          http_status_code=400)
    with stub, pytest.raises(MemoryQuotaError, match="skipped 4096 MB.*at most 3008 MB"):
        functions.deploy_functions(lam, config((4096,)))


def test_account_settings_say_how_many_functions_a_plan_may_run():
    lam, stub = stubbed("lambda")
    stub.add_response("get_account_settings", {"AccountLimit": {
        "ConcurrentExecutions": 10, "UnreservedConcurrentExecutions": 10}}, {})
    with stub:
        limits = functions.read_account_limits(lam)
    assert limits == functions.AccountLimits(10, 10)
    assert "--max-functions 10" in limits.describe(4) and "WARNING" not in limits.describe(10)
    warning = limits.describe(12)
    assert "the plan runs 12 ranks at once, above the 10" in warning
    assert f"--quota-code {functions.CONCURRENCY_QUOTA_CODE}" in warning
    assert functions.ranks_of({"stages": [{"replicas": 2}, {"replicas": 3}, {}]}) == 6


def test_log_groups_keep_logs_for_a_period_cloudwatch_accepts():
    logs, stub = stubbed("logs")
    group = f"/aws/lambda/{name(1024)}"
    stub.add_response("describe_log_groups", {"logGroups": [{"logGroupName": group}]},
                      {"logGroupNamePrefix": group})  # created by Lambda, kept forever
    stub.add_response("put_retention_policy", {}, {"logGroupName": group, "retentionInDays": 30})
    with stub:
        change = functions.ensure_log_group(logs, name(1024), 30)
        with pytest.raises(ValueError, match="one of"):
            functions.ensure_log_group(logs, name(1024), 10)
    stub.assert_no_pending_responses()
    assert (change.action, change.detail) == ("updated", "retention 30 days")


# -- the role ----------------------------------------------------------------------------------

def test_the_role_is_created_with_least_privilege_once():
    iam, stub = stubbed("iam")
    role = {"Role": {"Path": "/", "RoleName": "jaxpipe-worker", "RoleId": "AROA1234567890123456",
                     "Arn": ROLE, "CreateDate": "2026-01-01T00:00:00Z"}}
    stub.add_client_error("get_role", "NoSuchEntity", http_status_code=404,
                          expected_params={"RoleName": "jaxpipe-worker"})
    stub.add_response("create_role", role, {
        "RoleName": "jaxpipe-worker", "Description": ANY,
        "AssumeRolePolicyDocument": json.dumps(policies.trust_policy())})
    stub.add_client_error("get_role_policy", "NoSuchEntity", http_status_code=404)
    stub.add_response("put_role_policy", {}, {
        "RoleName": "jaxpipe-worker", "PolicyName": "jaxpipe-worker",
        "PolicyDocument": json.dumps(policies.worker_role_policy(BUCKET))})
    stub.add_response("get_role", role, {"RoleName": "jaxpipe-worker"})
    stub.add_response("get_role_policy", {
        "RoleName": "jaxpipe-worker", "PolicyName": "jaxpipe-worker",
        "PolicyDocument": json.dumps(policies.worker_role_policy(BUCKET))})
    with stub:
        arn, first = aws.ensure_role(iam, "jaxpipe-worker", BUCKET, create=True)
        _, second = aws.ensure_role(iam, ROLE, BUCKET, create=True)
    stub.assert_no_pending_responses()
    assert arn == ROLE
    assert [c.action for c in first] == ["created", "created"]
    assert [c.action for c in second] == ["unchanged"]


# -- the bucket --------------------------------------------------------------------------------

def test_the_bucket_is_created_with_a_jobs_expiry_rule_and_kept_on_a_second_run(s3_url):
    s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1")
    first = aws.deploy_bucket(s3, "deploy-bucket", expire_days=3)
    second = aws.deploy_bucket(s3, "deploy-bucket", expire_days=3)
    assert [c.action for c in first] == ["created", "created"]
    assert [c.action for c in second] == ["unchanged", "unchanged"]
    rules = s3.get_bucket_lifecycle_configuration(Bucket="deploy-bucket")["Rules"]
    assert rules[0]["Expiration"]["Days"] == 3 and rules[0]["Filter"]["Prefix"] == "jobs/"
    third = aws.deploy_bucket(s3, "deploy-bucket", expire_days=10)
    assert third[1].action == "updated"


def test_a_bucket_in_another_region_is_refused_before_anything_changes():
    s3, stub = stubbed("s3", region="eu-west-1")
    stub.add_response("head_bucket", {"BucketRegion": "us-east-2"}, {"Bucket": BUCKET})
    with stub, pytest.raises(BucketRegionError, match="in us-east-2.*--region us-east-2"):
        aws.deploy_bucket(s3, BUCKET)
    stub.assert_no_pending_responses()


# -- the image and its repository ----------------------------------------------------------------

def test_the_repository_lets_lambda_pull_and_keeps_only_the_newest_images():
    ecr, stub = stubbed("ecr")
    expect_new_repository(stub)
    expect_repository_unchanged(stub)
    with stub:
        first = image.ensure_repository(ecr, "jaxpipe", ACCOUNT, REGION)
        second = image.ensure_repository(ecr, "jaxpipe", ACCOUNT, REGION)
    stub.assert_no_pending_responses()
    assert [c.action for c in first] == ["created"] * 3
    assert [c.action for c in second] == ["unchanged"] * 3
    statement = policies.lambda_pull_policy(ACCOUNT, REGION)["Statement"][0]
    assert statement["Principal"] == {"Service": "lambda.amazonaws.com"}
    assert sorted(statement["Action"]) == ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]


def test_the_owners_repository_statements_and_lifecycle_are_kept():
    ecr, stub = stubbed("ecr")
    theirs = {"Sid": "CiPush", "Effect": "Allow", "Principal": {"AWS": ROLE},
              "Action": "ecr:PutImage"}
    ours = policies.lambda_pull_policy(ACCOUNT, REGION)["Statement"][0]
    stub.add_response("describe_repositories", {}, {"repositoryNames": ["jaxpipe"]})
    stub.add_response("get_repository_policy", {"policyText": json.dumps(
        {"Version": "2012-10-17", "Statement": [theirs]})}, {"repositoryName": "jaxpipe"})
    stub.add_response("set_repository_policy", {}, {"repositoryName": "jaxpipe",
                      "policyText": json.dumps({"Version": "2012-10-17",
                                                "Statement": [theirs, ours]})})
    stub.add_response("get_lifecycle_policy", {"lifecyclePolicyText": json.dumps({"rules": [
        {"rulePriority": 1, "description": "the team's own rule", "action": {"type": "expire"},
         "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed",
                       "countUnit": "days", "countNumber": 30}}]})},
        {"repositoryName": "jaxpipe"})
    with stub:  # a put_lifecycle_policy call would be unstubbed and fail
        changes = image.ensure_repository(ecr, "jaxpipe", ACCOUNT, REGION)
    stub.assert_no_pending_responses()
    assert [c.action for c in changes] == ["unchanged", "created", "kept"]


def test_the_image_tag_and_the_image_carry_the_drivers_versions():
    tag = image.source_tag(VERSIONS)
    assert re.fullmatch(r"[0-9a-f]{12}-jax0\.10\.2-jaxlib0\.10\.2-flax0\.12\.8-optax0\.2\.8", tag)
    newer = image.source_tag(image.Versions("0.10.3", "0.10.2", "0.12.8", "0.2.8"))
    assert newer.split("-")[0] != tag.split("-")[0] and len(tag) <= 128
    assert image.source_tag(image.Versions("0.10.2+cpu", "0.10.2", "1", "2")).count("+") == 0
    commands = image.image_commands(ACCOUNT, REGION, "jaxpipe", tag, VERSIONS)
    build = next(c for c in commands if c.startswith("docker build"))
    assert "--platform linux/amd64" in build and "--provenance=false" in build
    assert ("--build-arg JAX_VERSION=0.10.2 --build-arg JAXLIB_VERSION=0.10.2 --build-arg "
            "FLAX_VERSION=0.12.8 --build-arg OPTAX_VERSION=0.2.8") in build
    assert commands[-1] == f"docker push {ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/jaxpipe:{tag}"
    assert not any("create-repository" in c for c in commands)  # deploy made it with boto3
    assert image.driver_versions().jax == __import__("jax").__version__


def test_the_dockerfile_installs_from_a_constraints_file_of_those_versions():
    dockerfile = (image.REPO / image.DOCKERFILE).read_text()
    assert "FROM public.ecr.aws/lambda/python:" in dockerfile
    assert 'CMD ["jaxpipe.runtime.worker.handler"]' in dockerfile
    for arg in ("JAX_VERSION", "JAXLIB_VERSION", "FLAX_VERSION", "OPTAX_VERSION"):
        assert f"ARG {arg}\n" in dockerfile and f"--build-arg {arg}=" in VERSIONS.build_args()
    assert "pip install -c /opt/jaxpipe/constraints.txt /tmp/src" in dockerfile
    template = re.search(r"printf '([^']*)'", dockerfile).group(1)
    written = template.encode().decode("unicode_escape") % ("0.10.2", "0.10.2", "0.12.8",
                                                            "0.2.8")
    assert written == VERSIONS.constraints()
    assert "intra_op_parallelism_threads" not in dockerfile


def test_an_ecr_image_uri_names_its_account_region_and_repository():
    assert image.parse_image_uri(IMAGE) == (ACCOUNT, REGION, "jaxpipe")
    assert image.parse_image_uri(f"{IMAGE.split(':')[0]}@sha256:{'0' * 64}")[2] == "jaxpipe"
    assert image.parse_image_uri("ghcr.io/me/jaxpipe:1") is None


# -- the probe ---------------------------------------------------------------------------------

def test_the_probe_passes_when_a_missing_key_reads_as_404():
    lam, stub = stubbed("lambda")
    expect_probe(stub, IMAGE, new=True)
    with stub:
        changes = probe.run_probe(lam, IMAGE, ROLE, BUCKET, sleep=pytest.fail)
    stub.assert_no_pending_responses()
    assert [c.action for c in changes] == ["created", "passed"]


def test_the_probe_fails_loudly_when_a_missing_key_reads_as_403():
    lam, stub = stubbed("lambda")
    expect_probe(stub, IMAGE, new=False, statuses=(403,) * (len(probe.PROBE_DELAYS_S) + 1))
    slept = []
    with stub, pytest.raises(ProbeFailed) as caught:
        probe.run_probe(lam, IMAGE, ROLE, BUCKET, sleep=slept.append)
    stub.assert_no_pending_responses()
    assert slept == list(probe.PROBE_DELAYS_S)  # IAM had a minute to propagate the policy
    message = str(caught.value)
    assert "answered 403 AccessDenied" in message and f"s3://{BUCKET}/jobs/_probe/" in message
    assert f"s3:ListBucket on arn:aws:s3:::{BUCKET} with no condition" in message


def test_the_probes_invoke_waits_longer_than_the_probe_and_is_sent_once():
    config = probe.client_config()
    assert config.read_timeout > probe.probe_wanted(ROLE)["Timeout"]
    assert config.retries["total_max_attempts"] == 1


def test_a_403_that_clears_while_iam_propagates_passes():
    lam, stub = stubbed("lambda")
    expect_probe(stub, IMAGE, new=False, statuses=(403, 404))
    slept = []
    with stub:
        changes = probe.run_probe(lam, IMAGE, ROLE, BUCKET, sleep=slept.append)
    assert changes[-1].action == "passed" and slept == [probe.PROBE_DELAYS_S[0]]


def test_a_probe_function_that_fails_says_to_rebuild_the_image():
    lam, stub = stubbed("lambda")
    expect_probe(stub, IMAGE, new=False, statuses=())
    stub.add_response("invoke", {"StatusCode": 200, "FunctionError": "Unhandled",
                                 "Payload": payload({"errorType": "Runtime.ImportModuleError"})})
    with stub, pytest.raises(ProbeFailed, match="ImportModuleError.*rebuild it"):
        probe.run_probe(lam, IMAGE, ROLE, BUCKET, sleep=pytest.fail)


def test_the_probe_handler_reads_a_missing_key_on_a_real_server(s3_url):
    S3Store("probe-bucket", s3_url, create_bucket=True)
    s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1")
    assert probe.read_missing_key(s3, "probe-bucket", "jobs/_probe/x") == {
        "status": 404, "code": "NoSuchKey", "message": ANY}
    denied, stub = stubbed("s3")
    stub.add_client_error("get_object", "AccessDenied", "Access Denied", http_status_code=403)
    with stub:
        assert probe.read_missing_key(denied, "b", "jobs/_probe/x")["status"] == 403


# -- the region --------------------------------------------------------------------------------

@pytest.mark.parametrize(("explicit", "environ", "profile", "expected"), [
    ("eu-west-1", {"AWS_REGION": "us-east-1"}, None, "eu-west-1 (from --region)"),
    (None, {"AWS_REGION": "eu-west-2"}, None, "eu-west-2 (from AWS_REGION)"),
    (None, {"AWS_DEFAULT_REGION": "eu-west-3"}, None, "eu-west-3 (from AWS_DEFAULT_REGION)"),
    (None, {"AWS_REGION": "x", "AWS_DEFAULT_REGION": "x"}, None, "x (from AWS_REGION)"),
    (None, {}, Region("ap-south-1", "profile default"), "ap-south-1 (from profile default)"),
])
def test_the_region_is_found_and_said_where(explicit, environ, profile, expected):
    assert str(resolve_region(explicit, environ, profile)) == expected


def test_no_region_or_two_different_ones_are_refused():
    with pytest.raises(RegionError, match="pass --region.*AWS_REGION"):
        resolve_region(None, {}, None)
    with pytest.raises(RegionError, match="AWS_REGION=a and AWS_DEFAULT_REGION=b disagree"):
        resolve_region(None, {"AWS_REGION": "a", "AWS_DEFAULT_REGION": "b"}, None)


def test_no_region_is_refused_before_any_client_is_made(capsys):
    session = FakeSession()
    args = deploy_args()
    args.region = None
    assert run_aws(args, session, environ={}) == 2
    assert "no AWS region given: pass --region" in capsys.readouterr().err
    assert session.regions == {}


# -- whole runs ----------------------------------------------------------------------------------

def test_a_first_deploy_sets_up_everything_in_one_region_and_ends_with_the_probe(capsys):
    session = FakeSession()
    expect_fresh_account(session)
    assert deploy_aws(deploy_args("--create-role"), session, environ={}, sleep=pytest.fail) == 0
    session.assert_done()
    assert set(session.regions) == {"lambda", "sts", "ecr", "s3", "iam", "logs"}
    assert set(session.regions.values()) == {REGION}  # --region reached every client
    out = capsys.readouterr().out
    assert out.startswith(f"region {REGION} (from --region)\naccount: 1000 concurrent")
    assert "passed    probe jaxpipe-worker-probe" in out
    assert f"ready: 1024, 2048 MB in {REGION}: AWS_DEFAULT_REGION={REGION} jaxpipe train" in out


def test_a_second_deploy_only_reads(capsys):
    session = FakeSession()
    expect_second_run(session)
    assert deploy_aws(deploy_args("--create-role"), session, environ={}, sleep=pytest.fail) == 0
    session.assert_done()
    changes = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:-1]]
    assert set(changes) == {"unchanged", "passed"}


def test_deploy_reads_the_account_settings_and_names_every_quota_a_plan_meets(capsys,
                                                                            tmp_path):
    # GetAccountSettings: 10 unreserved executions; the plan runs 4 + 8 = 12 ranks at once. And
    # the account's memory limit, 3008 MB, refuses the 4096 MB function deploy is asked for.
    session = FakeSession()
    expect_second_run(session, {"AccountLimit": {"ConcurrentExecutions": 10,
                                                 "UnreservedConcurrentExecutions": 10}},
                      refused=(4096, MEMORY_REFUSAL))
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"stages": [{"memory_mb": 1024, "replicas": 4},
                                           {"memory_mb": 2048, "replicas": 8}]}))
    args = deploy_args("--create-role", "--plan", str(plan), "--memory", "1024,2048,4096")
    slept: list[float] = []
    assert deploy_aws(args, session, environ={}, sleep=slept.append) == 0
    session.assert_done()  # every stubbed call made, in order, and no other
    assert slept == []  # the refusal is final: no retry
    captured = capsys.readouterr()
    assert ("account: 10 concurrent executions, 10 unreserved; a job runs one per rank, so "
            "plan with --max-functions 10 or fewer") in captured.out
    assert "WARNING: the plan runs 12 ranks at once, above the 10 this account allows" in \
        captured.out
    assert (f"--quota-code {functions.CONCURRENCY_QUOTA_CODE} --desired-value 100"
            in captured.out)
    assert ("skipped 4096 MB: this account allows functions of at most 3008 MB (Lambda: "
            f"{MEMORY_REFUSAL!r})") in captured.err
    assert "--memory 1024,2048,3008" in captured.err
    assert "Create case > Service limit increase > Lambda, function memory" in captured.err
    assert f"ready: 1024, 2048 MB in {REGION}" in captured.out


def test_without_the_image_deploy_prepares_the_repository_and_prints_the_build(capsys):
    session = FakeSession()
    expect_image_missing(session)
    assert deploy_aws(deploy_args(), session, environ={}) == 2
    session.assert_done()
    assert set(session.regions) == {"lambda", "sts", "ecr"}  # no bucket, role or function yet
    captured = capsys.readouterr()
    assert "docker build --platform linux/amd64" in captured.out
    assert "is not in ECR yet" in captured.err


def test_calibration_and_profiling_clients_use_the_commands_region(monkeypatch):
    args = argparse.Namespace(platform="aws-lambda", bucket=BUCKET, endpoint_url=None,
                              region="ap-south-1", memory="1024")
    _, store, sizes, client = _cloud_setup(args, None)
    assert store.client.meta.region_name == client.meta.region_name == "ap-south-1"
    assert sizes == [1024]
    for variable in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    args.region = None
    with pytest.raises(SystemExit, match="no AWS region given"):
        _cloud_setup(args, None)


# -- calibration and profiling inside functions --------------------------------------------------

def run_in_process(client, stub: Stubber, names: list[str]) -> None:
    """Expect one asynchronous Invoke per name; run each payload's task as Lambda would."""
    for name in names:
        stub.add_response("invoke", {"StatusCode": 202}, expected_params={
            "FunctionName": name, "InvocationType": "Event", "Payload": ANY})

    def deliver(params, **kwargs):
        assert len(params["Payload"]) < 2048
        worker.handler(json.loads(params["Payload"]))

    client.meta.events.register("before-parameter-build.lambda.Invoke", deliver)
    stub.activate()


def test_calibration_runs_in_each_memory_size_and_writes_a_platform_file(s3_url, tmp_path):
    store = S3Store("calibration", s3_url, create_bucket=True)
    lam, stub = stubbed("lambda")
    run_in_process(lam, stub, ["jaxpipe-worker-1024", "jaxpipe-worker-3008"])
    results = aws_tasks.calibrate(store, [1024, 3008], lam, size_bytes=1 << 20, repeats=2,
                                  timeout_s=30)
    stub.assert_no_pending_responses()
    assert set(results) == {1024, 3008} and results[3008]["memory_mb"] == 3008
    fields = aws_tasks.calibration_fields(results)
    assert 0 < fields["request_latency_s"] < 1 and fields["uplink_bytes_per_s"] > 1e6
    path = tmp_path / "aws.json"
    aws_tasks.merge_platform_file(path, fields, "calibration", {str(m): r for m, r in
                                                                results.items()})
    platform = platforms.get("aws-lambda", path)
    assert platform.request_latency_s == fields["request_latency_s"]
    assert platform.price_gb_second == platforms.get("aws-lambda").price_gb_second
    assert [k for k in store.list("jobs/") if ".scratch/" in k] == []  # scratch cleaned


def test_profiling_runs_in_each_memory_size_and_yields_a_cpu_table(s3_url, tmp_path):
    store = S3Store("profiling", s3_url, create_bucket=True)
    lam, stub = stubbed("lambda")
    run_in_process(lam, stub, ["jaxpipe-worker-1024", "jaxpipe-worker-2048"])
    aws_platform = platforms.get("aws-lambda")
    profiles = aws_tasks.profile_on_functions("mlp", store, [1024, 2048], (1, 2), repeats=1,
                                              client=lam, timeout_s=120)
    stub.assert_no_pending_responses()
    reference, fields = aws_tasks.profile_fields(profiles, aws_platform)
    assert reference.reference_cpus == pytest.approx(aws_platform.cpus(2048))  # nearest 1 vCPU
    assert fields["cpu_table"]["2048"] == pytest.approx(aws_platform.cpus(2048), abs=1e-4)
    path = tmp_path / "aws.json"
    aws_tasks.merge_platform_file(path, fields, "profiles", {})
    assert platforms.get("aws-lambda", path).cpus(1024) == fields["cpu_table"]["1024"]


def test_a_failing_task_is_reported_with_its_error(s3_url):
    store = S3Store("calibration", s3_url, create_bucket=True)
    lam, stub = stubbed("lambda")
    run_in_process_failing = []

    def deliver(params, **kwargs):
        try:
            worker.handler({**json.loads(params["Payload"]), "model": "no-such-model"})
        except Exception as err:  # noqa: BLE001 - Lambda records it; the driver reads the key
            run_in_process_failing.append(err)

    stub.add_response("invoke", {"StatusCode": 202})
    lam.meta.events.register("before-parameter-build.lambda.Invoke", deliver)
    with stub, pytest.raises(LaunchError, match="1024 MB function failed"):
        aws_tasks.profile_on_functions("mlp", store, [1024], (1,), 1, lam, timeout_s=10)
    assert run_in_process_failing
