"""`jaxpipe deploy lithops`: a Lithops runtime with JaxPipe in it, per backend, and its config.

A Lithops call runs in the backend's *runtime* (a container image, or a zip of requirements),
which must hold JaxPipe and exactly the driver's jax, jaxlib, flax, optax and Lithops (stage
programs exported by one jax may not load in another; Lithops refuses a runtime of another
version). The steps, printed, or run with `--run`:

    1 base      deploy/lithops/base.Dockerfile and constraints.txt: JaxPipe from the
                repository's sources, pinned; `docker build -t jaxpipe-base:<hash>` from the
                root (Lithops builds a runtime in a context of its own, which holds no sources)
    2 runtime   deploy/lithops/<backend>/Dockerfile: FROM the base, then the backend's Lithops
                entry point; or a requirements.txt, for backends that build from one
    3 build     lithops runtime build -c CONFIG -b BACKEND -f FILE RUNTIME
    4 deploy    lithops runtime deploy -c CONFIG -b BACKEND --memory MB --timeout S RUNTIME,
                one per memory size the plan (or the catalog) uses

The runtime's name holds a hash of JaxPipe's sources and those versions (`image.source_tag`),
so a changed driver is a new runtime and an unchanged one is the same: `--run` records what
it built and deployed in `.jaxpipe/lithops-<backend>-<config hash>.json` and skips what is
done. localhost
needs none of it: its runtime is this interpreter. `config_template` writes a Lithops config
for a backend, in Lithops' own format, which `lithops_config.load_settings` checks.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from jaxpipe.deploy.aws import Change
from jaxpipe.deploy.image import REPO, driver_versions, source_tag
from jaxpipe.runtime.platforms import lithops_config

__all__ = ["PINNED", "Step", "add_lithops_arguments", "config_template", "dockerfile",
           "lithops_calibration", "lithops_profile", "pinned", "requirements", "run",
           "run_lithops", "runtime_name", "steps"]

PINNED = ("jax", "jaxlib", "flax", "optax", "numpy", "scipy", "boto3", "botocore", "lithops",
          "cloudpickle", "tblib", "ps-mem", "psutil")
"""Packages the runtime installs at the driver's versions (JaxPipe's own others float)."""

FROM_REQUIREMENTS = ("gcp_functions", "azure_functions", "ibm_cf")
"""Backends whose `lithops runtime build` takes a requirements file, not a Dockerfile."""

PLAIN_NAMES = (*FROM_REQUIREMENTS, "aliyun_fc")
"""Backends that make function and image names of their own from the runtime's name, which
must then be a plain name (no registry, no tag)."""

PYTHON = "3.11"  # slim Debian images: glibc 2.36, as the jaxlib and numpy wheels need


def pinned() -> str:
    """constraints.txt: `name==version` of every package in PINNED installed here."""
    lines = []
    for name in PINNED:
        try:
            lines.append(f"{name}=={metadata.version(name)}\n")
        except metadata.PackageNotFoundError:
            continue
    return "".join(lines)


def source_hash() -> str:
    """A hash of JaxPipe's sources and the driver's versions (`image.source_tag`'s)."""
    return source_tag(driver_versions()).split("-", 1)[0]


def runtime_name(backend: str, registry: str | None = None) -> str:
    """The runtime's name: `jaxpipe-worker-<hash>` where the backend names things itself
    (PLAIN_NAMES), else the image `[<registry>/]jaxpipe-worker:<hash>`."""
    if backend in PLAIN_NAMES:
        return f"jaxpipe-worker-{source_hash()}"
    return f"{registry.rstrip('/') + '/' if registry else ''}jaxpipe-worker:{source_hash()}"


def base_image() -> str:
    """The local image with JaxPipe installed that every backend's runtime starts FROM."""
    return f"jaxpipe-base:{source_hash()}"


BASE_DOCKERFILE = f"""FROM python:{PYTHON}-slim
# JaxPipe and the driver's versions of what must match (jaxpipe deploy lithops wrote this file;
# built from the repository's root). PIP_CONSTRAINT holds every later pip install, the
# backend's own lines in the runtime's Dockerfile too, to the pins.
ENV JAX_PLATFORMS=cpu PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/opt/jaxpipe/constraints.txt
COPY deploy/lithops/constraints.txt /opt/jaxpipe/constraints.txt
COPY pyproject.toml README.md /tmp/src/
COPY jaxpipe /tmp/src/jaxpipe
COPY planners /tmp/src/planners
COPY transports /tmp/src/transports
RUN pip install /tmp/src lithops && rm -rf /tmp/src
"""

_AWS_LAMBDA_ENTRY = """# Lithops' Lambda handler (`lithops runtime build` writes its zip)
RUN pip install awslambdaric
WORKDIR /function
COPY lithops_lambda.zip .
RUN python -m zipfile -e lithops_lambda.zip . && rm lithops_lambda.zip
ENTRYPOINT ["/usr/local/bin/python", "-m", "awslambdaric"]
CMD ["entry_point.lambda_handler"]
"""


def dockerfile(backend: str) -> str:
    """The runtime image: FROM the base image (JaxPipe pinned), then the backend's Lithops
    entry point (Lithops' own DEFAULT_DOCKERFILE where its config module has one). Lithops
    builds it in a context of its own, so it copies nothing of the repository."""
    head = f"FROM {base_image()}\n"
    if backend == "aws_lambda":
        return head + _AWS_LAMBDA_ENTRY
    try:
        tail = lithops_config.backend_module(backend).DEFAULT_DOCKERFILE
    except (AttributeError, ModuleNotFoundError):
        tail = ("# this backend's Lithops entry point: see Lithops' runtime/"
                f"{backend}/Dockerfile\n")
    return head + "\n# Lithops' entry point for this backend (its DEFAULT_DOCKERFILE)\n" + tail


def requirements(jaxpipe_requirement: str) -> str:
    """requirements.txt for a backend that builds from one: the pins, and JaxPipe from where
    the cloud's build can fetch it (`--jaxpipe-requirement`, e.g. a wheel's URL)."""
    return pinned() + jaxpipe_requirement + "\n"


@dataclass(frozen=True)
class Step:
    """One step: a file to write or a command to run (`key` names it in the state file)."""

    key: str
    what: str
    command: tuple[str, ...] = ()
    path: str | None = None
    content: str | None = None

    def __str__(self) -> str:
        return shlex.join(self.command) if self.command else f"write {self.path}"


def steps(backend: str, config: str, memory_mb: Sequence[int], timeout_s: int,
          jaxpipe_requirement: str | None = None, root: Path = REPO,
          registry: str | None = None) -> list[Step]:
    """Every step that makes the backend's runtime, in order (module docstring)."""
    if backend == "localhost":
        return []
    name = runtime_name(backend, registry)
    folder = root / "deploy" / "lithops" / backend
    if backend in FROM_REQUIREMENTS:
        file = folder / "requirements.txt"
        wanted = jaxpipe_requirement or f"jaxpipe=={metadata.version('jaxpipe')}"
        files = [Step(f"file:{file.name}", "requirements", path=str(file),
                      content=requirements(wanted))]
    else:
        file = folder / "Dockerfile"
        base = root / "deploy" / "lithops" / "base.Dockerfile"
        files = [Step("file:constraints.txt", "pins", path=str(base.parent / "constraints.txt"),
                      content=pinned()),
                 Step("file:base.Dockerfile", "JaxPipe", path=str(base), content=BASE_DOCKERFILE),
                 Step(f"base:{base_image()}", "base image",
                      ("docker", "build", "--platform", "linux/amd64", "-t", base_image(), "-f",
                       str(base.relative_to(root)), ".")),
                 Step("file:Dockerfile", "runtime", path=str(file), content=dockerfile(backend))]
    lithops = ("lithops", "runtime")
    build = Step(f"build:{name}", "build", (*lithops, "build", "-c", config, "-b", backend,
                                            "-f", str(file.relative_to(root)), name))
    deploys = [Step(f"deploy:{name}:{m}", "deploy",
                    (*lithops, "deploy", "-c", config, "-b", backend, "--memory", str(m),
                     "--timeout", str(timeout_s), name)) for m in sorted(set(memory_mb))]
    return [*files, build, *deploys]


def run(all_steps: Sequence[Step], state_file: Path, root: Path = REPO,
        execute: bool = True) -> list[Change]:
    """Runs the steps not yet done (idempotent); returns what each did. Files are always
    written (the printed commands need them); commands only with `execute`. A file whose
    content is unchanged, and a command the state file records, are "unchanged".

    Raises:
      subprocess.CalledProcessError: a command failed; the steps before it stay recorded.
    """
    state = json.loads(state_file.read_text()) if state_file.exists() else {"done": []}
    changes = []
    for step in all_steps:
        if step.path is not None:
            path = Path(step.path)
            same = path.exists() and path.read_text() == step.content
            if not same:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(step.content or "")
            changes.append(Change(step.path, "unchanged" if same else "created", step.what))
            continue
        if step.key in state["done"]:
            changes.append(Change(str(step), "unchanged", "done before"))
            continue
        if execute:
            subprocess.run(step.command, cwd=root, check=True)
            state["done"].append(step.key)
            state_file.parent.mkdir(parents=True, exist_ok=True)
            state_file.write_text(json.dumps(state, indent=1))
        changes.append(Change(str(step), "done" if execute else "to run", step.what))
    return changes


def config_template(backend: str, bucket: str, region: str = "<region>",
                    runtime: str | None = None, timeout_s: int | None = None,
                    endpoint: str | None = None) -> dict[str, Any]:
    """A Lithops config for `backend` with its storage in `bucket` (Lithops' format; fill in
    the `<...>` credentials). The job's store is the same bucket, under `jobs/`.

    Example:
      >>> sorted(config_template("aliyun_fc", "my-bucket", "cn-hangzhou"))
      ['aliyun', 'aliyun_fc', 'aliyun_oss', 'lithops']
    """
    runtime = runtime or runtime_name(backend)
    compute: dict[str, Any] = {"runtime": runtime}
    if timeout_s:
        compute["runtime_timeout"] = int(timeout_s)
    if backend == "localhost":
        return {"lithops": {"backend": "localhost", "storage": "minio"},
                "localhost": {"worker_processes": 8, "runtime": sys.executable},
                "minio": {"endpoint": endpoint or "http://127.0.0.1:8333",
                          "access_key_id": "<key>", "secret_access_key": "<secret>",
                          "storage_bucket": bucket}}
    if backend == "aws_lambda":
        return {"lithops": {"backend": "aws_lambda", "storage": "aws_s3"},
                "aws": {"region": region},
                "aws_lambda": {**compute, "execution_role":
                               "arn:aws:iam::<account>:role/<jaxpipe-lithops-role>"},
                "aws_s3": {"storage_bucket": bucket}}
    if backend == "aliyun_fc":
        return {"lithops": {"backend": "aliyun_fc", "storage": "aliyun_oss"},
                "aliyun": {"account_id": "<account-id>", "access_key_id": "<access-key-id>",
                           "access_key_secret": "<access-key-secret>", "region": region},
                "aliyun_fc": {**compute, "role_arn":
                              "acs:ram::<account-id>:role/<jaxpipe-fc-role>",
                              "deploy_mode": "custom-container", "docker_user": "<namespace>"},
                "aliyun_oss": {"storage_bucket": bucket}}
    if backend == "gcp_functions":
        return {"lithops": {"backend": "gcp_functions", "storage": "gcp_storage"},
                "gcp": {"region": region, "credentials_path": "<service-account-key.json>"},
                "gcp_functions": compute, "gcp_storage": {"storage_bucket": bucket}}
    return {"lithops": {"backend": backend, "storage": "minio"}, backend: compute,
            "minio": {"endpoint": endpoint or "<https://s3.example:9000>",
                      "access_key_id": "<key>", "secret_access_key": "<secret>",
                      "storage_bucket": bucket}}


def add_lithops_arguments(parser: Any) -> None:
    """The flags of `jaxpipe deploy lithops`."""
    parser.add_argument("--lithops-config", metavar="FILE",
                        help="the Lithops config the runtime is for (its backend and storage)")
    parser.add_argument("--backend", help="without --lithops-config: print a config for this "
                        "backend (aws_lambda, aliyun_fc, gcp_functions, localhost, ...)")
    parser.add_argument("--bucket", default="<bucket>", help="--backend: the storage bucket")
    parser.add_argument("--region", default="<region>", help="--backend: the region")
    parser.add_argument("--plan", help="deploy only the memory sizes this plan JSON uses")
    parser.add_argument("--memory", help="memory sizes in MB, comma-separated (default: the "
                        "plan's, else the catalog's)")
    parser.add_argument("--platform-file", help="the catalog (required for backends without one)")
    parser.add_argument("--jaxpipe-requirement", help="requirements backends: where their build "
                        "fetches JaxPipe (e.g. 'jaxpipe @ https://.../jaxpipe-0.1.0-py3-none-any"
                        ".whl'; default jaxpipe==<this version>)")
    parser.add_argument("--registry", help="container backends (knative, k8s, code_engine, "
                        "...): the registry the runtime image goes to, e.g. docker.io/<user>")
    parser.add_argument("--run", action="store_true", dest="execute",  # `run` is the command
                        help="write the files and run the lithops commands not yet done")


def run_lithops(args: Any) -> int:
    """`jaxpipe deploy lithops`: a config for `--backend`, or the runtime's steps for the
    config's backend (printed; run with `--run`). Refusals are printed, exit code 2."""
    import yaml

    from jaxpipe.errors import JaxPipeError
    from planners import Plan

    if not args.lithops_config:
        if not args.backend:
            print("error: pass --lithops-config FILE, or --backend B to print a config",
                  file=sys.stderr)
            return 2
        print(yaml.safe_dump(config_template(args.backend, args.bucket, args.region),
                             sort_keys=False), end="")
        return 0
    try:
        settings = lithops_config.load_settings(args.lithops_config)
        platform = lithops_config.job_platform(settings, args.platform_file)
        if args.memory:
            sizes = [int(m) for m in str(args.memory).split(",") if m]
        elif args.plan:
            plan = Plan.from_dict(json.loads(Path(args.plan).read_text()))
            sizes = [s.memory_mb for s in plan.stages]
        else:
            sizes = list(platform.memory_options_mb)
        lithops_config.check_memory(settings, sizes)
    except JaxPipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    timeout = int(platform.timeout_s + lithops_config.LITHOPS_TIMEOUT_MARGIN_S)
    todo = steps(settings.backend, args.lithops_config, sizes, timeout,
                 args.jaxpipe_requirement, root=REPO, registry=args.registry)
    if not todo:
        print(f"{settings.backend}: nothing to deploy, calls run in {lithops_config.interpreter()}")
        return 0
    name = runtime_name(settings.backend, args.registry)
    print(f"# runtime {name} on {settings.backend}; set {settings.backend}.runtime to it in "
          f"{args.lithops_config}")
    if settings.runtime != name:
        print(f"# (the config's runtime is {settings.runtime!r})")
    digest = hashlib.sha256(Path(args.lithops_config).read_bytes()).hexdigest()[:8]
    state = Path(".jaxpipe") / f"lithops-{settings.backend}-{digest}.json"  # per config
    for change in run(todo, state, root=REPO, execute=args.execute):
        print(change)
    if not args.execute:
        print("# the files are written; run the commands (or again with --run: it skips what is "
              "done)")
    return 0


def _lithops_target(args: Any) -> tuple[Any, list[int]]:
    """The `LithopsPlatform` of `--lithops-config` (its store: --store, --bucket, else the
    config's storage bucket) and the memory sizes to measure (--memory, else the catalog's)."""
    from jaxpipe.runtime.platforms.lithops import LithopsPlatform
    from jaxpipe.runtime.train import open_store

    settings = lithops_config.load_settings(args.lithops_config)
    # --platform-file is where the measurements go; an existing one is the catalog too
    existing = args.platform_file if args.platform_file and Path(args.platform_file).exists() \
        else None
    platform = lithops_config.job_platform(settings, existing)
    default = ".jaxpipe/store"
    given = getattr(args, "store", None) or (f"s3://{args.bucket}" if args.bucket else default)
    location, endpoint = lithops_config.store_location(settings, given, args.endpoint_url,
                                                       default)
    sizes = ([int(m) for m in str(args.memory).split(",") if m] if args.memory
             else list(platform.memory_options_mb))
    lithops_config.check_memory(settings, sizes)
    return LithopsPlatform(platform, open_store(location, endpoint), settings), sizes


def lithops_calibration(args: Any, size_bytes: int) -> tuple[dict[int, dict[str, Any]], str]:
    """`jaxpipe calibrate --platform lithops`: the link measured in a call of each size; the
    results and the platform name the file is called after."""
    from jaxpipe.runtime.platforms import lithops_tasks

    target, sizes = _lithops_target(args)
    try:
        return (lithops_tasks.calibrate(target, sizes, size_bytes, args.repeats),
                f"lithops-{target.settings.backend}")
    finally:
        target.close()


def lithops_profile(args: Any) -> int:
    """`jaxpipe profile --platform lithops`: the profile, plus the measured `cpu_table`."""
    from jaxpipe.runtime.platforms import aws_tasks, lithops_tasks

    target, sizes = _lithops_target(args)
    micro = [int(b) for b in str(args.micro_batches).split(",") if b]
    try:
        profiles = lithops_tasks.profile_on_calls(target, args.model, sizes, micro,
                                                  args.repeats)
    finally:
        target.close()
    reference, fields = aws_tasks.profile_fields(profiles, target.platform)
    Path(args.output).write_text(json.dumps(reference.to_dict(), indent=1))
    path = args.platform_file or f"platform-lithops-{target.settings.backend}.json"
    aws_tasks.merge_platform_file(path, fields, "profiles",
                                  {str(m): p.to_dict() for m, p in profiles.items()})
    print(f"wrote {args.output} and the cpu_table of {path}: " + ", ".join(
        f"{m} MB {c:.2f} vCPU" for m, c in fields["cpu_table"].items()))
    return 0
