"""The worker image: its versions, its tag, the commands that build it, and its ECR repository.

    versions    the driver's jax, jaxlib, flax and optax: the image installs exactly these
                (a pip constraints file written from build arguments, kept in the image at
                /opt/jaxpipe/constraints.txt), since stage programs exported by one jax may not
                load in another and optax state layouts differ between releases
    tag         `<hash>-jax<v>-jaxlib<v>-flax<v>-optax<v>`: the hash covers the sources, the
                Dockerfile and the versions, so a changed driver is a new tag
    repository  created with scan-on-push, a repository policy that lets Lambda pull the image
                (`policies.lambda_pull_policy`), and a lifecycle policy that keeps the newest
                images only (storage is billed per GB-month)
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import botocore.exceptions

from jaxpipe.deploy import policies
from jaxpipe.deploy.aws import Change
from jaxpipe.runtime.platforms.aws import FUNCTION_PREFIX
from jaxpipe.versions import Versions, driver_versions

__all__ = ["DOCKERFILE", "KEEP_IMAGES", "Versions", "driver_versions", "ensure_repository",
           "image_commands", "image_exists", "parse_image_uri", "source_tag"]

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = "deploy/aws/Dockerfile"
KEEP_IMAGES = 5
_ECR_URI = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com/([^:@]+)[:@].+$")


def source_tag(versions: Versions, root: Path = REPO) -> str:
    """The image tag: a hash of the packages, pyproject, Dockerfile and versions, then versions.

    Example:
      >>> source_tag(Versions("0.10.2", "0.10.2", "0.12.8", "0.2.8")).split("-", 1)[1]
      'jax0.10.2-jaxlib0.10.2-flax0.12.8-optax0.2.8'
    """
    digest = hashlib.sha256(versions.constraints().encode())
    files = [root / "pyproject.toml", root / DOCKERFILE]
    for package in ("jaxpipe", "planners", "transports"):
        files += sorted((root / package).rglob("*.py"))
    for path in files:
        if path.exists():
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return f"{digest.hexdigest()[:12]}-{versions.tag_part()}"


def image_commands(account: str, region: str, repository: str, tag: str,
                   versions: Versions) -> list[str]:
    """The shell commands that build the worker image and push it to ECR (repository exists)."""
    registry = f"{account}.dkr.ecr.{region}.amazonaws.com"
    return [
        (f"aws ecr get-login-password --region {region} | docker login --username AWS "
         f"--password-stdin {registry}"),
        # Lambda refuses image indexes with attestations: --provenance=false keeps one manifest
        (f"docker build --platform linux/amd64 --provenance=false {versions.build_args()} "
         f"-t {registry}/{repository}:{tag} -f {DOCKERFILE} ."),
        f"docker push {registry}/{repository}:{tag}",
    ]


def parse_image_uri(uri: str) -> tuple[str, str, str] | None:
    """(account, region, repository) of an ECR image URI, or None for any other registry."""
    match = _ECR_URI.match(uri)
    return (match.group(1), match.group(2), match.group(3)) if match else None


def image_exists(ecr: Any, repository: str, tag: str) -> bool:
    """Whether `repository:tag` is in ECR (a missing repository counts as a missing image)."""
    try:
        ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
        return True
    except botocore.exceptions.ClientError as err:
        if err.response["Error"]["Code"] in ("ImageNotFoundException",
                                             "RepositoryNotFoundException"):
            return False
        raise


def ensure_repository(ecr: Any, repository: str, account: str, region: str,
                      function_prefix: str = FUNCTION_PREFIX,
                      keep_images: int = KEEP_IMAGES) -> list[Change]:
    """Creates the repository if missing; sets the Lambda pull statement and the lifecycle.

    The pull statement is merged into the repository policy by its Sid (other statements are
    kept). The lifecycle policy is written when the repository has none or has JaxPipe's; a
    lifecycle policy of the owner's own is kept.
    """
    changes = []
    try:
        ecr.describe_repositories(repositoryNames=[repository])
        changes.append(Change(f"repository {repository}", "unchanged"))
    except botocore.exceptions.ClientError as err:
        if err.response["Error"]["Code"] != "RepositoryNotFoundException":
            raise
        ecr.create_repository(repositoryName=repository,
                              imageScanningConfiguration={"scanOnPush": True})
        changes.append(Change(f"repository {repository}", "created", "scan on push"))
    changes.append(_ensure_pull_policy(ecr, repository, account, region, function_prefix))
    changes.append(_ensure_lifecycle(ecr, repository, keep_images))
    return changes


def _ensure_pull_policy(ecr: Any, repository: str, account: str, region: str,
                        function_prefix: str) -> Change:
    wanted = policies.lambda_pull_policy(account, region, function_prefix)["Statement"][0]
    try:
        current = json.loads(ecr.get_repository_policy(repositoryName=repository)["policyText"])
    except botocore.exceptions.ClientError as err:
        if err.response["Error"]["Code"] != "RepositoryPolicyNotFoundException":
            raise
        current = {"Version": "2012-10-17", "Statement": []}
    statements = current.get("Statement", [])
    statements = [statements] if isinstance(statements, dict) else statements
    ours = [s for s in statements if s.get("Sid") == policies.LAMBDA_PULL_SID]
    resource = f"repository policy {repository}"
    if ours == [wanted]:
        return Change(resource, "unchanged")
    others = [s for s in statements if s.get("Sid") != policies.LAMBDA_PULL_SID]
    ecr.set_repository_policy(repositoryName=repository, policyText=json.dumps(
        {"Version": current.get("Version", "2012-10-17"), "Statement": others + [wanted]}))
    return Change(resource, "updated" if ours else "created", "lambda.amazonaws.com may pull")


def _ensure_lifecycle(ecr: Any, repository: str, keep_images: int) -> Change:
    wanted = policies.image_lifecycle_policy(keep_images)
    try:
        current = json.loads(
            ecr.get_lifecycle_policy(repositoryName=repository)["lifecyclePolicyText"])
    except botocore.exceptions.ClientError as err:
        if err.response["Error"]["Code"] != "LifecyclePolicyNotFoundException":
            raise
        current = None
    resource = f"lifecycle {repository}"
    if current == wanted:
        return Change(resource, "unchanged")
    if current is not None and not all(str(r.get("description", "")).startswith("jaxpipe:")
                                       for r in current.get("rules", [])):
        return Change(resource, "kept", "the repository has a lifecycle policy of its own")
    ecr.put_lifecycle_policy(repositoryName=repository, lifecyclePolicyText=json.dumps(wanted))
    return Change(resource, "created" if current is None else "updated",
                  f"keep the newest {keep_images} images")
