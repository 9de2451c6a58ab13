"""A Lithops configuration as JaxPipe reads it, and every check of it before any call.

`--platform lithops --lithops-config FILE` takes Lithops' own YAML format (`lithops.backend`,
`lithops.storage`, a section per backend and storage). `load_settings` reads the file, lets
Lithops' own loader (`lithops.config.default_config`) fill in its defaults and refuse what it
refuses, and keeps what JaxPipe needs of the result:

    backend            -> catalog   aws_lambda: aws-lambda, aliyun_fc: alibaba-fc, localhost:
                                    local; any other backend: a full `--platform-file`
    runtime_timeout    -> the job's time limit: min(catalog, runtime_timeout - 5 s, which is
                                    what Lithops gives a call), localhost: execution_timeout
    memory rules       -> `check_memory`: the plan's sizes against what the backend accepts
                                    (Lithops' own constants where it states them)
    storage section    -> `store_location`: the job's S3 store when `--store` names none
    worker_processes   -> `check_workers`: localhost runs that many calls at once

Each refusal is an `InputError` raised before anything is written or invoked.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import json
import sys
import tomllib
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxpipe.errors import (
    LithopsConfigError,
    LithopsMemoryError,
    LithopsStorageError,
    LithopsWorkersError,
)
from planners import Platform, platforms

__all__ = ["CATALOGS", "EXTRAS", "S3_STORAGES", "LithopsSettings", "backend_accepts",
           "backend_module", "check_memory", "check_workers", "interpreter", "job_platform",
           "load_settings", "missing_client", "store_location"]

CATALOGS = {"aws_lambda": "aws-lambda", "aliyun_fc": "alibaba-fc", "localhost": "local"}
"""The planner catalog each Lithops backend is priced and planned by; other backends need a
`--platform-file` holding a whole `planners.Platform`."""

S3_STORAGES = ("aws_s3", "aliyun_oss", "ibm_cos", "minio", "ceph")
"""Lithops storage backends with an S3 API, where JaxPipe's conditional writes work."""

EXTRAS = {"aws_lambda": "aws", "aws_s3": "aws", "aliyun_fc": "aliyun", "aliyun_oss": "aliyun",
          "gcp_functions": "gcp", "gcp_storage": "gcp", "ibm_cf": "ibm", "code_engine": "ibm",
          "ibm_cos": "ibm", "azure_functions": "azure", "azure_storage": "azure",
          "k8s": "kubernetes", "minio": "minio", "ceph": "ceph"}
"""The Lithops extra (`pip install 'lithops[X]'`) that brings each backend's client SDK."""

LITHOPS_TIMEOUT_MARGIN_S = 5.0
"""Lithops gives a serverless call `runtime_timeout - 5` seconds (lithops/job/job.py)."""

ALIYUN_MEMORY_STEP_MB, ALIYUN_MEMORY_RANGE_MB = 64, (128, 32768)
"""[ASSUMED] Function Compute sizes: multiples of 64 MB; Lithops states no rule for aliyun_fc.
Check the current quota page (docs/alibaba.md)."""


@dataclass(frozen=True)
class LithopsSettings:
    """What JaxPipe uses of a Lithops configuration (the loaded file and Lithops' view of it).

    Attributes:
      path: the file.
      config: the file's content as written; `FunctionExecutor(config=...)` gets it.
      backend, storage, mode: as Lithops resolved them ("localhost" or "serverless").
      runtime: the runtime (image or interpreter) the backend runs calls in.
      call_timeout_s: the longest a call may run, as Lithops enforces it.
      worker_processes: localhost only: calls run at once.
      storage_section: Lithops' storage section after its defaults (bucket, endpoint, region).
    """

    path: str
    config: dict[str, Any] = field(hash=False)
    backend: str
    storage: str
    mode: str
    runtime: str | None
    call_timeout_s: float
    worker_processes: int | None
    storage_section: dict[str, Any] = field(hash=False, default_factory=dict[str, Any])

    @property
    def catalog(self) -> str | None:
        """The planner catalog of this backend, None if it needs a platform file."""
        return CATALOGS.get(self.backend)


def load_settings(path: str | None) -> LithopsSettings:
    """Reads and checks a Lithops config file (module docstring).

    Raises:
      LithopsConfigError: no path, a missing or non-YAML file, no `lithops.backend`, a
        standalone backend, a localhost section without `worker_processes`, or anything
        Lithops' own loader refuses (its message is quoted).
    """
    if not path:
        raise LithopsConfigError("--platform lithops needs --lithops-config FILE, a Lithops "
                                 "config (`jaxpipe deploy lithops --backend B` prints one)")
    config = _read_yaml(Path(path))
    section = config.get("lithops")
    if not isinstance(section, dict) or not section.get("backend"):
        raise LithopsConfigError(f"{path}: no `lithops.backend`; name the compute backend "
                                 "(aws_lambda, aliyun_fc, gcp_functions, localhost, ...)")
    backend = str(section["backend"])
    if backend == "localhost" and "worker_processes" not in (config.get("localhost") or {}):
        raise LithopsConfigError(f"{path}: the localhost section needs `worker_processes`, "
                                 "at least the plan's number of functions")
    loaded = _lithops_view(config, path)
    mode = loaded["lithops"]["mode"]
    if mode not in ("localhost", "serverless"):
        raise LithopsConfigError(f"{path}: backend {backend!r} runs in Lithops' {mode} mode "
                                 "(virtual machines); JaxPipe runs ranks as serverless calls")
    compute = loaded.get(backend) or {}
    if mode == "localhost":
        timeout = float(loaded["lithops"]["execution_timeout"])
    else:
        timeout = float(compute.get("runtime_timeout", 300)) - LITHOPS_TIMEOUT_MARGIN_S
    storage = str(loaded["lithops"]["storage"])
    workers = compute.get("worker_processes") if mode == "localhost" else None
    return LithopsSettings(
        path=str(path), config=config, backend=backend, storage=storage, mode=mode,
        runtime=compute.get("runtime"), call_timeout_s=timeout,
        worker_processes=None if workers is None else int(workers),
        storage_section=dict(loaded.get(storage) or {}))


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.exists():
        raise LithopsConfigError(f"--lithops-config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise LithopsConfigError(f"--lithops-config {path} is not YAML: {err}") from err
    if not isinstance(data, dict):
        raise LithopsConfigError(f"--lithops-config {path} holds no mapping (a Lithops config "
                                 "has a `lithops` section and one per backend)")
    return data


def _lithops_view(config: dict[str, Any], path: str) -> dict[str, Any]:
    """The config as Lithops completes it (`default_config`); its refusals as ours.

    A backend's config module sits in a package whose `__init__` imports the cloud's SDK
    (`lithops[gcp]`, `lithops[aliyun]`); checking a config needs only the config module, so
    where the SDK is missing the packages are stood in for while the loader runs.
    """
    from lithops.config import default_config

    lithops = config.get("lithops") or {}
    packages = [f"lithops.serverless.backends.{lithops.get('backend')}",
                f"lithops.storage.backends.{lithops.get('storage', 'aws_s3')}"]
    with _config_modules_only(packages):
        try:
            return default_config(config_data=copy.deepcopy(config))
        except Exception as err:  # Lithops raises bare Exceptions with the reason as message
            raise LithopsConfigError(f"Lithops' config loader refuses {path}: {err}") from err


@contextlib.contextmanager
def _config_modules_only(packages: Sequence[str]) -> Iterator[None]:
    """Stands in for each package in `packages` whose `__init__` does not import (a missing
    SDK) with an empty package on the same path, so `<package>.config` loads alone; removes
    every stand-in, and the config modules loaded under them, afterwards."""
    added: list[str] = []
    for name in packages:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
            continue
        except ModuleNotFoundError as err:
            if err.name and err.name.startswith("lithops"):
                continue  # no such backend: Lithops' loader says so itself
        parent = importlib.import_module(name.rsplit(".", 1)[0])
        stand_in = types.ModuleType(name)
        stand_in.__path__ = [str(Path(next(iter(parent.__path__))) / name.rsplit(".", 1)[1])]
        sys.modules[name] = stand_in
        added.append(name)
    try:
        yield
    finally:
        for name in added:
            for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                del sys.modules[loaded]


def missing_client(settings: LithopsSettings) -> str | None:
    """What this machine lacks to invoke the backend and reach its storage through Lithops
    (a module of the cloud's SDK, with the Lithops extra that brings it), or None."""
    for kind, name in (("serverless", settings.backend), ("storage", settings.storage)):
        if settings.mode == "localhost" and kind == "serverless":
            continue
        package = f"lithops.{kind}.backends.{name}"
        try:
            importlib.import_module(package)
        except ModuleNotFoundError as err:
            extra = EXTRAS.get(name, name.split("_")[0])
            return f"module {err.name!r} for {name}: pip install 'lithops[{extra}]'"
    return None


def job_platform(settings: LithopsSettings, platform_file: str | None) -> Platform:
    """The catalog platform a job on this backend plans and prices with, its time limit cut
    to what the backend gives one call.

    Raises:
      LithopsConfigError: a backend without a catalog and no `--platform-file`.
    """
    if settings.catalog is not None:
        platform = platforms.get(settings.catalog, platform_file)
    elif platform_file is not None:
        text = Path(platform_file).read_text()
        data = tomllib.loads(text) if platform_file.endswith(".toml") else json.loads(text)
        platform = Platform.from_dict(data.get("platform", data))
    else:
        raise LithopsConfigError(
            f"backend {settings.backend!r} has no catalog entry (known: {sorted(CATALOGS)}); "
            "pass --platform-file with a whole platform: name, memory_options_mb, prices, "
            "bandwidth (see docs/alibaba.md, 'A catalog file')")
    return dataclasses.replace(platform,
                               timeout_s=min(platform.timeout_s, settings.call_timeout_s))


def backend_accepts(backend: str) -> tuple[str, Any]:
    """How a backend's memory sizes are ruled: ("set", sizes), ("range", (lo, hi)),
    ("step", (step, lo, hi)) or ("any", None), from Lithops' own constants where it has them.

    Example:
      >>> backend_accepts("aws_lambda")
      ('range', (128, 10240))
    """
    if backend == "aws_lambda":
        aws = backend_module(backend)
        return "range", (aws.RUNTIME_MEMORY_MIN, aws.RUNTIME_MEMORY_MAX)
    if backend == "gcp_functions":
        return "set", tuple(sorted(backend_module(backend).RUNTIME_MEMORY_OPTIONS))
    if backend == "code_engine":
        return "set", tuple(backend_module(backend).VALID_MEMORY_VALUES)
    if backend == "azure_functions":
        return "set", tuple(sorted(backend_module(backend).FLEX_INSTANCE_MEMORY))
    if backend == "aliyun_fc":
        return "step", (ALIYUN_MEMORY_STEP_MB, *ALIYUN_MEMORY_RANGE_MB)
    return "any", None


def backend_module(backend: str) -> Any:
    """Lithops' config module of a serverless backend (its constants), without its SDK."""
    package = f"lithops.serverless.backends.{backend}"
    with _config_modules_only([package]):
        return importlib.import_module(f"{package}.config")


def _accepted(rule: tuple[str, Any], memory_mb: int) -> bool:
    kind, value = rule
    if kind == "set":
        return memory_mb in value
    if kind == "range":
        return value[0] <= memory_mb <= value[1]
    if kind == "step":
        return memory_mb % value[0] == 0 and value[1] <= memory_mb <= value[2]
    return memory_mb > 0


def check_memory(settings: LithopsSettings, memory_mb: Sequence[int]) -> None:
    """Raises LithopsMemoryError naming every size the backend cannot give a function."""
    rule = backend_accepts(settings.backend)
    refused = sorted({int(m) for m in memory_mb if not _accepted(rule, int(m))})
    if refused:
        kind, value = rule
        if kind == "set":
            says = f"one of {list(value)} MB"
        elif kind == "range":
            says = f"{value[0]}-{value[1]} MB"
        else:
            says = f"a multiple of {value[0]} MB in {value[1]}-{value[2]} MB"
        raise LithopsMemoryError(f"backend {settings.backend} gives a function {says}; the plan "
                                 f"asks for {refused} MB: plan with memory options it accepts")


def check_workers(settings: LithopsSettings, functions: int) -> None:
    """Raises LithopsWorkersError when localhost cannot run every rank at once."""
    if settings.mode == "localhost" and (settings.worker_processes or 1) < functions:
        raise LithopsWorkersError(
            f"{settings.path}: localhost.worker_processes is {settings.worker_processes}, but "
            f"the plan has {functions} functions that must all run at once; set it to at "
            f"least {functions}")


def store_location(settings: LithopsSettings, store: str, endpoint_url: str | None,
                   default_store: str) -> tuple[str, str | None]:
    """The job's store (`train.open_store` location and endpoint) on this backend.

    An `s3://` `--store` is used as given. Localhost functions share this machine's disk, so
    a directory works there. Otherwise, with `--store` left at its default, the store is the
    Lithops storage section's bucket, which must have an S3 API.

    Raises:
      LithopsStorageError: a directory for remote functions, or a storage without an S3 API.
    """
    if store.startswith("s3://") or settings.mode == "localhost":
        return store, endpoint_url
    if store != default_store:
        raise LithopsStorageError(
            f"functions on {settings.backend} cannot see this machine's disk ({store!r}): "
            "use --store s3://bucket (with --endpoint-url for a non-AWS endpoint)")
    section = settings.storage_section
    if settings.storage not in S3_STORAGES:
        raise LithopsStorageError(
            f"Lithops storage {settings.storage!r} has no S3 API, and JaxPipe's workers claim "
            "every call with a conditional write (If-None-Match) so that a duplicate runs once; "
            f"give --store s3://bucket of an S3-compatible store, or one of {S3_STORAGES}")
    bucket = section.get("storage_bucket")
    if not bucket:
        raise LithopsStorageError(f"{settings.path}: the {settings.storage} section has no "
                                  "storage_bucket; name the bucket or pass --store s3://bucket")
    return f"s3://{bucket}", endpoint_url or _endpoint(settings.storage, section)


def _endpoint(storage: str, section: dict[str, Any]) -> str | None:
    """The S3 endpoint of a Lithops storage section (None: AWS's own)."""
    if storage == "aliyun_oss":  # OSS's S3-compatible API: s3.oss-<region>[-internal]...
        return f"https://s3.oss-{section['region']}.aliyuncs.com"
    if storage == "ibm_cos":
        return section.get("endpoint") or (
            f"https://s3.{section.get('region')}.cloud-object-storage.appdomain.cloud")
    return section.get("endpoint")


def interpreter() -> str:
    """The localhost runtime JaxPipe puts in a config that names none: this interpreter (the
    one with JaxPipe installed), not the first `python` on PATH that Lithops would pick."""
    return sys.executable
