"""A training job as data: its spec, and where each of its objects lives in the store.

Every key of a job lives under `jobs/<job-id>/` (docs/design.md), laid out as:

    job.json                          the JobSpec (plan included)
    bundle.zip                        the exported stage programs
    optimizer.zip                     the exported optimizer programs (`runtime.optimizer`)
    data/<shard>                      dataset shards (codec: {"leaf0": ..., "leaf1": ...})
    ckpt/<t>/stage<k>/{params,opt,state,done}   stage k before iteration t
    ckpt/<t>/stage<k>/corrupt         a part did not decode: restarts skip t (`checkpoint`)
    run/<attempt>/it/<t>/act/<s>/<m>  activations of micro-batch m leaving stage s
    run/<attempt>/it/<t>/grad/<s>/<m> cotangents of micro-batch m leaving stage s (backwards)
    run/<attempt>/it/<t>/sync/<s>     the all-reduce group of stage s (a prefix)
    run/<attempt>/it/<t>/opt/<s>      stage s's partial sums for the optimizer (`partials`)
    metrics/loss/<t>/<attempt>/rank<r>   micro-batch losses of a last-stage rank (the
                                      latest attempt that ran t holds the job's)
    metrics/rank<r>/<attempt>-<inv>.json   per-invocation metrics and timeline
    status/<attempt>/<inv>/rank<r>    how an invocation ended (`event.RankStatus`)
    status/<attempt>/<inv>/rank<r>.claim   the first delivery's claim of that invocation
    status/<attempt>/<inv>/handover   the window ends early there (`runtime.handover`)
    cancel/<attempt>                  the attempt's cancellation marker (`runtime.cancel`)
    driver.json                       the running driver's lease and heartbeat (`runtime.lease`)
    driver.takeover/<sha>             the claim of the one driver taking over a dead lease
    results/summary.json              the run's `summary.Summary`
    results/summary-<n>.json          the summary of its first n iterations, kept when a
                                      finished job is extended (`runtime.resume`)
    xla-cache/<host>/stage<k>/<entry> compiled programs of stage k (`runtime.compile_cache`)

A restart after a crash, and a resume, use a new attempt number (one more than any the keys
show, `attempts.next_attempt`), so messages, claims and losses of a failed attempt can never be
mistaken for new ones. A finished job keeps job.json, its last checkpoints, metrics/ and
results/.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from jaxpipe.errors import CorruptJobError
from planners import Plan, Platform
from transports import ObjectStore, store_to_spec

__all__ = ["JobSpec", "Keys", "read_spec"]


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs besides the bundle, the data and the checkpoints.

    Attributes:
      job_id: unique name; every key of the job lives under `jobs/<job_id>/`.
      model: zoo name (informational for workers; the bundle carries the programs).
      plan: the plan: stages, micro-batch, replicas (`Plan.to_dict()` in the JSON).
      platform: the platform: bandwidth, latency, prices (`Platform.to_dict()` in the JSON).
      iterations: total iterations of the job.
      optimizer: optax optimizer name (`jaxpipe.runtime.optim.OPTIMIZERS`), with `learning_rate`
        (informational when `optimizer_programs`).
      optimizer_programs: the optimizer is the exported programs at `Keys.optimizer` (every new
        job); False for a job written before them, whose ranks compile `optimizer` by name.
      seed: seeds the data order and the dropout keys.
      num_samples, shard_size: the training set in the store.
      shuffle: the order of the examples (`jaxpipe.runtime.dataset.batch_indices`).
      shard_cache: shards stage 0 keeps in memory (`dataset.cache_shards`); None: all.
      rng_names: PRNG collections the model takes (e.g. ["dropout"]).
      checkpoint_every: iterations between checkpoints (the last one always checkpoints).
      wait_timeout_s: how long any rank waits for any one object before giving up.
      allreduce: "pipelined" or "lambdaml".
      meta: free-form record (e.g. the model's config overrides, for the test accuracy).
      compile_cache: ranks share their compiled programs through the store
        (`runtime.compile_cache`) where the platform turns the cache on.
      versions: the driver's jax, jaxlib, flax and optax (`jaxpipe.versions`); a worker of
        other versions refuses the job (None: a job written before they were recorded).
      model_kind: "linen", or "nnx": the checkpoints' leaves are an NNX module's (paths
        `params/...` and `state/...`), read back as an `nnx.State` (`runtime.variables`).
      key_impls: {state path: PRNG implementation} of the state leaves that are typed keys
        (stored as raw key data; NNX's `RngKey`s).
      state_counters: {state path: step} of the integer state leaves every forward advances
        by a constant (`staging.counters`: NNX's `RngCount`s); replicated stages set them by
        micro-batch (`runtime.rank`).

    `to_json` and `from_json` are the only translation to and from the stored `job.json`; the
    plan and the platform are parsed there, once.
    """

    job_id: str
    model: str
    plan: Plan
    platform: Platform
    iterations: int
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    seed: int = 0
    num_samples: int = 0
    shard_size: int = 1024
    shuffle: bool = True
    shard_cache: int | None = None
    rng_names: tuple[str, ...] = ()
    checkpoint_every: int = 10
    wait_timeout_s: float = 120.0
    allreduce: str = "pipelined"
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    optimizer_programs: bool = True
    model_kind: str = "linen"
    key_impls: dict[str, str] = field(default_factory=dict)
    state_counters: dict[str, Any] = field(default_factory=dict)
    compile_cache: bool = True
    versions: dict[str, str] | None = None

    def to_json(self) -> bytes:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if not self.optimizer_programs:  # a spec written before them keeps its bytes
            del data["optimizer_programs"]
        for f in dataclasses.fields(self):  # fields added since: written only when not default
            if f.name in _LATER_FIELDS and data[f.name] == _default(f):
                del data[f.name]
        data.update(plan=self.plan.to_dict(), platform=self.platform.to_dict(),
                    rng_names=list(self.rng_names))
        return json.dumps(data, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> JobSpec:
        d = json.loads(data)
        d.setdefault("optimizer_programs", False)  # absent: written before the programs
        d.update(plan=Plan.from_dict(d["plan"]), platform=Platform.from_dict(d["platform"]),
                 rng_names=tuple(d.get("rng_names", ())))
        return cls(**d)

    @property
    def num_stages(self) -> int:
        return len(self.plan.stages)

    @property
    def keys(self) -> Keys:
        return Keys(self.job_id)


_LATER_FIELDS = ("model_kind", "key_impls", "state_counters", "compile_cache", "versions")
"""JobSpec fields a stored spec may lack (read back as their defaults)."""


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


@dataclass(frozen=True)
class Keys:
    """The store keys of one job (see the module docstring for the layout)."""

    job_id: str

    @property
    def prefix(self) -> str:
        return f"jobs/{self.job_id}/"

    @property
    def spec(self) -> str:
        return self.prefix + "job.json"

    @property
    def bundle(self) -> str:
        return self.prefix + "bundle.zip"

    @property
    def optimizer(self) -> str:
        return self.prefix + "optimizer.zip"

    def shard(self, index: int) -> str:
        return f"{self.prefix}data/{index:06d}"

    def checkpoint(self, t: int, stage: int, part: str) -> str:
        return f"{self.prefix}ckpt/{t:08d}/stage{stage}/{part}"

    def checkpoints(self) -> str:
        return self.prefix + "ckpt/"

    def run(self, attempt: int) -> str:
        return f"{self.prefix}run/{attempt}/"

    def message(self, attempt: int, t: int, kind: str, stage: int, micro_batch: int) -> str:
        return f"{self.run(attempt)}it/{t}/{kind}/{stage}/{micro_batch}"

    def sync_group(self, attempt: int, t: int, stage: int) -> str:
        return f"{self.run(attempt)}it/{t}/sync/{stage}"

    def partials(self, attempt: int, t: int, stage: int) -> str:
        return f"{self.run(attempt)}it/{t}/opt/{stage}"

    def loss(self, t: int, rank: int, attempt: int) -> str:
        """The loss record of last-stage rank `rank` in iteration t of attempt `attempt`."""
        return f"{self.prefix}metrics/loss/{t:08d}/{attempt}/rank{rank}"

    def losses(self, t: int) -> str:
        """The prefix of iteration t's loss records, of every attempt."""
        return f"{self.prefix}metrics/loss/{t:08d}/"

    def metrics(self, rank: int, attempt: int, invocation: int) -> str:
        return f"{self.prefix}metrics/rank{rank}/{attempt}-{invocation}.json"

    def all_metrics(self) -> str:
        """The prefix of every rank's metrics (list it to read them all)."""
        return f"{self.prefix}metrics/rank"

    @property
    def summary(self) -> str:
        return self.prefix + "results/summary.json"

    def compile_cache(self, host: str, stage: int) -> str:
        """The prefix of stage `stage`'s compiled programs built on `host` (a fingerprint)."""
        return f"{self.prefix}xla-cache/{host}/stage{stage}/"

    def status(self, attempt: int, invocation: int, rank: int) -> str:
        return f"{self.prefix}status/{attempt}/{invocation}/rank{rank}"

    def handover(self, attempt: int, invocation: int) -> str:
        """The hand-over marker of a window that ends early (`jaxpipe.runtime.handover`)."""
        return f"{self.prefix}status/{attempt}/{invocation}/handover"

    def cancel(self, attempt: int) -> str:
        """The attempt's cancellation marker (`jaxpipe.runtime.cancel`)."""
        return f"{self.prefix}cancel/{attempt}"

    @property
    def driver(self) -> str:
        """The running driver's lease and heartbeat (`jaxpipe.runtime.lease`)."""
        return self.prefix + "driver.json"

    def takeover(self, dead: str) -> str:
        """The claim of the one driver that takes over the dead lease whose record hashes to
        `dead` (`jaxpipe.runtime.lease`)."""
        return f"{self.prefix}driver.takeover/{dead}"


def read_spec(store: ObjectStore, job: str, timeout: float | None = None) -> JobSpec:
    """Job `job`'s stored `job.json`, parsed (waiting up to `timeout` s for it to appear).

    Raises:
      CorruptJobError: it does not parse; the message names the store and the key.
      KeyNotFound, GetTimeout: there is no such job (yet).
    """
    key = Keys(job).spec
    data = store.get(key, timeout=timeout)
    try:
        return JobSpec.from_json(data)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        try:
            where = store_to_spec(store)
        except ValueError:
            where = {"kind": type(store).__name__}
        raise CorruptJobError(
            f"{key} ({len(data)} bytes) in the store {where} does not parse as a job spec "
            f"({type(err).__name__}: {err}); it was cut short or overwritten") from err
