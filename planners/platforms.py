"""Serverless platform catalog: memory options, CPU share, storage links and prices.

``get(name)`` returns a frozen ``Platform`` for ``aws-lambda``, ``alibaba-fc``, ``local`` or
``local-small`` (the local platform with small functions: the default job's); an
optional TOML or JSON file overrides any field, because prices change and bandwidth and latency
must be calibrated on the machine at hand. Tags in comments: [DOC url] vendor documentation,
[CODE file] FuncPipe's reference code (the authors' release of the paper cited in
docs/design.md), [ABS1] the FuncPipe v1 abstract, [MEASURED file] our own benchmark's result,
[ASSUMED] our own choice, to be calibrated.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planners._json import JsonMixin, int_keyed
from planners.errors import PlanError

__all__ = ["Platform", "get", "names"]

MB = 1_000_000  # storage bandwidths are quoted in decimal MB/s


@dataclass(frozen=True)
class Platform(JsonMixin):
    """A function platform plus its object store, as the cost model sees them.

    Attributes:
      name: catalog name.
      memory_options_mb: memory sizes a planner may choose, in MB (ascending).
      mb_per_cpu: MB of memory that buy one CPU when the share is proportional to memory; None
        when every function gets ``max_cpus``.
      max_cpus: cap on the CPU share of one function, in CPUs.
      cpu_table: explicit CPU share per memory option (overrides the proportional rule).
      uplink_bytes_per_s, downlink_bytes_per_s: function <-> storage bandwidth, bytes/s.
      request_latency_s: fixed latency of one storage request, seconds.
      price_gb_second: price of one GB-second of function time (memory in GiB = MB / 1024);
        ``compute_dollars`` and ``function_dollars`` apply it.
      price_invocation: price of one function invocation (``invocation_dollars``,
        ``handover_invocation_dollars``).
      price_put, price_get: price of one storage PUT (or LIST) and one GET request
        (``request_dollars``).
      currency: unit of every price.
      timeout_s: longest run of one invocation, seconds; a worker hands over before it.
      cold_start_s: seconds from an invocation's launch to its first micro-batch (runtime
        start, imports, stage load, compile) beyond a steady iteration, paid once per window,
        with the compile cache warm (`experiments/bench_coldstart.py`, "warm" rows).
      max_concurrency: most functions that may run at once.
      runtime_base_mb: memory of the runtime itself (Python, jaxlib, buffers), MB.
      safety_margin_mb: headroom kept free in every function, MB.
    """

    name: str
    memory_options_mb: tuple[int, ...]
    mb_per_cpu: float | None
    max_cpus: float
    uplink_bytes_per_s: float
    downlink_bytes_per_s: float
    request_latency_s: float
    price_gb_second: float
    price_invocation: float
    price_put: float
    price_get: float
    currency: str = "USD"
    timeout_s: float = 900.0
    max_concurrency: int = 1000
    cold_start_s: float = 0.0
    runtime_base_mb: float = 400.0
    safety_margin_mb: float = 200.0
    cpu_table: dict[int, float] = field(default_factory=dict[int, float], hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "memory_options_mb", tuple(sorted(self.memory_options_mb)))
        problems: list[str] = []
        if not self.memory_options_mb or min(self.memory_options_mb) <= 0:
            problems.append(f"memory_options_mb must be positive, got {self.memory_options_mb}")
        for name in ("uplink_bytes_per_s", "downlink_bytes_per_s", "max_cpus"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.cold_start_s < self.timeout_s:
            problems.append(f"cold_start_s must be in [0, timeout_s = {self.timeout_s}), got "
                            f"{self.cold_start_s}")
        if problems:
            raise PlanError(f"platform {self.name!r}: " + "; ".join(problems))

    def cpus(self, memory_mb: float) -> float:
        """CPU share of a function with ``memory_mb`` MB, in CPUs."""
        if int(memory_mb) in self.cpu_table:
            return self.cpu_table[int(memory_mb)]
        if self.mb_per_cpu is None:
            return self.max_cpus
        return min(memory_mb / self.mb_per_cpu, self.max_cpus)

    @property
    def max_memory_mb(self) -> int:
        """Largest memory option, MB."""
        return self.memory_options_mb[-1]

    def compute_dollars(self, gigabytes: float, seconds: float) -> float:
        """Price of ``gigabytes`` GB of functions running for ``seconds``: the GB-second bill.

        Platforms bill memory times duration: ``price_gb_second * seconds * gigabytes``, where a
        function of m MB counts m / 1024 GB (``gigabytes`` may sum several functions).

        Args:
          gigabytes: memory of the running functions, in GB (MB / 1024); >= 0.
          seconds: how long they run, in seconds; >= 0.

        Returns:
          float: the compute price, in the platform's currency.

        Example:
          >>> round(get("aws-lambda").compute_dollars(2.0, 10.0), 9)
          0.000333334
        """
        return self.price_gb_second * seconds * gigabytes

    def function_dollars(self, memory_mb: float, seconds: float) -> float:
        """Compute price of one function of ``memory_mb`` MB billed for ``seconds``.

        The same GB-second rule as ``compute_dollars`` with gigabytes = memory_mb / 1024; add
        ``invocation_dollars`` for the invocation itself.

        Example:
          >>> get("aws-lambda").function_dollars(1024, 1.0) == get("aws-lambda").price_gb_second
          True
        """
        return self.compute_dollars(memory_mb / 1024, seconds)

    def invocation_dollars(self, invocations: float) -> float:
        """Price of ``invocations`` function invocations: ``price_invocation * invocations``.

        Example:
          >>> get("aws-lambda").invocation_dollars(1_000_000)
          0.2
        """
        return self.price_invocation * invocations

    def handover_invocation_dollars(self, functions: float, seconds: float) -> float:
        """Invocation price of ``functions`` functions kept running for ``seconds``.

        A worker hands over to a fresh invocation before ``timeout_s``, so each function is
        invoked seconds / timeout_s times over that span: the bill is
        ``price_invocation * functions * seconds / timeout_s`` (the cost model's rule).

        Example:
          >>> aws = get("aws-lambda")
          >>> aws.handover_invocation_dollars(4, aws.timeout_s) == aws.invocation_dollars(4)
          True
        """
        return self.price_invocation * functions * seconds / self.timeout_s

    def request_dollars(self, puts: float, gets: float) -> float:
        """Price of ``puts`` PUT (or LIST) and ``gets`` GET storage requests.

        Example:
          >>> round(get("aws-lambda").request_dollars(puts=1000, gets=1000), 6)
          0.0054
        """
        return self.price_put * puts + self.price_get * gets

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        data = dataclasses.asdict(self)
        data["memory_options_mb"] = list(self.memory_options_mb)
        data["cpu_table"] = {str(k): v for k, v in self.cpu_table.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Platform:
        """Inverse of ``to_dict``."""
        _check_fields(data, cls.__name__)
        kwargs = dict(data)
        kwargs["memory_options_mb"] = tuple(int(m) for m in data["memory_options_mb"])
        kwargs["cpu_table"] = int_keyed(data.get("cpu_table"))
        return cls(**kwargs)


_AWS = Platform(
    name="aws-lambda",
    # FuncPipe's "8level" grid [CODE tools/aws_function_create.py:14]; Lambda allows 128-10240 MB
    # in 1 MB steps [DOC docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html].
    memory_options_mb=(1024, 2048, 3072, 4096, 5120, 6144, 8192, 10240),
    # 1769 MB = one vCPU, share proportional to memory
    # [DOC docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html]; at most 6 vCPUs at
    # 10240 MB [DOC github.com/rwnx/lambda-cpuinfo].
    mb_per_cpu=1769.0,
    max_cpus=6.0,
    # "70MB/s bandwidth" per function [ABS1, arxiv.org/abs/2204.13561v1].
    uplink_bytes_per_s=70 * MB,
    downlink_bytes_per_s=70 * MB,
    # [ASSUMED] S3 small-request first-byte latency is tens of ms; calibrate with the transports
    # benchmark. FuncPipe does not state it.
    request_latency_s=0.03,
    # x86 us-east-1 [DOC aws.amazon.com/lambda/pricing]: $0.0000166667 per GB-s, $0.20 per 1M.
    price_gb_second=0.0000166667,
    price_invocation=0.20 / 1e6,
    # S3 Standard [DOC aws.amazon.com/s3/pricing]: PUT/COPY/POST/LIST $0.005 per 1000,
    # GET $0.0004 per 1000; DELETE is free.
    price_put=0.005 / 1000,
    price_get=0.0004 / 1000,
    currency="USD",
    timeout_s=900.0,  # [DOC docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html]
    max_concurrency=1000,  # default regional quota, same page
    # The local start-up with a warm compile cache, 17 s (see _LOCAL), plus 1 s for Lambda's own
    # start of an execution environment: "from under 100 ms to over 1 second" [DOC the Lambda
    # operator guide, "Cold starts and latency", serverlessland.com/content/service/lambda/
    # guides/aws-lambda-operator-guide/execution-environments]. Importing JAX from a lazily
    # loaded image on 1.7 vCPU (3008 MB) is not measured on Lambda itself [ASSUMED: as local].
    cold_start_s=18.0,
    runtime_base_mb=400.0,  # [ASSUMED] Python + jaxlib RSS; measure with `jaxpipe profile`
    safety_margin_mb=200.0,  # [CODE baselines/.../_data_translate.py:195], 200 MB margin
)

_ALIBABA = Platform(
    name="alibaba-fc",
    memory_options_mb=(256, 512, 1024, 3072),  # [CODE _data_translate.py:11-15]
    mb_per_cpu=None,
    max_cpus=1.0,
    # COMP_RATIO 0.1/0.2/0.4/1.0 per memory level [CODE _data_translate.py:8-19], used as CPUs.
    cpu_table={256: 0.1, 512: 0.2, 1024: 0.4, 3072: 1.0},
    uplink_bytes_per_s=50 * MB,  # BW = 50 MB/s to OSS [CODE _data_translate.py:8-19]
    downlink_bytes_per_s=50 * MB,
    request_latency_s=0.05,  # LAT = 50 ms [CODE _data_translate.py:8-19]
    price_gb_second=0.000110592,  # UNIT_COST [CODE _data_translate.py:12], CNY presumed
    # [ASSUMED, UNVERIFIED] FC list price CNY 0.0133 per 10k invocations; OSS CNY 0.01 per 10k
    # PUT and per 10k GET requests. Not in the reference code; re-derive from current pricing.
    price_invocation=0.0133 / 10_000,
    price_put=0.01 / 10_000,
    price_get=0.01 / 10_000,
    currency="CNY",
    timeout_s=600.0,  # [ASSUMED] classic FC limit; check the current quota page
    max_concurrency=300,  # [ASSUMED] default instance quota; check the console
    # The local start-up with a warm compile cache, 17 s (see _LOCAL), plus 4 s to pull and
    # start a custom-container image with image acceleration ("from several minutes to a few
    # seconds" [DOC alibabacloud.com/help/en/functioncompute/fc-2-0/user-guide/accelerate-
    # startup-of-images-of-container-registry-enterprise-edition]; 4 s [ASSUMED] for "a few").
    cold_start_s=21.0,
    runtime_base_mb=400.0,  # [ASSUMED] as for AWS
    safety_margin_mb=200.0,  # [CODE _data_translate.py:195]
)

_LOCAL = Platform(
    name="local",
    memory_options_mb=(512, 1024, 2048, 3072, 4096),  # [ASSUMED] caps the local launcher sets
    mb_per_cpu=None,
    max_cpus=1.0,  # [ASSUMED] one core per local function; override from measurement
    uplink_bytes_per_s=70 * MB,  # emulates Lambda's 70 MB/s [ABS1]
    downlink_bytes_per_s=70 * MB,
    request_latency_s=0.02,  # [ASSUMED] emulated storage latency, local default 20 ms
    # Priced like aws-lambda so that local runs report what Lambda would charge (see above).
    price_gb_second=0.0000166667,
    price_invocation=0.20 / 1e6,
    price_put=0.005 / 1000,
    price_get=0.0004 / 1000,
    currency="USD",
    timeout_s=3600.0,  # [ASSUMED] local functions have no hard limit; hand over hourly
    max_concurrency=64,  # [ASSUMED]
    # Start-up of a fresh rank process with a warm compile cache (spawn to the end of its first
    # forward and backward, minus a steady one): the largest of the three models' means,
    # AmoebaNet-D(18, 64) 16.6 s (ResNet-50 14.5 s, BERT-Base 7.2 s; 2 stages, micro-batch 4,
    # 2 shared cores at load 10-12) [MEASURED experiments/results/bench_coldstart.json, "warm"
    # rows]. Mostly importing JAX (4-12 s); without the cache it was 27-110 s.
    cold_start_s=17.0,
    runtime_base_mb=400.0,  # [ASSUMED] as for AWS
    safety_margin_mb=200.0,  # [CODE _data_translate.py:195]
)

_LOCAL_SMALL = dataclasses.replace(
    _LOCAL,
    name="local-small",
    # Small functions, as the first run trains on (`jaxpipe train` without flags): 1-3 GB of
    # memory, half a CPU each [ASSUMED: a 1 GB Lambda gets 0.58 vCPU at 1769 MB per vCPU,
    # DOC docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html; four such functions
    # are the two cores of the machine the default job is sized for], and a small function's
    # share of the network to storage, 10 MB/s each way [ASSUMED, below the 70 MB/s of ABS1,
    # which is a large function's; calibrate with `jaxpipe calibrate`]. The local launcher
    # emulates the link exactly (`ThrottledStore`) and the CPU share by running each function
    # on one thread.
    memory_options_mb=(1024, 2048, 3072),
    max_cpus=0.5,
    uplink_bytes_per_s=10 * MB,
    downlink_bytes_per_s=10 * MB,
    # The small models' start-up with a warm compile cache: the largest of the -tiny configs'
    # means, AmoebaNet-D tiny 7.0 s (ResNet-50 tiny 5.7 s, BERT-Base tiny 4.8 s; load ~9)
    # [MEASURED experiments/results/bench_coldstart_quick.json, "warm" rows].
    cold_start_s=7.0,
)

_CATALOG = {p.name: p for p in (_AWS, _ALIBABA, _LOCAL, _LOCAL_SMALL)}


def names() -> tuple[str, ...]:
    """Names of the catalog's platforms."""
    return tuple(_CATALOG)


def get(name: str, overrides_file: str | Path | None = None) -> Platform:
    """Return the catalog platform ``name``, with fields overridden from a TOML or JSON file.

    The file holds ``Platform`` fields at top level or under a ``[platform]`` table, e.g.
    ``request_latency_s = 0.012`` or ``memory_options_mb = [1024, 2048]``.

    Raises:
      PlanError: unknown platform name, unreadable file or unknown field; the message lists the
        accepted names.

    Example:
      >>> get("aws-lambda").cpus(1769)
      1.0
    """
    if name not in _CATALOG:
        raise PlanError(f"unknown platform {name!r}; choose one of {sorted(_CATALOG)}")
    platform = _CATALOG[name]
    if overrides_file is None:
        return platform
    path = Path(overrides_file)
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as err:
        raise PlanError(f"cannot read platform overrides {path}: {err}") from err
    data = data.get("platform", data)
    merged = platform.to_dict() | data
    return Platform.from_dict(merged)


def _check_fields(data: dict[str, Any], owner: str) -> None:
    known = {f.name for f in dataclasses.fields(Platform)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PlanError(f"{owner}: unknown fields {unknown}; known fields are {sorted(known)}")
