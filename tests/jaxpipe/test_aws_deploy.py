"""`jaxpipe deploy aws`, calibration and profiling on functions: every Lambda and IAM call checked
request by request with botocore's Stubber (against the API's shapes), S3 calls against moto's
server, and the calibration / profiling handlers run in-process against that server.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import boto3
import pytest
from botocore.stub import ANY, Stubber

from jaxpipe.deploy import aws
from jaxpipe.errors import LaunchError
from jaxpipe.runtime import worker
from jaxpipe.runtime.platforms import aws_tasks
from planners import platforms
from transports import S3Store

ROLE = "arn:aws:iam::123456789012:role/jaxpipe-worker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/jaxpipe:abc123"
SIZES = (1024, 2048)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "aws.md"


def stubbed(service: str) -> tuple[object, Stubber]:
    client = boto3.client(service, region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="x")
    return client, Stubber(client)


def config() -> aws.FunctionConfig:
    return aws.FunctionConfig(image_uri=IMAGE, role_arn=ROLE, memory_sizes=SIZES,
                              platform=platforms.get("aws-lambda"))


def function_state(memory_mb: int) -> dict:
    conf = config()
    return {"Configuration": {
        "FunctionName": f"jaxpipe-worker-{memory_mb}", "Role": ROLE, "MemorySize": memory_mb,
        "Timeout": 900, "PackageType": "Image", "EphemeralStorage": {"Size": 512},
        "Environment": {"Variables": conf.environment(memory_mb)}, "State": "Active",
        "LastUpdateStatus": "Successful"}, "Code": {"ImageUri": IMAGE}}


def test_first_deploy_creates_one_function_per_memory_size_with_retries_off():
    lam, stub = stubbed("lambda")
    for m in SIZES:
        name = f"jaxpipe-worker-{m}"
        stub.add_client_error("get_function", "ResourceNotFoundException", http_status_code=404,
                              expected_params={"FunctionName": name})
        stub.add_response("create_function", {"FunctionName": name}, expected_params={
            "FunctionName": name, "PackageType": "Image", "Code": {"ImageUri": IMAGE},
            "Architectures": ["x86_64"], "Description": ANY, "Role": ROLE, "MemorySize": m,
            "Timeout": 900, "EphemeralStorage": {"Size": 512},
            "Environment": {"Variables": config().environment(m)}})
        stub.add_response("get_function", function_state(m), {"FunctionName": name})  # waiter
        stub.add_client_error("get_function_event_invoke_config", "ResourceNotFoundException",
                              http_status_code=404, expected_params={"FunctionName": name})
        stub.add_response("put_function_event_invoke_config", {}, expected_params={
            "FunctionName": name, "MaximumRetryAttempts": 0, "MaximumEventAgeInSeconds": 900})
    with stub:
        changes = aws.deploy_functions(lam, config())
    stub.assert_no_pending_responses()
    assert [c.action for c in changes] == ["created"] * 4
    # Below 1.5 vCPUs (2048 MB = 1.16) XLA gets one thread; 3072 MB (1.74) keeps its pool.
    assert "XLA_FLAGS" in config().environment(2048)
    assert "XLA_FLAGS" not in config().environment(3072)


def test_a_second_deploy_reads_everything_and_changes_nothing():
    lam, stub = stubbed("lambda")
    for m in SIZES:
        name = f"jaxpipe-worker-{m}"
        stub.add_response("get_function", function_state(m), {"FunctionName": name})
        stub.add_response("get_function_event_invoke_config",
                          {"MaximumRetryAttempts": 0, "MaximumEventAgeInSeconds": 900},
                          {"FunctionName": name})
    with stub:  # any create/update/put call would be unstubbed and fail
        changes = aws.deploy_functions(lam, config())
    stub.assert_no_pending_responses()
    assert {c.action for c in changes} == {"unchanged"}


def test_a_changed_image_or_memory_is_updated_and_nothing_else():
    lam, stub = stubbed("lambda")
    name = "jaxpipe-worker-1024"
    old = function_state(1024)
    old["Code"]["ImageUri"] = IMAGE.replace("abc123", "old")
    old["Configuration"]["Timeout"] = 60
    stub.add_response("get_function", old, {"FunctionName": name})
    stub.add_response("update_function_code", {}, {"FunctionName": name, "ImageUri": IMAGE})
    stub.add_response("get_function", function_state(1024), {"FunctionName": name})
    stub.add_response("update_function_configuration", {},
                      {"FunctionName": name, "Timeout": 900})
    stub.add_response("get_function", function_state(1024), {"FunctionName": name})
    stub.add_response("get_function_event_invoke_config",
                      {"MaximumRetryAttempts": 2, "MaximumEventAgeInSeconds": 21600},
                      {"FunctionName": name})
    stub.add_response("put_function_event_invoke_config", {}, {
        "FunctionName": name, "MaximumRetryAttempts": 0, "MaximumEventAgeInSeconds": 900})
    with stub:
        changes = aws.deploy_functions(lam, aws.FunctionConfig(
            image_uri=IMAGE, role_arn=ROLE, memory_sizes=(1024,),
            platform=platforms.get("aws-lambda")))
    stub.assert_no_pending_responses()
    assert [(c.action, c.detail.split(",")[0]) for c in changes] == [
        ("updated", "image"), ("updated", "retries 0")]


def test_the_role_is_created_with_least_privilege_once():
    iam, stub = stubbed("iam")
    role = {"Role": {"Path": "/", "RoleName": "jaxpipe-worker", "RoleId": "AROA1234567890123456",
                     "Arn": ROLE, "CreateDate": "2026-01-01T00:00:00Z"}}
    stub.add_client_error("get_role", "NoSuchEntity", http_status_code=404,
                          expected_params={"RoleName": "jaxpipe-worker"})
    stub.add_response("create_role", role, {"RoleName": "jaxpipe-worker", "Description": ANY,
                                            "AssumeRolePolicyDocument": ANY})
    stub.add_client_error("get_role_policy", "NoSuchEntity", http_status_code=404)
    stub.add_response("put_role_policy", {}, {
        "RoleName": "jaxpipe-worker", "PolicyName": "jaxpipe-worker",
        "PolicyDocument": json.dumps(aws.worker_role_policy("my-bucket"))})
    stub.add_response("get_role", role, {"RoleName": "jaxpipe-worker"})
    stub.add_response("get_role_policy", {
        "RoleName": "jaxpipe-worker", "PolicyName": "jaxpipe-worker",
        "PolicyDocument": json.dumps(aws.worker_role_policy("my-bucket"))})
    with stub:
        arn, first = aws.ensure_role(iam, "jaxpipe-worker", "my-bucket", create=True)
        _, second = aws.ensure_role(iam, ROLE, "my-bucket", create=True)
    stub.assert_no_pending_responses()
    assert arn == ROLE
    assert [c.action for c in first] == ["created", "created"]
    assert [c.action for c in second] == ["unchanged"]
    policy = aws.worker_role_policy("my-bucket")
    resources = json.dumps(policy)
    assert "arn:aws:s3:::my-bucket/jobs/*" in resources and '"*"' not in resources.replace(
        '"Resource": "*"', "")
    assert not any(a.startswith(("lambda:", "iam:")) for s in policy["Statement"]
                   for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"]))


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


def test_the_image_commands_build_for_lambda_and_the_dockerfile_runs_the_worker():
    commands = aws.image_commands("123456789012", "eu-west-1", "jaxpipe", "t1", "0.10.2")
    build = next(c for c in commands if c.startswith("docker build"))
    assert "--platform linux/amd64" in build and "--provenance=false" in build
    assert "JAX_VERSION=0.10.2" in build and "-f deploy/aws/Dockerfile ." in build
    assert commands[-1] == "docker push 123456789012.dkr.ecr.eu-west-1.amazonaws.com/jaxpipe:t1"
    dockerfile = (aws.REPO / aws.DOCKERFILE).read_text()
    assert "FROM public.ecr.aws/lambda/python:" in dockerfile
    assert 'CMD ["jaxpipe.runtime.worker.handler"]' in dockerfile
    assert re.fullmatch(r"[0-9a-f]{12}", aws.source_tag())


def test_the_policy_in_the_guide_is_the_one_deploy_creates():
    blocks = re.findall(r"```json\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert json.loads(blocks[0]) == aws.worker_role_policy("YOUR-BUCKET")


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
