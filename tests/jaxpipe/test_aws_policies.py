"""The policy documents as data: the worker role allows what a rank does (a missing key reads
as 404, not 403), the operator policy allows every AWS call the code makes and every `aws`
command the guide tells you to run, and the guide shows the documents deploy writes.

Calls are found two ways: recorded through Stubber while whole deploy runs execute, and read
from the source with `ast` (every `<client>.<operation>(...)` call, run or not).
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
from pathlib import Path

import boto3
import pytest

from jaxpipe.deploy import policies
from jaxpipe.deploy.cli import deploy_aws
from tests.jaxpipe.aws_stubs import (
    FakeSession,
    deploy_args,
    expect_fresh_account,
    expect_image_missing,
    expect_second_run,
)

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "aws.md"
SERVICES = ("lambda", "iam", "s3", "ecr", "logs", "sts")
# The operator's code: deploy, and the driver side of train, calibrate and profile.
OPERATOR_CODE = [*sorted((REPO / "jaxpipe" / "deploy").glob("*.py")),
                 REPO / "jaxpipe" / "runtime" / "platforms" / "aws.py",
                 REPO / "jaxpipe" / "runtime" / "platforms" / "aws_tasks.py",
                 REPO / "jaxpipe" / "runtime" / "platforms" / "aws_preflight.py",
                 REPO / "transports" / "s3_store.py"]
# What a worker function runs: the store, and the probe's read.
WORKER_CODE = [REPO / "transports" / "s3_store.py", REPO / "jaxpipe" / "deploy" / "probe.py"]
SET_UP_ONLY = {"s3:CreateBucket"}  # S3Store(create_bucket=True): the operator's, never a rank's

# S3 operations whose IAM action has another name (the rest are `s3:<Operation>`).
S3_ACTIONS = {"HeadBucket": "s3:ListBucket", "ListObjectsV2": "s3:ListBucket",
              "ListObjects": "s3:ListBucket", "HeadObject": "s3:GetObject",
              "DeleteObjects": "s3:DeleteObject", "CreateMultipartUpload": "s3:PutObject",
              "UploadPart": "s3:PutObject", "CompleteMultipartUpload": "s3:PutObject",
              "GetBucketLifecycleConfiguration": "s3:GetLifecycleConfiguration",
              "PutBucketLifecycleConfiguration": "s3:PutLifecycleConfiguration"}
# Calls that need a second permission: passing the execution role to Lambda.
IMPLIED = {("lambda", "CreateFunction"): {"iam:PassRole"},
           ("lambda", "UpdateFunctionConfiguration"): {"iam:PassRole"}}
# `aws` commands of the guide that are not one API call of the same name.
CLI_ACTIONS = {("s3", "rm"): {"s3:ListBucket", "s3:DeleteObject"},
               ("s3", "rb"): {"s3:DeleteBucket"}, ("s3", "ls"): {"s3:ListBucket"},
               ("logs", "tail"): {"logs:StartLiveTail", "logs:FilterLogEvents"},
               ("ecr", "get-login-password"): {"ecr:GetAuthorizationToken"}}
# Commands the guide names for the account's owner, outside the operator policy on purpose.
OWNER_COMMANDS = {"service-quotas", "configure"}


def iam_actions(service: str, operation: str) -> set[str]:
    """The IAM actions an API call needs."""
    if service == "s3":
        action = S3_ACTIONS.get(operation, f"s3:{operation}")
    elif (service, operation) == ("lambda", "Invoke"):
        action = "lambda:InvokeFunction"
    else:
        action = f"{service}:{operation}"
    return {action} | IMPLIED.get((service, operation), set())


def allowed(policy: dict, action: str, resource: str) -> bool:
    """Whether an Allow statement without conditions grants `action` on `resource` (a request
    that carries no condition keys, as a GET does not carry `s3:prefix`)."""
    for statement in policy["Statement"]:
        names = statement["Action"]
        resources = statement["Resource"]
        if statement["Effect"] == "Allow" and "Condition" not in statement and \
                any(fnmatch.fnmatchcase(action, a) for a in ([names] if isinstance(names, str)
                                                             else names)) and \
                any(fnmatch.fnmatchcase(resource, r) for r in ([resources] if isinstance(
                    resources, str) else resources)):
            return True
    return False


def operations() -> dict[str, set[tuple[str, str]]]:
    """snake_case method name -> the (service, Operation) pairs it names."""
    found: dict[str, set[tuple[str, str]]] = {}
    for service in SERVICES:
        client = boto3.client(service, region_name="us-east-1", aws_access_key_id="x",
                              aws_secret_access_key="x")
        for method, operation in client.meta.method_to_api_mapping.items():
            found.setdefault(method, set()).add((service, operation))
    return found


def called_operations(paths: list[Path]) -> dict[str, set[tuple[str, str]]]:
    """Every `x.<method>` in `paths` whose method is an API operation, called or passed on
    (`self._s3(key, self.client.put_object, ...)`): "file:method" -> the operations it may be
    (a name shared by two services may be either)."""
    known = operations()
    found: dict[str, set[tuple[str, str]]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in known:
                found[f"{path.relative_to(REPO)}:{node.attr}"] = known[node.attr]
    return found


def recorded_calls() -> set[tuple[str, str]]:
    """Every API call of three whole deploy runs: a fresh account, a second run, no image."""
    calls: set[tuple[str, str]] = set()
    for expect, extra, code in ((expect_fresh_account, ("--create-role",), 0),
                                (expect_second_run, ("--create-role",), 0),
                                (expect_image_missing, (), 2)):
        session = FakeSession()
        expect(session)
        assert deploy_aws(deploy_args(*extra), session, environ={}, sleep=pytest.fail) == code
        session.assert_done()
        calls |= set(session.calls)
    return calls


OPERATOR = policies.operator_policy("ACCOUNT", "REGION", "YOUR-BUCKET")
WORKER = policies.worker_role_policy("YOUR-BUCKET")


# -- the worker role ---------------------------------------------------------------------------

def test_the_worker_role_may_list_the_bucket_so_a_missing_key_reads_as_404():
    assert allowed(WORKER, "s3:ListBucket", "arn:aws:s3:::YOUR-BUCKET")
    assert allowed(WORKER, "s3:GetObject", "arn:aws:s3:::YOUR-BUCKET/jobs/j/run/0/a")
    assert not allowed(WORKER, "s3:GetObject", "arn:aws:s3:::YOUR-BUCKET/other")
    assert not allowed(WORKER, "s3:ListBucket", "arn:aws:s3:::another-bucket")
    assert not any(a.startswith(("lambda:", "iam:", "ecr:")) for a in policies.actions(WORKER))


def test_the_old_prefix_conditioned_listing_is_what_the_evaluator_rejects():
    """Regression (issue 15): ListBucket under `s3:prefix` does not cover a GET, which carries
    no prefix, so a worker waiting for a not-yet-written key got 403 instead of 404."""
    old = {"Statement": [{"Effect": "Allow", "Action": "s3:ListBucket",
                          "Resource": "arn:aws:s3:::YOUR-BUCKET",
                          "Condition": {"StringLike": {"s3:prefix": "jobs/*"}}}]}
    assert not allowed(old, "s3:ListBucket", "arn:aws:s3:::YOUR-BUCKET")


def test_the_worker_role_allows_every_call_a_rank_makes():
    needed = {action for method, ops in called_operations(WORKER_CODE).items()
              for service, operation in ops if service == "s3"
              for action in iam_actions(service, operation)}
    assert {"s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"} <= needed
    assert needed - SET_UP_ONLY - policies.actions(WORKER) == set()


# -- the operator ------------------------------------------------------------------------------

def test_the_operator_policy_allows_every_call_of_a_whole_deploy():
    calls = recorded_calls()
    assert ("lambda", "GetAccountSettings") in calls and ("ecr", "SetRepositoryPolicy") in calls
    needed = {action for service, operation in calls
              for action in iam_actions(service, operation)}
    assert needed - policies.actions(OPERATOR) == set()


def test_the_operator_policy_allows_every_call_in_the_code():
    missing = {where: sorted(ops) for where, ops in called_operations(OPERATOR_CODE).items()
               if not any(iam_actions(*op) <= policies.actions(OPERATOR) for op in ops)}
    assert missing == {}
    assert "jaxpipe/deploy/cli.py:get_caller_identity" in called_operations(OPERATOR_CODE)


def test_the_operator_policy_allows_every_aws_command_of_the_guide():
    commands = set(re.findall(r"\baws ([a-z0-9-]+) ([a-z0-9-]+)", DOCS.read_text()))
    assert ("lambda", "delete-function") in commands and ("s3", "rb") in commands
    known = operations()
    missing = []
    for service, command in sorted(commands):
        if service in OWNER_COMMANDS:
            continue
        needed = CLI_ACTIONS.get((service, command)) or set().union(*(
            iam_actions(s, op) for s, op in known.get(command.replace("-", "_"), set())
            if s == service))
        if not needed or not needed <= policies.actions(OPERATOR):
            missing.append(f"aws {service} {command}")
    assert missing == []


def test_the_operator_may_act_only_on_jaxpipes_resources():
    assert allowed(OPERATOR, "lambda:CreateFunction",
                   "arn:aws:lambda:REGION:ACCOUNT:function:jaxpipe-worker-probe")
    assert not allowed(OPERATOR, "lambda:DeleteFunction",
                       "arn:aws:lambda:REGION:ACCOUNT:function:someone-else")
    passing = [s for s in OPERATOR["Statement"] if s["Action"] == "iam:PassRole"]
    assert passing == [{**passing[0], "Resource": "arn:aws:iam::ACCOUNT:role/jaxpipe-worker",
                        "Condition": {"StringEquals": {
                            "iam:PassedToService": "lambda.amazonaws.com"}}}]
    assert not allowed(OPERATOR, "s3:DeleteBucket", "arn:aws:s3:::another-bucket")
    everywhere = [s for s in OPERATOR["Statement"] if s["Resource"] == "*"]
    assert {a.split(":")[1] for s in everywhere for a in s["Action"]} <= {
        "GetAccountSettings", "ListFunctions", "GetAuthorizationToken", "DescribeLogGroups",
        "GetCallerIdentity"}  # reads that IAM cannot scope to a resource


# -- the guide ---------------------------------------------------------------------------------

def test_the_guide_shows_the_policies_deploy_writes():
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", DOCS.read_text(),
                                                re.DOTALL)]
    assert WORKER in blocks
    assert OPERATOR in blocks
    assert policies.lambda_pull_policy("ACCOUNT", "REGION") in blocks
