"""The package versions the driver and a worker must share, and the check a worker runs.

Stage programs exported by one jax may not load in another, and optax state layouts differ
between releases, so the driver records its jax, jaxlib, flax and optax in every job
(`JobSpec.versions`), the worker image installs exactly those (`jaxpipe.deploy.image` writes
them into its constraints file and its tag), and a worker of other versions refuses the job
before it loads anything (`check_versions`). Only the standard library is imported here: the
worker runs the check before JAX.
"""

from __future__ import annotations

import re
from dataclasses import astuple, dataclass, fields
from importlib import metadata

from jaxpipe.errors import VersionMismatchError

__all__ = ["PACKAGES", "Versions", "check_versions", "driver_versions"]

PACKAGES = ("jax", "jaxlib", "flax", "optax")


@dataclass(frozen=True)
class Versions:
    """The versions of the four packages that must match between the driver and the image."""

    jax: str
    jaxlib: str
    flax: str
    optax: str

    def constraints(self) -> str:
        """The pip constraints file the image installs from, one `name==version` per line."""
        return "".join(f"{f.name}=={v}\n" for f, v in zip(fields(self), astuple(self)))

    def build_args(self) -> str:
        """`--build-arg` flags passing them to deploy/aws/Dockerfile."""
        return " ".join(f"--build-arg {f.name.upper()}_VERSION={v}"
                        for f, v in zip(fields(self), astuple(self)))

    def tag_part(self) -> str:
        """`jax0.10.2-jaxlib0.10.2-flax0.12.8-optax0.2.8` (characters a tag may not hold: `_`)."""
        return "-".join(re.sub(r"[^A-Za-z0-9_.]", "_", f"{f.name}{v}")
                        for f, v in zip(fields(self), astuple(self)))

    def to_dict(self) -> dict[str, str]:
        return dict(zip(PACKAGES, astuple(self)))

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> Versions:
        return cls(*(str(data[name]) for name in PACKAGES))

    @classmethod
    def from_tag(cls, tag: str) -> Versions | None:
        """The versions an image tag of `jaxpipe deploy aws` names, or None for another tag.

        Example:
          >>> Versions.from_tag("0123456789ab-jax0.10.2-jaxlib0.10.2-flax0.12.8-optax0.2.8")
          Versions(jax='0.10.2', jaxlib='0.10.2', flax='0.12.8', optax='0.2.8')
        """
        match = re.search(r"-jax(.+)-jaxlib(.+)-flax(.+)-optax(.+)$", tag)
        return cls(*match.groups()) if match else None


def driver_versions() -> Versions:
    """The installed versions of jax, jaxlib, flax and optax (this machine's, the driver's)."""
    return Versions(*(metadata.version(name) for name in PACKAGES))


def check_versions(job: str, recorded: dict[str, str] | None,
                   installed: Versions | None = None) -> None:
    """Refuses a job recorded with other versions than the ones installed here.

    Args:
      job: the job id, for the message.
      recorded: the job's `JobSpec.versions` (None: a job written before they were recorded,
        which is accepted).
      installed: this process's (default: `driver_versions()`).

    Raises:
      VersionMismatchError: the versions differ; the message names each and says to redeploy.

    Example:
      >>> v = Versions("0.10.2", "0.10.2", "0.12.8", "0.2.8")
      >>> check_versions("j", v.to_dict(), v)  # the same: nothing to say
    """
    if recorded is None:
        return
    mine = installed if installed is not None else driver_versions()
    theirs = Versions.from_dict(recorded)
    if theirs == mine:
        return
    differ = ", ".join(f"{name} {a} (job) vs {b} (here)" for name, a, b in
                       zip(PACKAGES, astuple(theirs), astuple(mine)) if a != b)
    raise VersionMismatchError(
        f"job {job} was built by a driver with other package versions than this worker's: "
        f"{differ}. Stage programs and optimizer state may not load across them: redeploy the "
        "worker image from the driver's environment (`jaxpipe deploy aws` builds its tag from "
        "the driver's versions), or train from an environment with the worker's versions.")
