"""The command-line side of `jaxpipe deploy aws`, `jaxpipe calibrate` and cloud profiling."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_aws_arguments", "calibrate_platform", "profile_on_platform", "run_aws"]


def add_aws_arguments(parser: argparse.ArgumentParser) -> None:
    from jaxpipe.runtime.platforms.aws import FUNCTION_PREFIX

    parser.add_argument("--bucket", required=True, help="S3 bucket for jobs (created if missing)")
    parser.add_argument("--role", required=True,
                        help="execution role of the functions: a name or an ARN")
    parser.add_argument("--create-role", action="store_true",
                        help="create the role (or update its policy) with least privilege")
    parser.add_argument("--region", help="AWS region (default: boto3's, e.g. AWS_REGION)")
    parser.add_argument("--memory", help="memory sizes in MB, comma-separated (default: those "
                        "of --plan, else the aws-lambda grid)")
    parser.add_argument("--plan", help="deploy only the memory sizes this plan JSON uses")
    parser.add_argument("--platform-file", help="platform overrides (e.g. a calibrated grid)")
    parser.add_argument("--repository", default="jaxpipe", help="ECR repository (jaxpipe)")
    parser.add_argument("--tag", help="image tag (default: a hash of the worker's sources)")
    parser.add_argument("--image-uri", help="use this pushed image instead of building one")
    parser.add_argument("--build", action="store_true",
                        help="run the docker build/push commands (needs docker and credentials)")
    parser.add_argument("--expire-days", type=int, default=7,
                        help="delete jobs/ objects after this many days (default: 7)")
    parser.add_argument("--function-prefix", default=FUNCTION_PREFIX,
                        help=f"functions are <prefix>-<memory MB> (default: {FUNCTION_PREFIX})")


def run_aws(args: argparse.Namespace, session: Any = None) -> int:
    """Image, role, functions and bucket, in that order; prints every change."""
    import boto3.session
    import jax

    from jaxpipe.deploy import aws
    from planners import platforms

    session = session or boto3.session.Session(region_name=args.region)
    region = session.region_name or "us-east-1"
    platform = platforms.get("aws-lambda", args.platform_file)
    plan = json.loads(Path(args.plan).read_text()) if args.plan else None
    sizes = _sizes(args.memory) or aws.memory_sizes_of(plan, platform)
    bad = [m for m in sizes if not 128 <= m <= 10240]
    if bad:
        print(f"memory sizes {bad} are outside Lambda's 128-10240 MB", file=sys.stderr)
        return 2

    image = args.image_uri
    if image is None:
        account = session.client("sts").get_caller_identity()["Account"]
        tag = args.tag or aws.source_tag()
        image = f"{account}.dkr.ecr.{region}.amazonaws.com/{args.repository}:{tag}"
        commands = aws.image_commands(account, region, args.repository, tag, jax.__version__)
        if not _image_exists(session.client("ecr"), args.repository, tag):
            print("# build and push the worker image (from the repository root):")
            print("\n".join(commands))
            if not args.build:
                print(f"\nimage {image} is not in ECR yet: run the commands above (or pass "
                      "--build), then run this command again", file=sys.stderr)
                return 2
            if shutil.which("docker") is None:
                print("--build needs docker on PATH", file=sys.stderr)
                return 2
            for command in commands:
                subprocess.run(command, shell=True, check=True, cwd=aws.REPO)
    changes = []
    role_arn, done = aws.ensure_role(session.client("iam"), args.role, args.bucket,
                                     create=args.create_role,
                                     function_prefix=args.function_prefix)
    changes += done
    config = aws.FunctionConfig(image_uri=image, role_arn=role_arn, memory_sizes=tuple(sizes),
                                function_prefix=args.function_prefix, platform=platform)
    changes += aws.deploy_functions(session.client("lambda"), config)
    changes += aws.deploy_bucket(session.client("s3"), args.bucket, args.expire_days)
    for change in changes:
        print(change)
    print(f"ready: jaxpipe train --platform aws-lambda --store s3://{args.bucket} "
          f"--function-prefix {args.function_prefix} --max-cost 1.00")
    return 0


def _image_exists(ecr: Any, repository: str, tag: str) -> bool:
    import botocore.exceptions

    try:
        ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
        return True
    except botocore.exceptions.ClientError as err:
        if err.response["Error"]["Code"] in ("ImageNotFoundException",
                                             "RepositoryNotFoundException"):
            return False
        raise


def _sizes(text: str | None) -> list[int]:
    return [int(x) for x in text.split(",") if x] if text else []


def _cloud_setup(args: argparse.Namespace) -> tuple[Any, Any, list[int]]:
    from planners import platforms
    from transports import S3Store

    if args.platform != "aws-lambda":
        raise SystemExit(f"unknown platform {args.platform!r}: use local or aws-lambda")
    if not args.bucket:
        raise SystemExit("--platform aws-lambda needs --bucket (the one `jaxpipe deploy aws` "
                         "set up)")
    platform = platforms.get("aws-lambda")
    store = S3Store(args.bucket, endpoint_url=args.endpoint_url)
    return platform, store, _sizes(args.memory) or list(platform.memory_options_mb)


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
    else:
        _, store, sizes = _cloud_setup(args)
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
    from jaxpipe.runtime.platforms import aws_tasks

    platform, store, sizes = _cloud_setup(args)
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
