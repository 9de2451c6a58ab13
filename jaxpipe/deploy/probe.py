"""The last step of `jaxpipe deploy aws`: read a missing key as the worker role, expect 404.

A rank's first wait for a message is a GET of a key that does not exist yet. S3 answers it
with 404 only to a caller allowed `s3:ListBucket` on the bucket, and with 403 AccessDenied to
anyone else, and the store treats 403 as a real error: with the wrong policy every job fails
after its restarts, while `calibrate` and `profile` pass (they only read keys they just
wrote). So deploy checks it where it matters, inside Lambda, as the worker role:

    deploy (this machine)                          <prefix>-probe (same image and role,
    ---------------------                          command `jaxpipe.deploy.probe.handler`)
    Invoke(RequestResponse, {bucket, key}) ---->   GetObject(bucket, jobs/_probe/<random>)
    404 NoSuchKey: passed             <--------    {"status": 404, "code": "NoSuchKey"}
    403: retried while IAM propagates,             {"status": 403, "code": "AccessDenied"}
         then ProbeFailed with the fix

The probe function costs nothing while idle; it is cleaned up with the workers (`<prefix>-*`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import botocore.exceptions

from jaxpipe.deploy.aws import Change
from jaxpipe.deploy.errors import ProbeFailed
from jaxpipe.deploy.functions import ensure_function
from jaxpipe.runtime.platforms.aws import FUNCTION_PREFIX

__all__ = ["PROBE_DELAYS_S", "client_config", "handler", "probe_function", "probe_wanted",
           "read_missing_key", "run_probe"]

HANDLER = "jaxpipe.deploy.probe.handler"
PROBE_DELAYS_S = (5.0, 10.0, 15.0, 30.0)  # a policy written seconds ago may not apply yet
PROBE_MEMORY_MB = 1024  # its cold start imports jax (through `jaxpipe`): give it a CPU share
PROBE_TIMEOUT_S = 120


# -- inside the function -----------------------------------------------------------------------

def read_missing_key(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    """GETs `key` (which should not exist); returns S3's HTTP status, error code and message."""
    try:
        s3.get_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as err:
        response = err.response
        return {"status": int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)),
                "code": str(response.get("Error", {}).get("Code", "")),
                "message": str(response.get("Error", {}).get("Message", ""))}
    return {"status": 200, "code": "", "message": "the key exists"}


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """The probe function's entry point: `read_missing_key` with the function's own role."""
    import boto3

    return read_missing_key(boto3.client("s3"), event["bucket"], event["key"])


# -- from deploy -------------------------------------------------------------------------------

def probe_function(function_prefix: str = FUNCTION_PREFIX) -> str:
    """The probe function's name, `<prefix>-probe`."""
    return f"{function_prefix}-probe"


def client_config() -> Any:
    """The Lambda client config of the probe's synchronous Invoke: a read timeout beyond the
    function's own (a first invocation pulls the image and imports jax), and one attempt only,
    so a slow answer is not retried into a second invocation."""
    import botocore.config

    return botocore.config.Config(read_timeout=PROBE_TIMEOUT_S + 30,
                                  retries={"total_max_attempts": 1, "mode": "standard"})


def probe_wanted(role_arn: str) -> dict[str, Any]:
    """The probe function's configuration: the worker image with the probe as its command."""
    return {"Role": role_arn, "MemorySize": PROBE_MEMORY_MB, "Timeout": PROBE_TIMEOUT_S,
            "EphemeralStorage": {"Size": 512}, "Environment": {"Variables": {}},
            "ImageConfig": {"Command": [HANDLER]}}


def run_probe(lam: Any, image_uri: str, role_arn: str, bucket: str,
              function_prefix: str = FUNCTION_PREFIX,
              sleep: Callable[[float], None] = time.sleep) -> list[Change]:
    """Deploys `<prefix>-probe` and reads a missing key under `jobs/` with it.

    `lam` should be made with `client_config()`.

    Raises:
      ProbeFailed: the read answered anything but 404 (a 403 after PROBE_DELAYS_S of retries),
        or the probe function itself failed; the message says what to fix.
    """
    name = probe_function(function_prefix)
    changes = [ensure_function(lam, name, image_uri, probe_wanted(role_arn), sleep=sleep,
                               description="JaxPipe deploy probe: a missing key must read as 404")]
    key = f"jobs/_probe/{uuid.uuid4().hex}"
    payload = json.dumps({"bucket": bucket, "key": key}).encode()
    result: dict[str, Any] = {}
    for delay in (0.0, *PROBE_DELAYS_S):
        if delay:
            sleep(delay)
        answer = lam.invoke(FunctionName=name, InvocationType="RequestResponse",
                            Payload=payload)
        body = answer["Payload"].read()
        if answer.get("FunctionError"):
            raise ProbeFailed(f"the probe function {name} failed ({answer['FunctionError']}): "
                              f"{body[:600].decode(errors='replace')}; if it cannot import "
                              f"{HANDLER}, the image predates this deploy: rebuild it")
        result = json.loads(body)
        if result["status"] == 404:
            changes.append(Change(f"probe {name}", "passed", f"a missing key in s3://{bucket}/"
                                  "jobs/ reads as 404 as the worker role"))
            return changes
        if result["status"] != 403:
            break
    raise ProbeFailed(
        f"as the worker role {role_arn}, reading the missing key s3://{bucket}/{key} answered "
        f"{result['status']} {result['code']} ({result['message']}), not 404. S3 answers 404 "
        f"for a missing key only to callers allowed s3:ListBucket on the bucket, so every job "
        f"would fail at its first wait. Grant s3:ListBucket on arn:aws:s3:::{bucket} with no "
        "condition (`jaxpipe deploy aws --create-role` writes that policy; see "
        "docs/aws.md), check the bucket policy and any organisation policy, then deploy again")
