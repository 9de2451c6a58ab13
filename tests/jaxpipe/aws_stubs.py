"""Stubbed AWS clients for the deploy tests: botocore's Stubber checks every request against the
API's shapes and the expected parameters, and every call is recorded as (service, operation), so
the policy tests can check that the operator policy allows each one.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

from jaxpipe.deploy import functions, image, policies, probe

ACCOUNT = "123456789012"
REGION = "eu-west-1"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/jaxpipe-worker"
REPOSITORY = "jaxpipe"
BUCKET = "my-bucket"


def stubbed(service: str, region: str = REGION, calls: list | None = None) -> tuple[Any, Stubber]:
    """A client of `service` under a Stubber; its calls are appended to `calls`."""
    client = boto3.client(service, region_name=region, aws_access_key_id="x",
                          aws_secret_access_key="x")
    if calls is not None:
        name = client.meta.service_model.service_name

        def record(model: Any, **_: Any) -> None:
            calls.append((name, model.name))

        client.meta.events.register("before-call.*.*", record)
    return client, Stubber(client)


@dataclass
class FakeSession:
    """Stands in for `boto3.session.Session`: one stubbed client per service, and a record of
    the region every client was asked for."""

    region: str = REGION
    calls: list[tuple[str, str]] = field(default_factory=list)
    regions: dict[str, str | None] = field(default_factory=dict)
    clients: dict[str, Any] = field(default_factory=dict)
    stubs: dict[str, Stubber] = field(default_factory=dict)

    def stub(self, service: str) -> Stubber:
        if service not in self.stubs:
            self.clients[service], self.stubs[service] = stubbed(service, self.region, self.calls)
        return self.stubs[service]

    def client(self, service: str, region_name: str | None = None, config: Any = None) -> Any:
        self.regions[service] = region_name
        self.stub(service).activate()
        return self.clients[service]

    def assert_done(self) -> None:
        for stub in self.stubs.values():
            stub.assert_no_pending_responses()


def payload(value: dict) -> StreamingBody:
    data = json.dumps(value).encode()
    return StreamingBody(io.BytesIO(data), len(data))


def function_state(name: str, memory_mb: int, image_uri: str, variables: dict,
                   image_config: dict | None = None, role: str = ROLE) -> dict:
    conf = {"FunctionName": name, "Role": role, "MemorySize": memory_mb, "Timeout": 900,
            "PackageType": "Image", "EphemeralStorage": {"Size": 512},
            "Environment": {"Variables": variables}, "State": "Active",
            "LastUpdateStatus": "Successful"}
    if image_config is not None:
        conf["ImageConfigResponse"] = {"ImageConfig": image_config}
        conf["Timeout"] = 120
    return {"Configuration": conf, "Code": {"ImageUri": image_uri}}


def expect_new_function(lam: Stubber, name: str, memory_mb: int, image_uri: str,
                        variables: dict) -> None:
    lam.add_client_error("get_function", "ResourceNotFoundException", http_status_code=404,
                         expected_params={"FunctionName": name})
    lam.add_response("create_function", {"FunctionName": name}, expected_params={
        "FunctionName": name, "PackageType": "Image", "Code": {"ImageUri": image_uri},
        "Architectures": ["x86_64"], "Description": ANY, "Role": ROLE, "MemorySize": memory_mb,
        "Timeout": 900, "EphemeralStorage": {"Size": 512},
        "Environment": {"Variables": variables}})
    lam.add_response("get_function", function_state(name, memory_mb, image_uri, variables),
                     {"FunctionName": name})  # the waiter
    lam.add_client_error("get_function_event_invoke_config", "ResourceNotFoundException",
                         http_status_code=404, expected_params={"FunctionName": name})
    lam.add_response("put_function_event_invoke_config", {}, expected_params={
        "FunctionName": name, "MaximumRetryAttempts": 0, "MaximumEventAgeInSeconds": 900})


def expect_new_log_group(logs: Stubber, function: str, days: int = 14) -> None:
    group = f"/aws/lambda/{function}"
    logs.add_response("describe_log_groups", {"logGroups": []}, {"logGroupNamePrefix": group})
    logs.add_response("create_log_group", {}, {"logGroupName": group})
    logs.add_response("put_retention_policy", {}, {"logGroupName": group,
                                                   "retentionInDays": days})


def expect_log_group_unchanged(logs: Stubber, function: str, days: int = 14) -> None:
    group = f"/aws/lambda/{function}"
    logs.add_response("describe_log_groups", {"logGroups": [
        {"logGroupName": group, "retentionInDays": days}]}, {"logGroupNamePrefix": group})


def expect_new_repository(ecr: Stubber, prefix: str = "jaxpipe-worker") -> None:
    ecr.add_client_error("describe_repositories", "RepositoryNotFoundException",
                         expected_params={"repositoryNames": [REPOSITORY]})
    ecr.add_response("create_repository", {}, {"repositoryName": REPOSITORY,
                                               "imageScanningConfiguration": {"scanOnPush": True}})
    ecr.add_client_error("get_repository_policy", "RepositoryPolicyNotFoundException",
                         expected_params={"repositoryName": REPOSITORY})
    ecr.add_response("set_repository_policy", {}, {
        "repositoryName": REPOSITORY,
        "policyText": json.dumps(policies.lambda_pull_policy(ACCOUNT, REGION, prefix))})
    ecr.add_client_error("get_lifecycle_policy", "LifecyclePolicyNotFoundException",
                         expected_params={"repositoryName": REPOSITORY})
    ecr.add_response("put_lifecycle_policy", {}, {
        "repositoryName": REPOSITORY,
        "lifecyclePolicyText": json.dumps(policies.image_lifecycle_policy(image.KEEP_IMAGES))})


def expect_repository_unchanged(ecr: Stubber, prefix: str = "jaxpipe-worker") -> None:
    ecr.add_response("describe_repositories", {"repositories": [{"repositoryName": REPOSITORY}]},
                     {"repositoryNames": [REPOSITORY]})
    ecr.add_response("get_repository_policy", {"policyText": json.dumps(
        policies.lambda_pull_policy(ACCOUNT, REGION, prefix))}, {"repositoryName": REPOSITORY})
    ecr.add_response("get_lifecycle_policy", {"lifecyclePolicyText": json.dumps(
        policies.image_lifecycle_policy(image.KEEP_IMAGES))}, {"repositoryName": REPOSITORY})


def expect_probe(lam: Stubber, image_uri: str, new: bool, statuses: tuple[int, ...] = (404,),
                 prefix: str = "jaxpipe-worker") -> None:
    name = probe.probe_function(prefix)
    wanted = probe.probe_wanted(ROLE)
    command = wanted["ImageConfig"]
    state = function_state(name, wanted["MemorySize"], image_uri, {}, command)
    if new:
        lam.add_client_error("get_function", "ResourceNotFoundException", http_status_code=404,
                             expected_params={"FunctionName": name})
        lam.add_response("create_function", {"FunctionName": name}, expected_params={
            "FunctionName": name, "PackageType": "Image", "Code": {"ImageUri": image_uri},
            "Architectures": ["x86_64"], "Description": ANY, **wanted})
    lam.add_response("get_function", state, {"FunctionName": name})  # waiter, or the read
    for status in statuses:
        code = {404: "NoSuchKey", 403: "AccessDenied"}[status]
        lam.add_response("invoke", {"StatusCode": 200, "Payload": payload(
            {"status": status, "code": code, "message": code})}, expected_params={
            "FunctionName": name, "InvocationType": "RequestResponse", "Payload": ANY})


def worker_env(memory_mb: int) -> dict:
    from planners import platforms

    config = functions.FunctionConfig("i", ROLE, (memory_mb,),
                                      platform=platforms.get("aws-lambda"))
    return config.environment(memory_mb)


# -- whole `jaxpipe deploy aws` runs -------------------------------------------------------------

TAG = "abc123"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{REPOSITORY}:{TAG}"
DEPLOY_SIZES = (1024, 2048)
IDENTITY = {"Account": ACCOUNT, "Arn": f"arn:aws:iam::{ACCOUNT}:user/me", "UserId": "AIDA1"}
SETTINGS = {"AccountLimit": {"ConcurrentExecutions": 1000,
                             "UnreservedConcurrentExecutions": 1000}}
ROLE_RESPONSE = {"Role": {"Path": "/", "RoleName": "jaxpipe-worker", "RoleId": "AROA123456789012",
                          "Arn": ROLE, "CreateDate": "2026-01-01T00:00:00Z"}}


def deploy_args(*extra: str) -> Any:
    """`jaxpipe deploy aws` arguments for a run in REGION with an image tagged TAG."""
    import argparse

    from jaxpipe.deploy.cli import add_aws_arguments

    parser = argparse.ArgumentParser()
    add_aws_arguments(parser)
    return parser.parse_args(["--bucket", BUCKET, "--role", "jaxpipe-worker", "--region", REGION,
                              "--memory", ",".join(map(str, DEPLOY_SIZES)), "--tag", TAG,
                              *extra])


def expect_account(session: FakeSession, settings: dict = SETTINGS) -> None:
    session.stub("lambda").add_response("get_account_settings", settings, {})
    session.stub("sts").add_response("get_caller_identity", IDENTITY, {})


def expect_fresh_account(session: FakeSession) -> None:
    """Every call of a first `deploy aws --create-role` on an account with the image pushed."""
    expect_account(session)
    ecr, s3, iam = session.stub("ecr"), session.stub("s3"), session.stub("iam")
    lam, logs = session.stub("lambda"), session.stub("logs")
    expect_new_repository(ecr)
    ecr.add_response("describe_images", {"imageDetails": [{"imageTags": [TAG]}]},
                     {"repositoryName": REPOSITORY, "imageIds": [{"imageTag": TAG}]})
    s3.add_client_error("head_bucket", "404", http_status_code=404,
                        expected_params={"Bucket": BUCKET})
    s3.add_response("create_bucket", {}, {"Bucket": BUCKET, "CreateBucketConfiguration": {
        "LocationConstraint": REGION}})
    s3.add_client_error("get_bucket_lifecycle_configuration", "NoSuchLifecycleConfiguration",
                        http_status_code=404)
    s3.add_response("put_bucket_lifecycle_configuration", {}, {"Bucket": BUCKET,
                    "LifecycleConfiguration": ANY})
    iam.add_client_error("get_role", "NoSuchEntity", http_status_code=404)
    iam.add_response("create_role", ROLE_RESPONSE, {"RoleName": "jaxpipe-worker",
                     "Description": ANY, "AssumeRolePolicyDocument": ANY})
    iam.add_client_error("get_role_policy", "NoSuchEntity", http_status_code=404)
    iam.add_response("put_role_policy", {}, {"RoleName": "jaxpipe-worker",
                     "PolicyName": "jaxpipe-worker", "PolicyDocument": ANY})
    for m in DEPLOY_SIZES:
        expect_new_function(lam, f"jaxpipe-worker-{m}", m, IMAGE, worker_env(m))
        expect_new_log_group(logs, f"jaxpipe-worker-{m}")
    expect_new_log_group(logs, probe.probe_function())
    expect_probe(lam, IMAGE, new=True)


def expect_second_run(session: FakeSession, settings: dict = SETTINGS,
                      refused: tuple[int, str] | None = None) -> None:
    """Every call of the same deploy once everything exists: reads only. With `refused`
    (memory MB, Lambda's message), deploy also asks for that size, larger than DEPLOY_SIZES,
    which does not exist yet, and Lambda refuses to create it."""
    expect_account(session, settings)
    ecr, s3, iam = session.stub("ecr"), session.stub("s3"), session.stub("iam")
    lam, logs = session.stub("lambda"), session.stub("logs")
    expect_repository_unchanged(ecr)
    ecr.add_response("describe_images", {"imageDetails": [{"imageTags": [TAG]}]},
                     {"repositoryName": REPOSITORY, "imageIds": [{"imageTag": TAG}]})
    s3.add_response("head_bucket", {"BucketRegion": REGION}, {"Bucket": BUCKET})
    s3.add_response("get_bucket_lifecycle_configuration", {"Rules": [
        {"ID": "jaxpipe-expire-jobs", "Filter": {"Prefix": "jobs/"}, "Status": "Enabled",
         "Expiration": {"Days": 7}, "AbortIncompleteMultipartUpload": {
             "DaysAfterInitiation": 1}}]}, {"Bucket": BUCKET})
    iam.add_response("get_role", ROLE_RESPONSE, {"RoleName": "jaxpipe-worker"})
    iam.add_response("get_role_policy", {"RoleName": "jaxpipe-worker",
                     "PolicyName": "jaxpipe-worker",
                     "PolicyDocument": json.dumps(policies.worker_role_policy(BUCKET))})
    for m in DEPLOY_SIZES:
        fn = f"jaxpipe-worker-{m}"
        lam.add_response("get_function", function_state(fn, m, IMAGE, worker_env(m)),
                         {"FunctionName": fn})
        lam.add_response("get_function_event_invoke_config",
                         {"MaximumRetryAttempts": 0, "MaximumEventAgeInSeconds": 900},
                         {"FunctionName": fn})
        expect_log_group_unchanged(logs, fn)
    if refused is not None:
        lam.add_client_error("get_function", "ResourceNotFoundException", http_status_code=404,
                             expected_params={"FunctionName": f"jaxpipe-worker-{refused[0]}"})
        lam.add_client_error("create_function", "InvalidParameterValueException", refused[1],
                             http_status_code=400)
    expect_log_group_unchanged(logs, probe.probe_function())
    expect_probe(lam, IMAGE, new=False)


def expect_image_missing(session: FakeSession) -> None:
    """A first deploy before the image is pushed: the repository is made ready, then it stops."""
    expect_account(session)
    ecr = session.stub("ecr")
    expect_new_repository(ecr)
    ecr.add_client_error("describe_images", "ImageNotFoundException",
                         expected_params={"repositoryName": REPOSITORY,
                                          "imageIds": [{"imageTag": TAG}]})
