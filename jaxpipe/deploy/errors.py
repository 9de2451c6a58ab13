"""The mistakes `jaxpipe deploy aws` (and the cloud side of `calibrate` and `profile`) reports.

Each derives from the families of `jaxpipe.errors`: an `InputError` is refused before anything
in the account changes; a `DeployFailed` means deploy stopped part-way, and running it again
after the fix carries on where it stopped (every step reads the current state first).
"""

from __future__ import annotations

from jaxpipe.errors import InputError, JaxPipeError

__all__ = ["BucketRegionError", "DeployFailed", "MemoryQuotaError", "ProbeFailed",
           "RegionError", "RolePropagationError"]


class RegionError(InputError):
    """No AWS region was given, or two variables name different ones.

    Fix: pass `--region us-east-1` (or your region), or export `AWS_REGION` (or
    `AWS_DEFAULT_REGION`, the one boto3 reads); if both are set they must agree. JaxPipe never
    falls back to a default region, since the bucket and the functions must share one.
    """


class BucketRegionError(InputError):
    """The bucket exists in another region than the one the functions are deployed to.

    Fix: deploy to the bucket's region (`--region`), or choose a bucket name in this region;
    workers reading across regions pay for the transfer and its latency on every message.
    """


class MemoryQuotaError(InputError):
    """The account allows none of the requested memory sizes.

    Fix: the message names the account's limit: deploy sizes at or below it (`--memory`), or ask
    AWS to raise it (the message says how).
    """


class DeployFailed(JaxPipeError, RuntimeError):
    """Deploy stopped part-way; what it changed so far stays, and a second run resumes."""


class RolePropagationError(DeployFailed):
    """Lambda still could not assume the execution role after the bounded wait.

    Fix: a role created seconds ago needs time to propagate through IAM; run deploy again in a
    minute. If it keeps failing, check that the role's trust policy lets `lambda.amazonaws.com`
    assume it (`jaxpipe.deploy.policies.trust_policy`).
    """


class ProbeFailed(DeployFailed):
    """The worker role cannot read the bucket the way a running job needs.

    Fix: the message quotes S3's answer. A 403 for a missing key means the role lacks
    `s3:ListBucket` on the bucket (or a bucket policy or an organisation policy denies it):
    grant it without a condition (`--create-role` writes that policy) and run deploy again.
    """
