"""Every AWS policy document JaxPipe writes or documents, as data, in one place.

    trust_policy          who may assume the worker role: the Lambda service only
    worker_role_policy    what a worker function may do: objects under `jobs/`, list the bucket,
                          its own logs
    lambda_pull_policy    the ECR repository policy statement that lets Lambda pull the image
    image_lifecycle_policy  the ECR lifecycle policy: keep the newest images, expire the rest
    operator_policy       what the person running `jaxpipe deploy aws`, `calibrate`, `profile`,
                          `train` and the guide's clean-up needs

`docs/aws.md` shows `worker_role_policy` and `operator_policy` verbatim (a test compares them),
and a test checks that every AWS call the code makes is allowed by the policy of whoever makes
it. Placeholders such as "ACCOUNT" are kept as given, so the guide can show them.
"""

from __future__ import annotations

from typing import Any

from jaxpipe.runtime.platforms.aws import FUNCTION_PREFIX

__all__ = ["LAMBDA_PULL_SID", "actions", "image_lifecycle_policy", "lambda_pull_policy",
           "operator_policy", "trust_policy", "worker_role_policy"]

JOB_PREFIX = "jobs/"
DEFAULT_ROLE = "jaxpipe-worker"
LAMBDA_PULL_SID = "JaxPipeLambdaPull"
LIFECYCLE_DESCRIPTION = "jaxpipe: keep the newest {n} images"
_VERSION = "2012-10-17"


def trust_policy() -> dict[str, Any]:
    """Who may assume the worker role: the Lambda service only."""
    return {"Version": _VERSION, "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
        "Action": "sts:AssumeRole"}]}


def worker_role_policy(bucket: str, function_prefix: str = FUNCTION_PREFIX,
                       region: str = "*", account: str = "*") -> dict[str, Any]:
    """The least privilege a worker function needs: objects under `jobs/`, list, its own logs.

    A worker reads, writes and deletes objects under the job prefix (including the conditional
    PUT of its claim, and aborting a failed multipart upload) and writes its CloudWatch log
    streams. It may also list the bucket, with no `s3:prefix` condition: S3 answers a GET of a
    missing key with 404 only to a caller allowed `s3:ListBucket` on the bucket, and with 403
    AccessDenied to anyone else; a GET carries no `s3:prefix`, so a conditioned grant would
    turn every wait for a not-yet-written message into AccessDenied. The bucket holds only
    JaxPipe's jobs. Nothing else: no other bucket, no Lambda or IAM calls.
    """
    logs = f"arn:aws:logs:{region}:{account}:log-group:/aws/lambda/{function_prefix}-*"
    return {"Version": _VERSION, "Statement": [
        {"Sid": "JobObjects", "Effect": "Allow",
         "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                    "s3:AbortMultipartUpload"],
         "Resource": f"arn:aws:s3:::{bucket}/{JOB_PREFIX}*"},
        {"Sid": "ListTheBucket", "Effect": "Allow", "Action": "s3:ListBucket",
         "Resource": f"arn:aws:s3:::{bucket}"},
        {"Sid": "OwnLogs", "Effect": "Allow",
         "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
         "Resource": [logs, f"{logs}:*"]},
    ]}


def lambda_pull_policy(account: str, region: str,
                       function_prefix: str = FUNCTION_PREFIX) -> dict[str, Any]:
    """The ECR repository policy that lets Lambda pull the worker image for our functions.

    Lambda reads a container image with `ecr:BatchGetImage` and `ecr:GetDownloadUrlForLayer`
    as the `lambda.amazonaws.com` service principal; the condition limits that to functions
    named `<prefix>-*` of this account and region.
    """
    return {"Version": _VERSION, "Statement": [{
        "Sid": LAMBDA_PULL_SID, "Effect": "Allow",
        "Principal": {"Service": "lambda.amazonaws.com"},
        "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
        "Condition": {"StringLike": {
            "aws:sourceArn": f"arn:aws:lambda:{region}:{account}:function:{function_prefix}-*"}},
    }]}


def image_lifecycle_policy(keep_images: int) -> dict[str, Any]:
    """The ECR lifecycle policy: images beyond the newest `keep_images` expire (storage costs).

    Example:
      >>> image_lifecycle_policy(3)["rules"][0]["selection"]["countNumber"]
      3
    """
    return {"rules": [{
        "rulePriority": 1, "description": LIFECYCLE_DESCRIPTION.format(n=int(keep_images)),
        "selection": {"tagStatus": "any", "countType": "imageCountMoreThan",
                      "countNumber": int(keep_images)},
        "action": {"type": "expire"}}]}


def operator_policy(account: str, region: str, bucket: str, role: str = DEFAULT_ROLE,
                    repository: str = "jaxpipe",
                    function_prefix: str = FUNCTION_PREFIX) -> dict[str, Any]:
    """Everything the operator's own user needs: deploy, calibrate, profile, train, clean up.

    Args:
      account: the 12-digit account id.
      region: the region of the functions and the bucket.
      bucket: the job bucket.
      role: the name of the worker role (`--role`).
      repository: the ECR repository (`--repository`).
      function_prefix: the functions are `<prefix>-<MB>`, plus `<prefix>-probe`.
    """
    functions = f"arn:aws:lambda:{region}:{account}:function:{function_prefix}-*"
    role_arn = f"arn:aws:iam::{account}:role/{role}"
    logs = f"arn:aws:logs:{region}:{account}:log-group:/aws/lambda/{function_prefix}-*"
    return {"Version": _VERSION, "Statement": [
        {"Sid": "Functions", "Effect": "Allow", "Resource": functions, "Action": [
            "lambda:CreateFunction", "lambda:GetFunction", "lambda:GetFunctionConfiguration",
            "lambda:UpdateFunctionCode", "lambda:UpdateFunctionConfiguration",
            "lambda:InvokeFunction", "lambda:GetFunctionEventInvokeConfig",
            "lambda:PutFunctionEventInvokeConfig", "lambda:DeleteFunction"]},
        {"Sid": "AccountWide", "Effect": "Allow", "Resource": "*", "Action": [
            "lambda:GetAccountSettings", "lambda:ListFunctions", "ecr:GetAuthorizationToken",
            "logs:DescribeLogGroups", "sts:GetCallerIdentity"]},
        {"Sid": "WorkerRole", "Effect": "Allow", "Resource": role_arn, "Action": [
            "iam:GetRole", "iam:CreateRole", "iam:GetRolePolicy", "iam:PutRolePolicy",
            "iam:DeleteRolePolicy", "iam:DeleteRole"]},
        {"Sid": "PassWorkerRole", "Effect": "Allow", "Resource": role_arn,
         "Action": "iam:PassRole",
         "Condition": {"StringEquals": {"iam:PassedToService": "lambda.amazonaws.com"}}},
        {"Sid": "Bucket", "Effect": "Allow", "Resource": f"arn:aws:s3:::{bucket}", "Action": [
            "s3:CreateBucket", "s3:ListBucket", "s3:GetBucketLocation",
            "s3:GetLifecycleConfiguration", "s3:PutLifecycleConfiguration", "s3:DeleteBucket"]},
        {"Sid": "JobObjects", "Effect": "Allow",
         "Resource": f"arn:aws:s3:::{bucket}/{JOB_PREFIX}*", "Action": [
             "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]},
        {"Sid": "Image", "Effect": "Allow",
         "Resource": f"arn:aws:ecr:{region}:{account}:repository/{repository}", "Action": [
             "ecr:CreateRepository", "ecr:DescribeRepositories", "ecr:DescribeImages",
             "ecr:GetRepositoryPolicy", "ecr:SetRepositoryPolicy", "ecr:GetLifecyclePolicy",
             "ecr:PutLifecyclePolicy", "ecr:BatchCheckLayerAvailability",
             "ecr:InitiateLayerUpload", "ecr:UploadLayerPart", "ecr:CompleteLayerUpload",
             "ecr:PutImage", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
             "ecr:BatchDeleteImage", "ecr:DeleteRepository"]},
        {"Sid": "Logs", "Effect": "Allow", "Resource": [logs, f"{logs}:*"], "Action": [
            "logs:CreateLogGroup", "logs:PutRetentionPolicy", "logs:DeleteLogGroup",
            "logs:DescribeLogStreams", "logs:FilterLogEvents", "logs:GetLogEvents",
            "logs:StartLiveTail"]},
    ]}


def actions(policy: dict[str, Any]) -> set[str]:
    """Every action the policy's Allow statements name.

    Example:
      >>> sorted(actions(trust_policy()))
      ['sts:AssumeRole']
    """
    found: set[str] = set()
    for statement in policy["Statement"]:
        if statement.get("Effect") == "Allow":
            action = statement["Action"]
            found.update([action] if isinstance(action, str) else action)
    return found
