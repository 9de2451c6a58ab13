"""The command-line side of `jaxpipe deploy aws`, `jaxpipe calibrate` and cloud profiling."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["add_aws_arguments", "add_region_argument", "calibrate_platform", "cloud_region",
           "deploy_aws", "profile_on_platform", "run_aws"]

REGION_HELP = ("AWS region of the functions and the bucket (default: AWS_REGION or "
               "AWS_DEFAULT_REGION, else the AWS profile's region; never a silent default)")


def add_region_argument(parser: argparse.ArgumentParser) -> None:
    """`--region`, for every command that talks to AWS."""
    parser.add_argument("--region", help=REGION_HELP)


def add_aws_arguments(parser: argparse.ArgumentParser) -> None:
    from jaxpipe.deploy.functions import LOG_RETENTION_DAYS
    from jaxpipe.deploy.image import KEEP_IMAGES
    from jaxpipe.runtime.platforms.aws import FUNCTION_PREFIX

    parser.add_argument("--bucket", required=True, help="S3 bucket for jobs (created if missing)")
    parser.add_argument("--role", required=True,
                        help="execution role of the functions: a name or an ARN")
    parser.add_argument("--create-role", action="store_true",
                        help="create the role (or update its policy) with least privilege")
    add_region_argument(parser)
    parser.add_argument("--memory", help="memory sizes in MB, comma-separated (default: those "
                        "of --plan, else the aws-lambda grid); sizes above the account's limit "
                        "are skipped and named")
    parser.add_argument("--plan", help="deploy only the memory sizes this plan JSON uses")
    parser.add_argument("--platform-file", help="platform overrides (e.g. a calibrated grid)")
    parser.add_argument("--repository", default="jaxpipe", help="ECR repository (jaxpipe)")
    parser.add_argument("--tag", help="image tag (default: a hash of the worker's sources and "
                        "the driver's jax, jaxlib, flax and optax versions)")
    parser.add_argument("--image-uri", help="use this pushed image instead of building one")
    parser.add_argument("--build", action="store_true",
                        help="run the docker build/push commands (needs docker and credentials)")
    parser.add_argument("--expire-days", type=int, default=7,
                        help="delete jobs/ objects after this many days (default: 7)")
    parser.add_argument("--log-retention-days", type=int, default=LOG_RETENTION_DAYS,
                        help=f"keep the functions' logs this many days (default: "
                        f"{LOG_RETENTION_DAYS}; one of CloudWatch's 1, 3, 5, 7, 14, 30, ...)")
    parser.add_argument("--keep-images", type=int, default=KEEP_IMAGES,
                        help=f"ECR keeps the newest N images (default: {KEEP_IMAGES})")
    parser.add_argument("--function-prefix", default=FUNCTION_PREFIX,
                        help=f"functions are <prefix>-<memory MB> (default: {FUNCTION_PREFIX})")


def cloud_region(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Any:
    """The `Region` of a cloud command: `--region`, the environment, else the AWS profile.

    Raises:
      RegionError: none is set, or the two variables disagree.
    """
    from jaxpipe.deploy.region import REGION_VARIABLES, profile_region, resolve_region

    environ = os.environ if environ is None else environ
    explicit = getattr(args, "region", None)
    needed = not explicit and not any(environ.get(name) for name in REGION_VARIABLES)
    return resolve_region(explicit, environ, profile_region(environ) if needed else None)


def run_aws(args: argparse.Namespace, session: Any = None,
            environ: Mapping[str, str] | None = None) -> int:
    """`jaxpipe deploy aws`: `deploy_aws`, with its refusals printed instead of raised."""
    from jaxpipe.errors import JaxPipeError

    try:
        return deploy_aws(args, session, environ)
    except JaxPipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def deploy_aws(args: argparse.Namespace, session: Any = None,
               environ: Mapping[str, str] | None = None,
               sleep: Callable[[float], None] = time.sleep) -> int:
    """Region, account, image, bucket, role, functions and probe, in that order.

    Every change is printed as it is made; every client gets the one resolved region.

    Raises:
      RegionError, BucketRegionError, MemoryQuotaError: refused (nothing after it changed).
      RolePropagationError, ProbeFailed: deploy stopped part-way; run it again after the fix.
    """
    import boto3.session

    from jaxpipe.deploy import aws, functions, image, probe
    from planners import platforms

    region = cloud_region(args, environ)
    print(f"region {region}")
    session = session or boto3.session.Session(region_name=region.name)

    def client(service: str, **kwargs: Any) -> Any:
        return session.client(service, region_name=region.name, **kwargs)

    platform = platforms.get("aws-lambda", args.platform_file)
    plan = json.loads(Path(args.plan).read_text()) if args.plan else None
    sizes = aws.parse_sizes(args.memory) or aws.memory_sizes_of(plan, platform)
    bad = functions.sizes_outside_lambda(sizes)
    if bad:
        print(f"memory sizes {bad} are outside Lambda's 128-10240 MB", file=sys.stderr)
        return 2
    if args.log_retention_days not in functions.RETENTION_CHOICES:
        print(f"--log-retention-days must be one of {functions.RETENTION_CHOICES}",
              file=sys.stderr)
        return 2
    prefix = args.function_prefix
    lam = client("lambda")
    print(functions.read_account_limits(lam).describe(functions.ranks_of(plan)))
    account = client("sts").get_caller_identity()["Account"]

    ecr = client("ecr")
    image_uri = args.image_uri
    if image_uri is not None:
        where = image.parse_image_uri(image_uri)
        if where is not None and where[:2] == (account, region.name):
            _show(image.ensure_repository(ecr, where[2], account, region.name, prefix,
                                          args.keep_images))
        else:
            print(f"note: {image_uri} is not in this account's ECR in {region.name}; its "
                  "repository policy must let lambda.amazonaws.com pull it (docs/aws.md)")
    else:
        versions = image.driver_versions()
        tag = args.tag or image.source_tag(versions)
        image_uri = f"{account}.dkr.ecr.{region.name}.amazonaws.com/{args.repository}:{tag}"
        _show(image.ensure_repository(ecr, args.repository, account, region.name, prefix,
                                      args.keep_images))
        if not image.image_exists(ecr, args.repository, tag):
            commands = image.image_commands(account, region.name, args.repository, tag,
                                            versions)
            print("# build and push the worker image (from the repository root):")
            print("\n".join(commands))
            if not args.build:
                print(f"\nimage {image_uri} is not in ECR yet: run the commands above (or pass "
                      "--build), then run this command again", file=sys.stderr)
                return 2
            if shutil.which("docker") is None:
                print("--build needs docker on PATH", file=sys.stderr)
                return 2
            for command in commands:
                subprocess.run(command, shell=True, check=True, cwd=image.REPO)

    _show(aws.deploy_bucket(client("s3"), args.bucket, args.expire_days))
    role_arn, done = aws.ensure_role(client("iam"), args.role, args.bucket,
                                     create=args.create_role, function_prefix=prefix)
    _show(done)
    logs = client("logs")
    config = functions.FunctionConfig(image_uri=image_uri, role_arn=role_arn,
                                      memory_sizes=tuple(sizes), function_prefix=prefix,
                                      log_retention_days=args.log_retention_days,
                                      platform=platform)
    outcome = functions.deploy_functions(lam, config, logs, sleep)
    _show(outcome.changes)
    _show([functions.ensure_log_group(logs, probe.probe_function(prefix),
                                      args.log_retention_days)])
    _show(probe.run_probe(client("lambda", config=probe.client_config()), image_uri, role_arn,
                          args.bucket, prefix, sleep))
    if outcome.skipped:
        print(outcome.skipped_message(), file=sys.stderr)
    print(f"ready: {', '.join(map(str, outcome.deployed))} MB in {region.name}: "
          f"AWS_DEFAULT_REGION={region.name} jaxpipe train --platform aws-lambda "
          f"--store s3://{args.bucket} --function-prefix {prefix} --max-cost 1.00")
    return 0


def _show(changes: Iterable[Any]) -> None:
    for change in changes:
        print(change)


def _sizes(text: str | None) -> list[int]:
    return [int(x) for x in text.split(",") if x] if text else []


def _cloud_setup(args: argparse.Namespace, client: Any) -> tuple[Any, Any, list[int], Any]:
    """(platform, store, memory sizes, Lambda client), all in the command's one region."""
    from jaxpipe.runtime.platforms.aws import lambda_client
    from planners import platforms
    from transports import S3Store

    if args.platform != "aws-lambda":
        raise SystemExit(f"unknown platform {args.platform!r}: use local or aws-lambda")
    if not args.bucket:
        raise SystemExit("--platform aws-lambda needs --bucket (the one `jaxpipe deploy aws` "
                         "set up)")
    from jaxpipe.deploy.errors import RegionError

    try:
        region = cloud_region(args)
    except RegionError as err:
        raise SystemExit(f"error: {err}") from err
    print(f"region {region}")
    platform = platforms.get("aws-lambda")
    store = S3Store(args.bucket, endpoint_url=args.endpoint_url, region_name=region.name)
    client = client if client is not None else lambda_client(region_name=region.name)
    return platform, store, _sizes(args.memory) or list(platform.memory_options_mb), client


def calibrate_platform(args: argparse.Namespace, client: Any = None) -> int:
    """`jaxpipe calibrate`: link measurements -> the `platform` table of a platform file."""
    from jaxpipe.runtime.platforms import aws_tasks

    size = int(args.size_mb * 1e6)
    if args.platform == "local":
        from jaxpipe.runtime.train import open_store

        store = open_store(args.store or ".jaxpipe/store", args.endpoint_url)
        results = {0: aws_tasks.measure_link(store, "jobs/calibration-local/", size,
                                             args.repeats)}
        name = "local"
    elif args.platform == "lithops":
        from jaxpipe.deploy.lithops import lithops_calibration

        results, name = lithops_calibration(args, size)
    else:
        _, store, sizes, client = _cloud_setup(args, client)
        results = aws_tasks.calibrate(store, sizes, client, args.function_prefix, size,
                                      args.repeats)
        name = "aws-lambda"
    fields = aws_tasks.calibration_fields(results)
    path = args.platform_file or f"platform-{name}.json"
    details = {str(m): {k: v for k, v in r.items() if k != "samples_s"}
               for m, r in results.items()}
    aws_tasks.merge_platform_file(path, fields, "calibration", details)
    for m, r in sorted(results.items()):
        print(f"{m:6d} MB: latency {r['request_latency_s'] * 1e3:7.1f} ms, up "
              f"{r['uplink_bytes_per_s'] / 1e6:8.1f} MB/s, down "
              f"{r['downlink_bytes_per_s'] / 1e6:8.1f} MB/s")
    print(f"wrote {path}: use it with --platform-file {path}")
    return 0


def profile_on_platform(args: argparse.Namespace, client: Any = None) -> int:
    """`jaxpipe profile --platform aws-lambda`: the profile, plus the measured `cpu_table`."""
    if args.platform == "lithops":
        from jaxpipe.deploy.lithops import lithops_profile

        return lithops_profile(args)
    from jaxpipe.runtime.platforms import aws_tasks

    platform, store, sizes, client = _cloud_setup(args, client)
    micro = [int(b) for b in str(args.micro_batches).split(",") if b]
    profiles = aws_tasks.profile_on_functions(args.model, store, sizes, micro, args.repeats,
                                              client, args.function_prefix)
    reference, fields = aws_tasks.profile_fields(profiles, platform)
    with open(args.output, "w") as f:
        json.dump(reference.to_dict(), f, indent=1)
    path = args.platform_file or "platform-aws-lambda.json"
    aws_tasks.merge_platform_file(path, fields, "profiles",
                                  {str(m): p.to_dict() for m, p in profiles.items()})
    print(f"wrote {args.output} ({reference.num_layers} layers at "
          f"{reference.reference_cpus:.2f} vCPU) and the cpu_table of {path}:")
    for m, cpus in fields["cpu_table"].items():
        print(f"{int(m):6d} MB: {cpus:.2f} vCPU effective (catalog {platform.cpus(int(m)):.2f})")
    return 0
