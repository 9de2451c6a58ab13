"""`jaxpipe deploy aws`: what it sets up, in the order `jaxpipe.deploy.cli.run_aws` runs it.

    region     one, said explicitly (`region.py`), passed to every client
    account    concurrency from GetAccountSettings (`functions.py`)
    image      ECR repository with a pull policy for Lambda and a lifecycle policy; the image
               built from deploy/aws/Dockerfile with the driver's jax, jaxlib, flax and optax
               (`image.py`)
    bucket     created if missing (in the deploy's region), with a rule expiring `jobs/`
    role       the functions' execution role: given by name or ARN, or created with the
               least-privilege policy of `policies.worker_role_policy` (`--create-role`)
    functions  `<prefix>-<MB>` for every memory size the account allows, each with a log group
               of bounded retention (`functions.py`)
    probe      `<prefix>-probe` reads a missing key as the worker role and must get 404
               (`probe.py`)

Every step reads the current state first and changes only what differs, so a second run
changes nothing. Each step returns `Change` records that the CLI prints. This module holds the
record and the role and bucket steps.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import botocore.exceptions

from jaxpipe.deploy import policies
from jaxpipe.deploy.errors import BucketRegionError
from jaxpipe.runtime.platforms.aws import FUNCTION_PREFIX
from planners import Platform

__all__ = ["Change", "deploy_bucket", "ensure_role", "lifecycle_rule", "memory_sizes_of",
           "parse_sizes"]

LIFECYCLE_ID = "jaxpipe-expire-jobs"
JOB_PREFIX = policies.JOB_PREFIX


@dataclass(frozen=True)
class Change:
    """What one deploy step did to one resource: "created", "updated", "unchanged", "kept"
    (someone else's setting left alone), "skipped" or "passed" (a check)."""

    resource: str
    action: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.action:9s} {self.resource}" + (f"  ({self.detail})" if self.detail else "")


# -- IAM ---------------------------------------------------------------------------------------

def ensure_role(iam: Any, role: str, bucket: str, create: bool = False,
                function_prefix: str = FUNCTION_PREFIX) -> tuple[str, list[Change]]:
    """Returns the role's ARN; with `create`, creates it or brings its inline policy up to date.

    `role` is a name or an ARN. Without `create` the role must exist (GetRole only).
    """
    name = role.rsplit("/", 1)[-1]
    policy_name = FUNCTION_PREFIX  # the inline policy is named after the default functions
    try:
        arn = iam.get_role(RoleName=name)["Role"]["Arn"]
        changes = [Change(f"role {name}", "unchanged")]
    except botocore.exceptions.ClientError as err:
        if err.response["Error"]["Code"] != "NoSuchEntity" or not create:
            raise
        arn = iam.create_role(RoleName=name,
                              AssumeRolePolicyDocument=json.dumps(policies.trust_policy()),
                              Description="JaxPipe worker functions")["Role"]["Arn"]
        changes = [Change(f"role {name}", "created")]
    if not create:
        return arn, changes
    wanted = policies.worker_role_policy(bucket, function_prefix)
    try:
        current = iam.get_role_policy(RoleName=name, PolicyName=policy_name)["PolicyDocument"]
        current = json.loads(current) if isinstance(current, str) else current
    except botocore.exceptions.ClientError as err:
        if err.response["Error"]["Code"] != "NoSuchEntity":
            raise
        current = None
    if current != wanted:
        iam.put_role_policy(RoleName=name, PolicyName=policy_name,
                            PolicyDocument=json.dumps(wanted))
        changes.append(Change(f"role policy {name}/{policy_name}",
                              "created" if current is None else "updated"))
    return arn, changes


# -- the bucket --------------------------------------------------------------------------------

def lifecycle_rule(expire_days: int) -> dict[str, Any]:
    """The rule that deletes job objects `expire_days` days after they were written."""
    return {"ID": LIFECYCLE_ID, "Filter": {"Prefix": JOB_PREFIX}, "Status": "Enabled",
            "Expiration": {"Days": int(expire_days)},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}


def deploy_bucket(s3: Any, bucket: str, expire_days: int = 7) -> list[Change]:
    """Creates the bucket if missing and sets its `jobs/` expiry rule (other rules are kept).

    The bucket is created in the client's region; an existing one must be in that region.

    Raises:
      BucketRegionError: the bucket exists in another region.
    """
    changes = []
    region = s3.meta.region_name or "us-east-1"
    try:
        found = s3.head_bucket(Bucket=bucket).get("BucketRegion")
        if found and found != region:
            raise BucketRegionError(f"bucket {bucket} is in {found}, but the functions are "
                                    f"being deployed to {region}: pass --region {found}, or "
                                    "choose a bucket in this region")
        changes.append(Change(f"bucket {bucket}", "unchanged"))
    except botocore.exceptions.ClientError as err:
        if str(err.response["Error"]["Code"]) not in ("404", "NoSuchBucket", "NotFound"):
            raise  # 403: the name belongs to another account
        extra = ({"CreateBucketConfiguration": {"LocationConstraint": region}}
                 if region != "us-east-1" else {})
        s3.create_bucket(Bucket=bucket, **extra)
        changes.append(Change(f"bucket {bucket}", "created", region))
    try:
        rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    except botocore.exceptions.ClientError as err:
        if err.response["Error"]["Code"] != "NoSuchLifecycleConfiguration":
            raise
        rules = []
    wanted = lifecycle_rule(expire_days)
    ours = [r for r in rules if r.get("ID") == LIFECYCLE_ID]
    if ours and _same_rule(ours[0], wanted):
        changes.append(Change(f"lifecycle {bucket}/{JOB_PREFIX}", "unchanged"))
        return changes
    others = [r for r in rules if r.get("ID") != LIFECYCLE_ID]
    s3.put_bucket_lifecycle_configuration(Bucket=bucket,
                                          LifecycleConfiguration={"Rules": others + [wanted]})
    changes.append(Change(f"lifecycle {bucket}/{JOB_PREFIX}", "updated" if ours else "created",
                          f"expire after {expire_days} days"))
    return changes


def _same_rule(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return all(current.get(k) == v for k, v in wanted.items())


def memory_sizes_of(plan: dict[str, Any] | None, platform: Platform) -> tuple[int, ...]:
    """The memory sizes a plan uses, or the platform's whole grid without a plan."""
    if plan is None:
        return tuple(platform.memory_options_mb)
    return tuple(sorted({int(s["memory_mb"]) for s in plan["stages"]}))


def parse_sizes(text: str | None) -> Sequence[int] | None:
    """`"1024,2048"` -> [1024, 2048]; None for no text."""
    return [int(x) for x in text.split(",") if x] if text else None
