"""`TrainOptions`: every knob of `jaxpipe train`, as one frozen value the CLI fills in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optax

from jaxpipe.runtime.driver import RunConfig
from jaxpipe.runtime.platforms.aws import FUNCTION_PREFIX
from planners import Plan

__all__ = ["TrainOptions"]


@dataclass(frozen=True)
class TrainOptions:
    """Every knob of `jaxpipe train`, each with the default the CLI uses.

    Besides the CLI's flags: `plan` is a `planners.Plan` given as a value (it wins over
    `plan_file`); `shuffle` picks the example order (`jaxpipe.runtime.dataset`); `shard_size`
    is examples per data shard; `data_cache_mb` is how much of the training set stage 0 keeps
    in memory (None: a quarter of the platform's smallest memory option), beyond which it
    streams shards; `eval_every` scores the evaluation data every that many iterations too.
    """

    model: str = "mlp"
    model_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"seq_len": 32}
    platform: str = "local"
    platform_file: str | None = None
    plan_file: str | None = None
    method: str = "miqp"
    batch: int = 64
    iterations: int = 60
    optimizer: str | optax.GradientTransformation = "adam"  # a name (with learning_rate)
    learning_rate: float = 3e-3
    seed: int = 0
    store: str = ".jaxpipe/store"
    endpoint_url: str | None = None
    job_id: str | None = None
    checkpoint_every: int = 10
    max_functions: int = 4
    allreduce: str = "pipelined"
    profile_cache: str = ".jaxpipe/profiles"
    wait_timeout_s: float = 120.0
    function_prefix: str = FUNCTION_PREFIX  # aws-lambda: ranks run on <prefix>-<memory MB>
    region: str | None = None  # aws-lambda: --region, else AWS_REGION / AWS_DEFAULT_REGION
    aws_checks: bool = True  # aws-lambda: check the account first (`platforms.aws_preflight`)
    lithops_config: str | None = None  # lithops: the Lithops config file (its own format)
    run: RunConfig = field(default_factory=RunConfig)
    plan: Plan | None = None
    shuffle: bool = True
    shard_size: int = 1024
    data_cache_mb: float | None = None
    eval_every: int | None = None
    compile_cache: bool = True  # ranks share compiled programs via the store (`compile_cache`)
    live_profile: bool = False  # profile this machine even where a profile ships (`first_job`)
