"""`jaxpipe.fit`: train the user's Flax model on their data on functions, get the variables back.

    fit(model, loss_fn, data, ...)          the Python API
    jaxpipe train --model mypkg.models:make the CLI (`jaxpipe.cli`), zoo names too

both go through `fit_setup`, and it through `train.train` (prepare, run, summarise):

    1 check     the setup: model kind, data and eval data, batch, optimizer   `check_setup`
    2 train     `train.train`: validate, trace, plan, split, upload, run, summarise, evaluate
    3 collect   the losses of every iteration and the variables of the last checkpoint,
                reassembled into the user's structure (`variables.load_variables`)

The example order, the data shards and the streaming bound are `jaxpipe.runtime.dataset`'s;
the data forms `jaxpipe.runtime.sources`'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from flax import nnx

from jaxpipe.errors import (
    BatchTooLargeError,
    IndivisibleBatchError,
    MissingMetricsError,
    ModelKindError,
    NotAnOptimizerError,
    RngError,
    VariablesError,
)
from jaxpipe.runtime import lithops_job, sources
from jaxpipe.runtime.attempts import job_losses
from jaxpipe.runtime.input_checks import check_options
from jaxpipe.runtime.job import JobSpec, Keys, read_spec
from jaxpipe.runtime.options import TrainOptions
from jaxpipe.runtime.reporting import announce_job
from jaxpipe.runtime.summary import Summary
from jaxpipe.runtime.train import Prepared, open_store, train
from jaxpipe.runtime.training_setup import MetricsFn, TrainingSetup
from jaxpipe.runtime.variables import load_variables
from jaxpipe.staging.batch import Rngs
from jaxpipe.staging.tracing import LossFn
from jaxpipe.tree import Variables
from planners import Plan
from transports import ObjectStore

__all__ = ["FitResult", "check_optimizer", "check_setup", "fit", "fit_setup", "stored_losses"]


@dataclass(frozen=True, eq=False)
class FitResult:
    """What `fit` returns (compared by identity: it holds arrays).

    Attributes:
      losses: the mean training loss of every iteration, in order (a resumed job's too).
      variables: the trained variables. Linen: `{"params": ..., <state collections>}` as
        `model.init` returns them (numpy arrays). NNX: an `nnx.State` of the whole module
        (parameters and state, PRNG keys typed again) for `nnx.update(model, variables)`;
        the user's module itself is left as it was.
      summary: measured against predicted seconds and dollars per iteration, restarts, and
        the evaluation metrics (`summary.eval_metrics`, `summary.final_metrics`).
      job_id: the job in the store; `jaxpipe.load_variables(store, job_id)` reads it again.
      plan: the plan it ran.
      store: the store's location.
    """

    losses: tuple[float, ...]
    variables: dict[str, Any] | nnx.State
    summary: Summary
    job_id: str
    plan: Plan
    store: str

    @property
    def metrics(self) -> dict[str, float]:
        """The trained model's evaluation metrics ({} without `eval_data`)."""
        return self.summary.final_metrics

    @property
    def where(self) -> dict[str, str]:
        """Where the job's results live in the store (keys under `store`)."""
        keys = Keys(self.job_id)
        return {"job": keys.prefix, "summary": keys.summary, "metrics": keys.all_metrics(),
                "checkpoints": keys.checkpoints()}


def fit(model: Any, loss_fn: LossFn, data: Any, variables: Variables | None = None,
        optimizer: str | optax.GradientTransformation = "adam", batch_size: int = 64,
        iterations: int = 100, rngs: Rngs | None = None, shuffle: bool = True, seed: int = 0,
        platform: str = "local", method: str = "miqp", plan: Plan | str | None = None,
        max_functions: int = 4, store: str = ".jaxpipe/store", eval_data: Any = None,
        metrics_fn: MetricsFn | None = None, progress: bool = True, resume: str | None = None,
        *, learning_rate: float = 1e-3, eval_every: int | None = None,
        **options: Any) -> FitResult:
    """Trains `model` on `data`, pipelined over functions, and returns the trained variables.

    Args:
      model: a `flax.linen.Module` whose `__call__` takes the inputs pytree, or an
        `nnx.Module` (called as `model(inputs)`; it holds its variables and `nnx.Rngs`, and
        is not changed: `nnx.update(model, result.variables)` takes the trained ones).
      loss_fn: `loss_fn(outputs, targets) -> scalar`, the mean over the batch.
      data: `(inputs, targets)` pytrees of numpy arrays with a leading example axis, or a
        random-access source (`len`, `source[i] -> (inputs_i, targets_i)`).
      variables: the dict from `model.init`; None: `model.init` on the first batch with
        `PRNGKey(seed)`. None for an NNX module.
      optimizer: any `optax.GradientTransformation` (run in the workers as exported
        per-stage programs, `jaxpipe.runtime.optimizer`), or a name
        (`jaxpipe.runtime.optim.OPTIMIZERS`) with `learning_rate`.
      batch_size, iterations: the global batch and the number of iterations.
      rngs: PRNG collections the model draws from (names only; keys come from `seed`);
        None for an NNX module, whose dropout draws from its own `nnx.Rngs` (state).
      shuffle, seed: the example order (`jaxpipe.runtime.dataset`): with `shuffle=False`
        iteration t uses examples [t*B, (t+1)*B) modulo N; with True a permutation per epoch
        drawn from `seed`.
      platform, method, plan, max_functions: where to run and how to plan (`plan`: a
        `planners.Plan` or its JSON file, else `method` plans on at most `max_functions`).
      store: a directory or `s3://bucket` holding the job.
      eval_data, metrics_fn: scored on the trained variables (and every `eval_every`
        iterations) as `metrics_fn(outputs, targets) -> {name: value}`.
      progress: print the plan, a progress bar and where things are.
      resume: a job id: continue it from its latest complete checkpoint (the other arguments
        only say where it is and how to evaluate it).
      **options: any other field of `TrainOptions` (`checkpoint_every`, `job_id`,
        `shard_size`, `data_cache_mb`, `run`, ...).

    Raises:
      InputError: any subclass, before any function starts (`jaxpipe.errors`).
      JobFailed: the run could not finish; resume it with `resume=result_job_id`.
    """
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(TrainOptions)})
    if unknown:
        raise TypeError(f"fit() got unknown options {unknown}; see jaxpipe.TrainOptions")
    setup = TrainingSetup(model, loss_fn, data, variables, eval_data, metrics_fn, rngs)
    plan_value, plan_file = (plan, None) if isinstance(plan, Plan) else (None, plan)
    knobs = TrainOptions(
        model=setup.label, optimizer=check_optimizer(optimizer), learning_rate=learning_rate,
        batch=batch_size, iterations=iterations, shuffle=shuffle, seed=seed, platform=platform,
        method=method, plan=plan_value, plan_file=plan_file, max_functions=max_functions,
        store=store, eval_every=eval_every, **options)
    return fit_setup(setup, knobs, resume, progress)


def fit_setup(setup: TrainingSetup, options: TrainOptions, resume: str | None = None,
              progress: bool = True,
              announce: Callable[[Prepared, int], None] | None = None,
              extend_to: int | None = None) -> FitResult:
    """`fit` for a `TrainingSetup` and `TrainOptions` (the CLI's entry); `extend_to` trains a
    resumed job on to that many iterations (`train.train`); `announce` defaults
    to printing the plan and the job's place when `progress` is on."""
    options = lithops_job.resolve(options)  # a Lithops job's store, before anything opens it
    check_options(options)  # 1: the numbers first (a batch of 0 cannot even be traced)
    setup = check_setup(setup, options, resume is not None)
    if resume is not None and _stored_model(options, resume) not in (None, setup.label):
        # another model's setup (the CLI's default, say): nothing of it fits this job to score
        setup = dataclasses.replace(setup, eval_data=None, metrics_fn=None)
    if announce is None and progress:
        announce = announce_job
    summary = train(options, resume=resume, show_progress=progress, setup=setup,  # 2
                    announce=announce, extend_to=extend_to)
    store = open_store(options.store, options.endpoint_url)  # 3
    spec = JobSpec.from_json(store.get(Keys(summary.job).spec, timeout=10))
    return FitResult(stored_losses(store, spec), load_variables(store, summary.job), summary,
                     summary.job, spec.plan, options.store)


def _stored_model(options: TrainOptions, job: str) -> str | None:
    """The model label stored with job `job`, None if there is no such job (yet)."""
    store = open_store(options.store, options.endpoint_url)
    if not store.exists(Keys(job).spec):
        return None
    return read_spec(store, job, timeout=10).model  # CorruptJobError names a cut job.json


def check_setup(setup: TrainingSetup, options: TrainOptions, resuming: bool = False,
                ) -> TrainingSetup:
    """The setup checked before any work, with its variables initialised if None.

    Raises:
      ModelKindError: not a Flax linen or NNX module.
      VariablesError, RngError: variables or rngs given with an NNX module.
      MissingMetricsError: `eval_data` without `metrics_fn`.
      MissingTargetsError, DataLengthError: bad `data` or `eval_data` (`sources.examples`).
      BatchTooLargeError, IndivisibleBatchError: a batch the data or the plan cannot give.
    """
    _check_model(setup)
    if setup.eval_data is not None and setup.metrics_fn is None:
        raise MissingMetricsError("eval_data was given without metrics_fn(outputs, targets)")
    if setup.eval_data is not None:
        sources.examples(setup.eval_data, "eval_data")
    if resuming:
        return setup
    data = sources.examples(setup.data)
    if options.batch > data.count:
        raise BatchTooLargeError(f"batch_size {options.batch} is larger than the training "
                                 f"set's {data.count} examples")
    if options.plan is not None:
        _check_divisible(options.batch, options.plan)
    if setup.variables is None and not isinstance(setup.model, nnx.Module):
        inputs, _ = data.rows(0, options.batch)
        keys = {"params": jax.random.PRNGKey(options.seed), **(setup.rngs or {})}
        setup = dataclasses.replace(setup, variables=dict(setup.model.init(keys, inputs)))
    return setup


def _check_model(setup: TrainingSetup) -> None:
    model = setup.model
    if isinstance(model, nn.Module):
        return
    if not isinstance(model, nnx.Module):
        raise ModelKindError(f"fit needs a flax.linen or flax.nnx Module; got "
                             f"{type(model).__qualname__}")
    if setup.variables is not None:
        raise VariablesError("an NNX module holds its own variables; pass variables=None "
                             "(its current parameters and state are trained)")
    if setup.rngs:
        raise RngError("an NNX module draws its random numbers from its own nnx.Rngs; pass "
                       "rngs=None (dropout keys and counters are part of its state)")


def _check_divisible(batch: int, plan: Plan) -> None:
    need = [plan.micro_batch * st.replicas for st in plan.stages]
    if any(batch % n for n in need):
        raise IndivisibleBatchError(
            f"batch_size {batch} does not split into micro-batches of {plan.micro_batch} "
            f"spread evenly over replicas {[st.replicas for st in plan.stages]}: it must be a "
            f"multiple of {int(np.lcm.reduce(need))}")


def check_optimizer(optimizer: object) -> str | optax.GradientTransformation:
    """`optimizer` if it is a name or an optax transformation.

    Raises:
      NotAnOptimizerError: neither a name nor an optax transformation.
    """
    if isinstance(optimizer, str | optax.GradientTransformation):
        return optimizer
    raise NotAnOptimizerError(f"optimizer must be a name or an optax.GradientTransformation; "
                              f"got {type(optimizer).__qualname__}")


def stored_losses(store: ObjectStore, spec: JobSpec) -> tuple[float, ...]:
    """The mean loss of every iteration of a job, from the last stage's loss records (so a
    resumed job's earlier iterations count too; of each iteration, the latest attempt's)."""
    return job_losses(store, spec.keys, spec.iterations)
