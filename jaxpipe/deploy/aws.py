"""`jaxpipe deploy aws`: the worker image, one Lambda function per memory size, and the bucket.

    image      deploy/aws/Dockerfile -> ECR `<account>.dkr.ecr.<region>.amazonaws.com/<repo>:<tag>`
               (the tag hashes the sources, so changed code is a new tag and a function update)
    role       the functions' execution role: given by name or ARN, or created with the
               least-privilege policy of `worker_role_policy` (`--create-role`)
    functions  `<prefix>-<MB>` for every memory size: PackageType Image, timeout 900 s,
               asynchronous retries off (MaximumRetryAttempts=0), stale events dropped
    bucket     created if missing, with a lifecycle rule expiring `jobs/` after N days

Every step reads the current state first and changes only what differs, so a second run
changes nothing. Each step returns `Change` records that the CLI prints.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.exceptions

from jaxpipe.runtime.platforms.aws import FUNCTION_PREFIX, function_name
from planners import Platform

__all__ = ["Change", "FunctionConfig", "deploy_bucket", "deploy_functions", "ensure_role",
           "image_commands", "lifecycle_rule", "source_tag", "trust_policy",
           "worker_role_policy"]

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = "deploy/aws/Dockerfile"
LIFECYCLE_ID = "jaxpipe-expire-jobs"
JOB_PREFIX = "jobs/"
_WAIT = {"Delay": 2, "MaxAttempts": 150}


@dataclass(frozen=True)
class Change:
    """What one deploy step did to one resource: "created", "updated" or "unchanged"."""

    resource: str
    action: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.action:9s} {self.resource}" + (f"  ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class FunctionConfig:
    """The desired configuration of the worker functions.

    Attributes:
      image_uri: the worker image in ECR.
      role_arn: the execution role.
      memory_sizes: one function per size, in MB (Lambda: 128-10240).
      function_prefix: functions are `<prefix>-<MB>`.
      timeout_s: Lambda's maximum, 900 s; a rank hands over well before it.
      ephemeral_storage_mb: size of /tmp, MB (512 is free).
      max_event_age_s: a queued event older than this is dropped, not run late (60-21600 s).
      architecture: "x86_64" (the image is built for linux/amd64).
    """

    image_uri: str
    role_arn: str
    memory_sizes: tuple[int, ...]
    function_prefix: str = FUNCTION_PREFIX
    timeout_s: int = 900
    ephemeral_storage_mb: int = 512
    max_event_age_s: int = 900
    architecture: str = "x86_64"
    platform: Platform | None = field(default=None, compare=False)

    def environment(self, memory_mb: int) -> dict[str, str]:
        """Environment of the function of `memory_mb` MB: below 1.5 vCPUs, one XLA thread."""
        env = {"JAX_PLATFORMS": "cpu"}
        if self.platform is not None and self.platform.cpus(memory_mb) < 1.5:
            env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        return env


# -- the image ---------------------------------------------------------------------------------

def source_tag(root: Path = REPO) -> str:
    """A tag naming the worker's code: a hash of the packages, pyproject and Dockerfile."""
    digest = hashlib.sha256()
    files = [root / "pyproject.toml", root / DOCKERFILE]
    for package in ("jaxpipe", "planners", "transports"):
        files += sorted((root / package).rglob("*.py"))
    for path in files:
        if path.exists():
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def image_commands(account: str, region: str, repository: str, tag: str,
                   jax_version: str) -> list[str]:
    """The shell commands that build the worker image and push it to ECR."""
    registry = f"{account}.dkr.ecr.{region}.amazonaws.com"
    return [
        (f"aws ecr describe-repositories --region {region} --repository-names {repository} "
        f">/dev/null 2>&1 || aws ecr create-repository --region {region} "
        f"--repository-name {repository} --image-scanning-configuration scanOnPush=true"),
        (f"aws ecr get-login-password --region {region} | docker login --username AWS "
        f"--password-stdin {registry}"),
        # Lambda refuses image indexes with attestations: --provenance=false keeps one manifest
        (f"docker build --platform linux/amd64 --provenance=false --build-arg "
        f"JAX_VERSION={jax_version} -t {registry}/{repository}:{tag} -f {DOCKERFILE} ."),
        f"docker push {registry}/{repository}:{tag}",
    ]


# -- IAM ---------------------------------------------------------------------------------------

def trust_policy() -> dict[str, Any]:
    """Who may assume the worker role: the Lambda service only."""
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
        "Action": "sts:AssumeRole"}]}


def worker_role_policy(bucket: str, function_prefix: str = FUNCTION_PREFIX,
                       region: str = "*", account: str = "*") -> dict[str, Any]:
    """The least privilege a worker function needs: objects under `jobs/` and its own logs.

    A worker reads, writes and deletes objects under the job prefix (including the
    conditional PUT of its claim), lists only under that prefix (`delete_prefix`, the
    checkpoint scan), and writes its CloudWatch log streams. Nothing else: no other bucket
    path, no Lambda or IAM calls.
    """
    logs = f"arn:aws:logs:{region}:{account}:log-group:/aws/lambda/{function_prefix}-*"
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "JobObjects", "Effect": "Allow",
         "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
         "Resource": f"arn:aws:s3:::{bucket}/{JOB_PREFIX}*"},
        {"Sid": "ListJobPrefix", "Effect": "Allow", "Action": "s3:ListBucket",
         "Resource": f"arn:aws:s3:::{bucket}",
         "Condition": {"StringLike": {"s3:prefix": f"{JOB_PREFIX}*"}}},
        {"Sid": "OwnLogs", "Effect": "Allow",
         "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
         "Resource": [logs, f"{logs}:*"]},
    ]}


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
        arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust_policy()),
                              Description="JaxPipe worker functions")["Role"]["Arn"]
        changes = [Change(f"role {name}", "created")]
    if not create:
        return arn, changes
    wanted = worker_role_policy(bucket, function_prefix)
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


# -- functions ---------------------------------------------------------------------------------

def deploy_functions(lam: Any, config: FunctionConfig) -> list[Change]:
    """Creates or updates `<prefix>-<MB>` for every memory size; unchanged ones are untouched."""
    changes = []
    for memory_mb in config.memory_sizes:
        name = function_name(memory_mb, config.function_prefix)
        changes.append(_ensure_function(lam, name, memory_mb, config))
        changes.append(_ensure_async_config(lam, name, config))
    return changes


def _wanted(memory_mb: int, config: FunctionConfig) -> dict[str, Any]:
    return {"Role": config.role_arn, "MemorySize": memory_mb, "Timeout": config.timeout_s,
            "EphemeralStorage": {"Size": config.ephemeral_storage_mb},
            "Environment": {"Variables": config.environment(memory_mb)}}


def _ensure_function(lam: Any, name: str, memory_mb: int, config: FunctionConfig) -> Change:
    wanted = _wanted(memory_mb, config)
    try:
        current = lam.get_function(FunctionName=name)
    except lam.exceptions.ResourceNotFoundException:
        lam.create_function(FunctionName=name, PackageType="Image",
                            Code={"ImageUri": config.image_uri},
                            Architectures=[config.architecture],
                            Description="JaxPipe worker: one pipeline rank per invocation",
                            **wanted)
        lam.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig=_WAIT)
        return Change(f"function {name}", "created", f"{memory_mb} MB, {config.image_uri}")
    conf = current["Configuration"]
    differs = {k: v for k, v in wanted.items() if _current(conf, k) != v}
    updated = []
    if current.get("Code", {}).get("ImageUri") != config.image_uri:
        lam.update_function_code(FunctionName=name, ImageUri=config.image_uri)
        lam.get_waiter("function_updated_v2").wait(FunctionName=name, WaiterConfig=_WAIT)
        updated.append("image")
    if differs:
        lam.update_function_configuration(FunctionName=name, **differs)
        lam.get_waiter("function_updated_v2").wait(FunctionName=name, WaiterConfig=_WAIT)
        updated += sorted(differs)
    if updated:
        return Change(f"function {name}", "updated", ", ".join(updated))
    return Change(f"function {name}", "unchanged")


def _current(conf: dict[str, Any], key: str) -> Any:
    if key == "EphemeralStorage":
        return {"Size": conf.get("EphemeralStorage", {}).get("Size", 512)}
    if key == "Environment":
        return {"Variables": conf.get("Environment", {}).get("Variables", {})}
    return conf.get(key)


def _ensure_async_config(lam: Any, name: str, config: FunctionConfig) -> Change:
    """Asynchronous retries off: a failed rank is restarted by the driver, from a checkpoint,
    with a new attempt number; Lambda's own retry would re-run a stale window."""
    try:
        current = lam.get_function_event_invoke_config(FunctionName=name)
    except lam.exceptions.ResourceNotFoundException:
        current = None
    if current is not None and current.get("MaximumRetryAttempts") == 0 and \
            current.get("MaximumEventAgeInSeconds") == config.max_event_age_s:
        return Change(f"async config {name}", "unchanged")
    lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=0,
                                         MaximumEventAgeInSeconds=config.max_event_age_s)
    return Change(f"async config {name}", "created" if current is None else "updated",
                  f"retries 0, max event age {config.max_event_age_s} s")


# -- the bucket --------------------------------------------------------------------------------

def lifecycle_rule(expire_days: int) -> dict[str, Any]:
    """The rule that deletes job objects `expire_days` days after they were written."""
    return {"ID": LIFECYCLE_ID, "Filter": {"Prefix": JOB_PREFIX}, "Status": "Enabled",
            "Expiration": {"Days": int(expire_days)},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}


def deploy_bucket(s3: Any, bucket: str, expire_days: int = 7) -> list[Change]:
    """Creates the bucket if missing and sets its `jobs/` expiry rule (other rules are kept)."""
    changes = []
    try:
        s3.head_bucket(Bucket=bucket)
        changes.append(Change(f"bucket {bucket}", "unchanged"))
    except botocore.exceptions.ClientError as err:
        if str(err.response["Error"]["Code"]) not in ("404", "NoSuchBucket", "NotFound"):
            raise  # 403: the name belongs to another account
        region = s3.meta.region_name
        extra = ({"CreateBucketConfiguration": {"LocationConstraint": region}}
                 if region and region != "us-east-1" else {})
        s3.create_bucket(Bucket=bucket, **extra)
        changes.append(Change(f"bucket {bucket}", "created", region or "us-east-1"))
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
    return [int(x) for x in text.split(",") if x] if text else None
