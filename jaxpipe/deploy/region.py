"""Which AWS region a command works in: said explicitly, never a silent default.

boto3 reads `AWS_DEFAULT_REGION` and the profile's `region`, but not `AWS_REGION` (which the AWS
CLI v2 and Lambda's runtime set), and with none of them the S3 client quietly uses us-east-1
while the Lambda client raises `NoRegionError`. So every cloud command resolves one region
itself, in this order, says where it came from, and passes it to every client it makes:

    --region                      explicit
    AWS_REGION, AWS_DEFAULT_REGION  either one; if both are set they must agree
    the AWS profile's `region`    what `aws configure` wrote (~/.aws/config)
    none                          RegionError: no default
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from jaxpipe.deploy.errors import RegionError

__all__ = ["REGION_VARIABLES", "Region", "profile_region", "resolve_region"]

REGION_VARIABLES = ("AWS_REGION", "AWS_DEFAULT_REGION")


@dataclass(frozen=True)
class Region:
    """A region and where it was found ("--region", a variable's name, or "profile <name>")."""

    name: str
    source: str

    def __str__(self) -> str:
        return f"{self.name} (from {self.source})"


def profile_region(environ: Mapping[str, str]) -> Region | None:
    """The `region` of the active AWS profile (`AWS_PROFILE`, else default), if it has one."""
    import botocore.exceptions
    import botocore.session

    profile = environ.get("AWS_PROFILE") or "default"
    try:
        name = botocore.session.Session(profile=profile).get_scoped_config().get("region")
    except botocore.exceptions.ProfileNotFound:
        return None
    return Region(str(name), f"profile {profile}") if name else None


def resolve_region(explicit: str | None, environ: Mapping[str, str],
                   configured: Region | None = None) -> Region:
    """The region to use: `explicit`, else the environment's, else the profile's.

    Args:
      explicit: the `--region` argument, or None.
      environ: the environment (`os.environ`).
      configured: the profile's region (`profile_region(environ)`), or None.

    Raises:
      RegionError: none is set, or AWS_REGION and AWS_DEFAULT_REGION disagree.

    Example:
      >>> str(resolve_region(None, {"AWS_REGION": "eu-west-1"}))
      'eu-west-1 (from AWS_REGION)'
    """
    if explicit:
        return Region(explicit, "--region")
    found = {name: environ[name] for name in REGION_VARIABLES if environ.get(name)}
    if len(set(found.values())) > 1:
        raise RegionError("AWS_REGION={AWS_REGION} and AWS_DEFAULT_REGION={AWS_DEFAULT_REGION} "
                          "disagree: unset one, or pass --region".format(**found))
    if found:
        name, value = next(iter(found.items()))
        return Region(value, name)
    if configured is not None:
        return configured
    raise RegionError("no AWS region given: pass --region (e.g. --region us-east-1), or export "
                      "AWS_REGION (or AWS_DEFAULT_REGION); JaxPipe does not fall back to a "
                      "default region")
