"""What `jaxpipe train --platform aws-lambda` checks before any work, so a run never dies in
the middle of its launch, after earlier ranks started and are billed:

    region       one region for every client (`--region`, AWS_REGION / AWS_DEFAULT_REGION,
                 the profile's), never a silent default (`jaxpipe.deploy.region`); the bucket
                 must be in it
    functions    `GetFunction` of `<prefix>-<MB>` for every memory size the platform offers:
                 the plan may use only sizes whose function exists, is `Active` and whose last
                 update succeeded (`State`, `LastUpdateStatus`); the planner sees only those
    versions     the functions' image tag names the jax, jaxlib, flax and optax it installed
                 (`jaxpipe.deploy.image.source_tag`); they must be the driver's
    concurrency  `GetAccountSettings`: a job runs one execution per rank at once, so the plan's
                 functions must fit the unreserved concurrency (new accounts often have 10)

Every rule is a function of the answers (dicts as boto3 returns them), so the rules are tested
as data; `read_functions` and `read_unreserved` are the only calls.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from jaxpipe.errors import ConcurrencyError, FunctionsNotReadyError, VersionMismatchError
from jaxpipe.runtime.platforms.aws import FUNCTION_PREFIX, function_name, lambda_client
from jaxpipe.versions import Versions, driver_versions
from planners import Plan, Platform

if TYPE_CHECKING:
    from jaxpipe.runtime.options import TrainOptions

__all__ = ["CONCURRENCY_QUOTA_CODE", "FunctionState", "check_bucket_region", "check_concurrency",
           "check_image_versions", "check_plan_functions", "check_train", "plan_functions",
           "read_functions", "read_unreserved", "restrict_platform", "train_region",
           "unreserved_of"]

CONCURRENCY_QUOTA_CODE = "L-B99A9384"  # Service Quotas: Lambda "Concurrent executions"


@dataclass(frozen=True)
class FunctionState:
    """A worker function as `GetFunction` describes it (None in a map: it does not exist).

    Example:
      >>> answer = {"Configuration": {"State": "Active", "LastUpdateStatus": "Successful",
      ...                             "MemorySize": 2048},
      ...           "Code": {"ImageUri": "a/jaxpipe:h-jax1-jaxlib1-flax2-optax3"}}
      >>> s = FunctionState.from_answer("jaxpipe-worker-2048", answer)
      >>> s.ready, s.versions.flax
      (True, '2')
    """

    name: str
    memory_mb: int
    state: str | None
    last_update: str | None
    image_uri: str | None
    reason: str = ""

    @classmethod
    def from_answer(cls, name: str, answer: Mapping[str, Any]) -> FunctionState:
        conf = answer.get("Configuration", {})
        reason = conf.get("StateReason") or conf.get("LastUpdateStatusReason") or ""
        return cls(name, int(conf.get("MemorySize", 0)), conf.get("State"),
                   conf.get("LastUpdateStatus"), answer.get("Code", {}).get("ImageUri"),
                   str(reason))

    @property
    def ready(self) -> bool:
        """Active, and not in the middle of (or failed in) an update."""
        return self.state == "Active" and self.last_update in (None, "Successful")

    @property
    def versions(self) -> Versions | None:
        """The versions its image tag names, or None (an image not tagged by deploy)."""
        if not self.image_uri or ":" not in self.image_uri.rsplit("/", 1)[-1]:
            return None
        return Versions.from_tag(self.image_uri.rsplit(":", 1)[1])

    def describe(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return f"{self.name}: State {self.state}, LastUpdateStatus {self.last_update}{why}"


def read_functions(lam: Any, sizes: Iterable[int], prefix: str = FUNCTION_PREFIX,
                   ) -> dict[int, FunctionState | None]:
    """`GetFunction` of `<prefix>-<MB>` for each size; None where the function does not exist."""
    found: dict[int, FunctionState | None] = {}
    for memory_mb in sizes:
        name = function_name(memory_mb, prefix)
        try:
            found[memory_mb] = FunctionState.from_answer(name, lam.get_function(FunctionName=name))
        except lam.exceptions.ResourceNotFoundException:
            found[memory_mb] = None
    return found


def read_unreserved(lam: Any) -> int:
    """The account's unreserved concurrent executions (`GetAccountSettings`)."""
    return unreserved_of(lam.get_account_settings())


def unreserved_of(answer: Mapping[str, Any]) -> int:
    """`UnreservedConcurrentExecutions` of a `GetAccountSettings` answer.

    Example:
      >>> unreserved_of({"AccountLimit": {"ConcurrentExecutions": 10,
      ...                                 "UnreservedConcurrentExecutions": 10}})
      10
    """
    return int(answer["AccountLimit"]["UnreservedConcurrentExecutions"])


def restrict_platform(platform: Platform, states: Mapping[int, FunctionState | None],
                      prefix: str = FUNCTION_PREFIX) -> Platform:
    """The platform with only the memory sizes whose functions are ready, for the planner.

    Raises:
      FunctionsNotReadyError: none is ready; the message names each size and its state.
    """
    ready = tuple(m for m in platform.memory_options_mb if (s := states.get(m)) and s.ready)
    if not ready:
        raise FunctionsNotReadyError(
            f"no worker function is ready for any of {list(platform.memory_options_mb)} MB:\n"
            + _listing(states, prefix) + "\nrun `jaxpipe deploy aws --memory ...` first")
    return replace(platform, memory_options_mb=ready)


def plan_functions(plan: Plan) -> int:
    """Functions a plan runs at once: one per rank (every replica of every stage)."""
    return sum(s.replicas for s in plan.stages)


def check_plan_functions(plan: Plan, states: Mapping[int, FunctionState | None],
                         prefix: str = FUNCTION_PREFIX) -> None:
    """Refuses a plan that uses a memory size whose function is missing or not ready.

    Raises:
      FunctionsNotReadyError: the message names each such size and its state.
    """
    used = sorted({s.memory_mb for s in plan.stages})
    bad = [m for m in used if not ((s := states.get(m)) and s.ready)]
    if bad:
        raise FunctionsNotReadyError(
            f"the plan uses {', '.join(map(str, bad))} MB, whose functions are not ready:\n"
            + _listing({m: states.get(m) for m in bad}, prefix)
            + f"\ndeploy them (`jaxpipe deploy aws --memory {','.join(map(str, used))}`), wait "
            "for an update to finish, or plan without them")


def check_concurrency(plan: Plan | None, max_functions: int, unreserved: int) -> None:
    """Refuses a plan (or, before planning, a `--max-functions`) above the unreserved
    concurrency: Lambda would queue the ranks beyond it while the others wait on them.

    Raises:
      ConcurrencyError: with the numbers and how to ask for more.

    Example:
      >>> check_concurrency(None, max_functions=8, unreserved=10)
    """
    wanted = plan_functions(plan) if plan is not None else max_functions
    if wanted <= unreserved:
        return
    what = (f"the plan runs {wanted} functions at once" if plan is not None else
            f"--max-functions {wanted} lets the plan run that many functions at once")
    raise ConcurrencyError(
        f"{what}, and this account's unreserved concurrency is {unreserved}: plan with "
        f"--max-functions {unreserved} or fewer, or ask for more: aws service-quotas "
        f"request-service-quota-increase --service-code lambda --quota-code "
        f"{CONCURRENCY_QUOTA_CODE} --desired-value {max(wanted, 100)}")


def check_image_versions(states: Mapping[int, FunctionState | None], driver: Versions,
                         sizes: Iterable[int] | None = None) -> None:
    """Refuses functions whose image was built for other package versions than the driver's
    (an image tag that names none is not judged here; the worker checks the job's versions).

    Raises:
      VersionMismatchError: naming the function, its tag's versions and the driver's.
    """
    for memory_mb in sorted(sizes if sizes is not None else states):
        state = states.get(memory_mb)
        found = state.versions if state is not None else None
        if state is None or found is None or found == driver:
            continue
        raise VersionMismatchError(
            f"{state.name} runs {state.image_uri}, built for {found.tag_part()}; this driver "
            f"has {driver.tag_part()}. Redeploy the image from this environment (`jaxpipe "
            "deploy aws` tags it with the driver's versions), or train from an environment "
            "with the image's versions.")


def _listing(states: Mapping[int, FunctionState | None], prefix: str) -> str:
    lines = []
    for memory_mb, state in sorted(states.items()):
        lines.append(f"  {function_name(memory_mb, prefix)}: does not exist" if state is None
                     else f"  {state.describe()}")
    return "\n".join(lines)


def check_bucket_region(s3: Any, bucket: str, region: str) -> None:
    """Refuses a bucket in another region than the functions' (every message would cross
    regions, paying for the transfer and its latency).

    Raises:
      BucketRegionError: naming both regions.
    """
    from jaxpipe.deploy.errors import BucketRegionError

    found = s3.head_bucket(Bucket=bucket).get("BucketRegion")
    if found and found != region:
        raise BucketRegionError(f"bucket {bucket} is in {found}, but the functions are in "
                                f"{region}: pass --region {found}, or use a bucket in {region}")


def train_region(region: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The one region of a training run: `--region`, the environment's, else the profile's.

    Raises:
      RegionError: none is given, or AWS_REGION and AWS_DEFAULT_REGION disagree.
    """
    from jaxpipe.deploy.region import REGION_VARIABLES, profile_region, resolve_region

    environ = os.environ if environ is None else environ
    needed = not region and not any(environ.get(v) for v in REGION_VARIABLES)
    return resolve_region(region, environ, profile_region(environ) if needed else None).name


def check_train(options: TrainOptions, platform: Platform, plan: Plan | None, lam: Any = None,
                s3: Any = None, environ: Mapping[str, str] | None = None) -> Platform:
    """Every check of the module docstring, in that order, for a run of `options`; returns
    the platform with only the memory sizes whose functions are ready (for the planner).

    Args:
      plan: the plan the run will use if it is known (a plan file, a resumed job), else None:
        then `options.max_functions` must fit the concurrency, and the planner plans only over
        the ready sizes.
      lam, s3: Lambda and S3 clients (default: boto3's, in the run's region).

    Raises:
      RegionError, BucketRegionError, FunctionsNotReadyError, VersionMismatchError,
      ConcurrencyError: before anything is uploaded or launched.
    """
    region = train_region(options.region, environ)
    if s3 is None:
        import boto3

        s3 = boto3.client("s3", region_name=region, endpoint_url=options.endpoint_url)
    lam = lam if lam is not None else lambda_client(region_name=region)
    check_bucket_region(s3, options.store.removeprefix("s3://").strip("/"), region)
    sizes = set(platform.memory_options_mb) | {s.memory_mb for s in (plan.stages if plan else ())}
    states = read_functions(lam, sorted(sizes), options.function_prefix)
    if plan is not None:
        check_plan_functions(plan, states, options.function_prefix)
    check_image_versions(states, driver_versions())
    check_concurrency(plan, options.max_functions, read_unreserved(lam))
    return restrict_platform(platform, states, options.function_prefix)
