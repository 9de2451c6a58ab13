"""The worker functions: `<prefix>-<MB>` for every memory size the account allows.

    function    PackageType Image, timeout 900 s, asynchronous retries off
                (MaximumRetryAttempts=0), stale events dropped (MaximumEventAgeInSeconds)
    log group   /aws/lambda/<function>, created up front with a retention period (CloudWatch
                keeps logs forever by default, and bills their storage)
    account     `GetAccountSettings` gives the concurrency a job may use (one execution per
                rank); it does not report the per-function memory limit (3008 MB on many new
                accounts), which Lambda states only by refusing a larger function: deploy reads
                that refusal, skips that size and every larger one, and says how to ask for more
    role        a role created seconds earlier may not be assumable by Lambda yet (IAM is
                eventually consistent): exactly that refusal is retried, with bounded backoff

Every step reads the current state first and changes only what differs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import botocore.exceptions

from jaxpipe.deploy.aws import Change
from jaxpipe.deploy.errors import MemoryQuotaError, RolePropagationError
from jaxpipe.runtime.platforms.aws import FUNCTION_PREFIX, function_name
from planners import Platform

__all__ = ["CONCURRENCY_QUOTA_CODE", "LOG_RETENTION_DAYS", "ROLE_PROPAGATION_DELAYS_S",
           "AccountLimits", "FunctionConfig", "FunctionsOutcome", "deploy_functions",
           "ensure_function", "ensure_log_group", "ranks_of", "read_account_limits",
           "sizes_outside_lambda"]

ROLE_PROPAGATION_DELAYS_S = (2.0, 4.0, 8.0, 15.0, 15.0, 15.0, 15.0, 15.0)  # 89 s in all
ROLE_NOT_ASSUMABLE = "cannot be assumed by Lambda"
CONCURRENCY_QUOTA_CODE = "L-B99A9384"  # Service Quotas: Lambda "Concurrent executions"
LOG_RETENTION_DAYS = 14
RETENTION_CHOICES = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827,
                     2192, 2557, 2922, 3288, 3653)  # what PutRetentionPolicy accepts
_WAIT = {"Delay": 2, "MaxAttempts": 150}
_MEMORY_LIMIT = re.compile(r"less than or equal to (\d+)")
Sleep = Callable[[float], None]


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
      log_retention_days: how long CloudWatch keeps each function's logs.
    """

    image_uri: str
    role_arn: str
    memory_sizes: tuple[int, ...]
    function_prefix: str = FUNCTION_PREFIX
    timeout_s: int = 900
    ephemeral_storage_mb: int = 512
    max_event_age_s: int = 900
    architecture: str = "x86_64"
    log_retention_days: int = LOG_RETENTION_DAYS
    platform: Platform | None = field(default=None, compare=False)

    def environment(self, memory_mb: int) -> dict[str, str]:
        """Environment of the function of `memory_mb` MB: below 1.5 vCPUs, no Eigen pool."""
        env = {"JAX_PLATFORMS": "cpu"}
        if self.platform is not None and self.platform.cpus(memory_mb) < 1.5:
            env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false"
        return env

    def wanted(self, memory_mb: int) -> dict[str, Any]:
        """The configuration fields of `<prefix>-<memory_mb>` that deploy keeps as given."""
        return {"Role": self.role_arn, "MemorySize": memory_mb, "Timeout": self.timeout_s,
                "EphemeralStorage": {"Size": self.ephemeral_storage_mb},
                "Environment": {"Variables": self.environment(memory_mb)}}


@dataclass(frozen=True)
class AccountLimits:
    """What `GetAccountSettings` says about concurrency: a job runs one execution per rank."""

    concurrent_executions: int
    unreserved_concurrent_executions: int

    def describe(self, ranks: int | None = None) -> str:
        """A line for the operator; with `ranks` (a plan's), whether the plan fits."""
        text = (f"account: {self.concurrent_executions} concurrent executions, "
                f"{self.unreserved_concurrent_executions} unreserved; a job runs one per rank, "
                f"so plan with --max-functions {self.unreserved_concurrent_executions} or fewer")
        if ranks is not None and ranks > self.unreserved_concurrent_executions:
            text += (f"\nWARNING: the plan runs {ranks} ranks at once, above the "
                     f"{self.unreserved_concurrent_executions} this account allows; ask for "
                     "more: aws service-quotas request-service-quota-increase --service-code "
                     f"lambda --quota-code {CONCURRENCY_QUOTA_CODE} --desired-value "
                     f"{max(ranks, 100)}")
        return text


def read_account_limits(lam: Any) -> AccountLimits:
    """The account's Lambda concurrency (`GetAccountSettings`)."""
    limit = lam.get_account_settings()["AccountLimit"]
    return AccountLimits(int(limit["ConcurrentExecutions"]),
                         int(limit["UnreservedConcurrentExecutions"]))


@dataclass(frozen=True)
class FunctionsOutcome:
    """What `deploy_functions` did: its changes, the sizes deployed and those skipped."""

    changes: tuple[Change, ...]
    deployed: tuple[int, ...]
    skipped: tuple[int, ...] = ()
    limit_mb: int | None = None
    refusal: str = ""

    def skipped_message(self) -> str:
        """Why sizes were skipped and how to raise the limit ('' if none were)."""
        if not self.skipped:
            return ""
        limit = (f"at most {self.limit_mb} MB" if self.limit_mb else
                 f"less than {self.skipped[0]} MB")
        fits = sorted({*self.deployed, *([self.limit_mb] if self.limit_mb else [])})
        return (f"skipped {', '.join(map(str, self.skipped))} MB: this account allows functions "
                f"of {limit} (Lambda: {self.refusal!r}). Deploy sizes that fit (e.g. --memory "
                f"{','.join(map(str, fits))}) and plan only with sizes that exist (a "
                "--platform-file with {\"platform\": {\"memory_options_mb\": "
                f"[{', '.join(map(str, fits))}]}}}}). To raise the limit, open a case in the AWS "
                "Support Center (Create case > Service limit increase > Lambda, function "
                "memory), then run deploy again.")


def deploy_functions(lam: Any, config: FunctionConfig, logs: Any = None,
                     sleep: Sleep = time.sleep) -> FunctionsOutcome:
    """Creates or updates `<prefix>-<MB>` for every memory size, smallest first.

    A size the account refuses (memory limit) is skipped with every larger one. With `logs`
    (a CloudWatch Logs client) each function's log group gets `config.log_retention_days`.

    Raises:
      MemoryQuotaError: the account allows none of the sizes.
      RolePropagationError: Lambda could not assume the role within the bounded wait.
    """
    changes: list[Change] = []
    deployed: list[int] = []
    sizes = sorted(config.memory_sizes)
    for i, memory_mb in enumerate(sizes):
        name = function_name(memory_mb, config.function_prefix)
        try:
            changes.append(ensure_function(lam, name, config.image_uri, config.wanted(memory_mb),
                                           config.architecture, sleep))
        except botocore.exceptions.ClientError as err:
            limit = _memory_limit(err)
            if limit is None:
                raise
            outcome = FunctionsOutcome(tuple(changes), tuple(deployed), tuple(sizes[i:]),
                                       limit[0], limit[1])
            if not deployed:
                raise MemoryQuotaError(outcome.skipped_message()) from err
            return outcome
        changes.append(_ensure_async_config(lam, name, config))
        if logs is not None:
            changes.append(ensure_log_group(logs, name, config.log_retention_days))
        deployed.append(memory_mb)
    return FunctionsOutcome(tuple(changes), tuple(deployed))


def _memory_limit(err: botocore.exceptions.ClientError) -> tuple[int | None, str] | None:
    """(the limit in MB if stated, Lambda's message) when `err` refuses a memory size."""
    code, message = err.response["Error"]["Code"], str(err.response["Error"].get("Message", ""))
    if code not in ("InvalidParameterValueException", "ValidationException") or \
            not re.search(r"memory ?size", message, re.IGNORECASE):
        return None
    match = _MEMORY_LIMIT.search(message)
    return (int(match.group(1)) if match else None), message


def _role_retried(call: Callable[[], Any], role: str, sleep: Sleep) -> tuple[Any, int]:
    """Runs `call`, retrying only Lambda's "role cannot be assumed"; (result, retries)."""
    for retries, delay in enumerate((*ROLE_PROPAGATION_DELAYS_S, None)):
        try:
            return call(), retries
        except botocore.exceptions.ClientError as err:
            error = err.response["Error"]
            if error["Code"] != "InvalidParameterValueException" or \
                    ROLE_NOT_ASSUMABLE not in str(error.get("Message", "")):
                raise
            if delay is None:
                raise RolePropagationError(
                    f"Lambda still cannot assume {role} after {sum(ROLE_PROPAGATION_DELAYS_S):.0f}"
                    f" s ({error.get('Message')}): a new role takes a while to propagate, so "
                    "run deploy again in a minute; if it persists, check that the role's trust "
                    "policy lets lambda.amazonaws.com assume it") from err
            sleep(delay)
    raise AssertionError("unreachable")


def ensure_function(lam: Any, name: str, image_uri: str, wanted: dict[str, Any],
                    architecture: str = "x86_64", sleep: Sleep = time.sleep,
                    description: str = "JaxPipe worker: one pipeline rank per invocation"
                    ) -> Change:
    """Creates function `name` from `image_uri` with the `wanted` configuration, or brings an
    existing one up to date (its image, then whichever fields differ)."""
    role = wanted["Role"]
    try:
        current = lam.get_function(FunctionName=name)
    except lam.exceptions.ResourceNotFoundException:
        _, retries = _role_retried(lambda: lam.create_function(
            FunctionName=name, PackageType="Image", Code={"ImageUri": image_uri},
            Architectures=[architecture],
            Description=description, **wanted),
            role, sleep)
        lam.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig=_WAIT)
        waited = f", after {retries} retries for IAM to propagate the role" if retries else ""
        return Change(f"function {name}", "created",
                      f"{wanted['MemorySize']} MB, {image_uri}{waited}")
    conf = current["Configuration"]
    differs = {k: v for k, v in wanted.items() if _current(conf, k) != v}
    updated = []
    if current.get("Code", {}).get("ImageUri") != image_uri:
        lam.update_function_code(FunctionName=name, ImageUri=image_uri)
        lam.get_waiter("function_updated_v2").wait(FunctionName=name, WaiterConfig=_WAIT)
        updated.append("image")
    if differs:
        _role_retried(lambda: lam.update_function_configuration(FunctionName=name, **differs),
                      role, sleep)
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
    if key == "ImageConfig":
        return conf.get("ImageConfigResponse", {}).get("ImageConfig", {})
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


def ensure_log_group(logs: Any, function: str, retention_days: int) -> Change:
    """Creates `/aws/lambda/<function>` if missing and sets its retention to `retention_days`.

    Raises:
      ValueError: `retention_days` is not one CloudWatch accepts (RETENTION_CHOICES).
    """
    if retention_days not in RETENTION_CHOICES:
        raise ValueError(f"log retention must be one of {RETENTION_CHOICES} days, not "
                         f"{retention_days}")
    group = f"/aws/lambda/{function}"
    found = [g for g in logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]
             if g["logGroupName"] == group]
    if found and found[0].get("retentionInDays") == retention_days:
        return Change(f"log group {group}", "unchanged")
    if not found:
        try:
            logs.create_log_group(logGroupName=group)
        except logs.exceptions.ResourceAlreadyExistsException:
            pass  # Lambda created it between the two calls
    logs.put_retention_policy(logGroupName=group, retentionInDays=retention_days)
    return Change(f"log group {group}", "updated" if found else "created",
                  f"retention {retention_days} days")


def ranks_of(plan: dict[str, Any] | None) -> int | None:
    """How many functions a plan runs at once (its ranks), or None without a plan."""
    if plan is None:
        return None
    return sum(int(s.get("replicas", 1)) for s in plan["stages"])


def sizes_outside_lambda(sizes: Sequence[int]) -> list[int]:
    """The sizes outside Lambda's 128-10240 MB range (empty when all fit)."""
    return [m for m in sizes if not 128 <= m <= 10240]
