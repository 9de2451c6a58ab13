"""JaxPipe's errors: one class per mistake, each docstring says how to fix it.

Two families, told apart by their base:

- `InputError` (also a `ValueError`): the input is wrong, and it is refused before any work
  starts, so nothing is written and nothing is lost. The message names the values seen; the
  class docstring says what to do.
- `JobFailed` (also a `RuntimeError`): a job that started could not finish. Its checkpoints stay
  in the store, so it can be resumed.

Both derive from `JaxPipeError`, so `except JaxPipeError` catches everything JaxPipe raises on
purpose. The planners and transports libraries keep errors of their own (`planners.PlanError`,
`transports.StoreError`), since they import nothing of JaxPipe's.
"""

from __future__ import annotations

__all__ = [
    "BatchError",
    "BatchSizeError",
    "BatchTooLargeError",
    "CheckpointEveryError",
    "BudgetExceeded",
    "BundleError",
    "ConcurrencyError",
    "CorruptJobError",
    "CouplingError",
    "CutError",
    "DataFileError",
    "DataLengthError",
    "DatasetError",
    "DriverStopped",
    "EventTooLargeError",
    "FunctionsNotReadyError",
    "ImportPathError",
    "IterationsError",
    "JobFinishedError",
    "JobRunningError",
    "LearningRateError",
    "IndivisibleBatchError",
    "InputError",
    "JaxPipeError",
    "JobExistsError",
    "JobFailed",
    "LaunchError",
    "LayersPatternError",
    "LithopsConfigError",
    "LithopsMemoryError",
    "LithopsStorageError",
    "LithopsWorkersError",
    "MissingMetricsError",
    "MemoryFloorError",
    "MissingTargetsError",
    "ModelConfigError",
    "ModelKindError",
    "NoCheckpointError",
    "NoIterationError",
    "NoLayersError",
    "NonFiniteLossError",
    "NotAnOptimizerError",
    "OptimizerStateError",
    "OptionRangeError",
    "PartialBundleError",
    "PlanFileError",
    "PlanMismatchError",
    "PlatformError",
    "ProfileError",
    "RngError",
    "StoreLocationError",
    "StructureError",
    "TiedParameterError",
    "TraceError",
    "UnknownJobError",
    "UnknownModelError",
    "UnknownOptimizerError",
    "UnknownPlatformError",
    "UnknownTaskError",
    "VersionMismatchError",
    "UnsupportedModelError",
    "VariablesError",
]


class JaxPipeError(Exception):
    """Base class of every error JaxPipe raises on purpose."""


class InputError(JaxPipeError, ValueError):
    """Base class of the errors for bad input, raised before any work starts."""


# -- the model, its variables and its batch ------------------------------------------------------


class TraceError(InputError):
    """The model cannot be traced the way JaxPipe needs.

    Fix: the message names the cause. The loss must depend on the model's parameters,
    `variables` must be the dict `model.init` returns (with a `params` collection), and the
    model must keep the same layers at every micro-batch size (no Python branch on the batch
    size).
    """


class NoLayersError(TraceError):
    """The traced loss has no equation under a submodule, so there is nothing to cut at.

    Fix: put each block of the network in a named submodule (linen: `self.block0 = Block()` in
    `setup`, or `Block(name="block0")` in a compact `__call__`; NNX: a child module attribute,
    or an `nnx.List` of blocks). If the blocks are there but deeper than JaxPipe looked, name
    them with `layers=` (a depth, or patterns such as `"decoder/block_*"`).
    """


class LayersPatternError(TraceError):
    """`layers=` names no cut units: a depth below 1, or a scope pattern that matches no scope.

    Fix: the message lists every scope of the model. Pass a depth (`layers=2`: the scopes two
    levels below the model) or patterns that match some of them, one path component per `/`
    (`layers="decoder/block_*"`, or a list such as `["decoder/embed", "decoder/block_*"]`).
    """


class ModelKindError(TraceError):
    """The model is neither a `flax.linen.Module` nor a `flax.nnx.Module`.

    Fix: pass the Flax module itself: a linen module with the variables `model.init` returned,
    or an NNX module with `variables=None` (it holds its own). A function, a `TrainState` or a
    bound module is not a model; an NNX model held in an `nnx.Optimizer` is `optimizer.model`.
    """


class VariablesError(InputError):
    """The variables passed do not match the ones the model was traced or exported with.

    Fix: pass variables of the same structure as those given to `jaxpipe.trace` (the paths
    missing and unexpected are in the message).
    """


class BatchError(InputError):
    """The batch cannot be used or divided as asked.

    Fix: pass `(inputs, targets)` whose leaves all share one leading batch size, and a number of
    micro-batches that divides it.
    """


class RngError(InputError):
    """PRNG keys the model needs (e.g. for dropout) were not passed.

    Fix: pass them by collection name, `rngs={"dropout": key}`.
    """


class StructureError(InputError):
    """A pytree does not have the structure it was flattened with.

    Fix: pass a tree of the same structure (same keys, same nesting) as the one JaxPipe saw.
    """


class ModelConfigError(InputError):
    """A zoo model's configuration is invalid (unknown field, or values that do not fit).

    Fix: the message names the field and the constraint; see `jaxpipe.models` for each model's
    fields.
    """


class UnknownModelError(InputError):
    """No zoo model has this name.

    Fix: choose one of `jaxpipe.models.names()`.
    """


class DatasetError(InputError):
    """The dataset cannot be made as asked.

    Fix: the message names the argument and its valid range.
    """


# -- cutting and the stage bundle ----------------------------------------------------------------


class CutError(InputError):
    """The cut points or modes do not describe a split of the model's layers into stages.

    Fix: pass sorted layer indices in `1 .. len(traced.layers) - 1` (where stages 1.. start), and
    modes `"stash"`, `"dots"` or `"recompute"`, one for all stages or one per stage.
    """


class BundleError(InputError):
    """The bytes are not a stage bundle this version of JaxPipe can read.

    Fix: make the bundle with `Staged.export()` of this JaxPipe version.
    """


class PartialBundleError(InputError):
    """A whole-model call was made on a bundle loaded with only some of its stages.

    Fix: load the bundle without `only=` to run every stage in one process.
    """


class ProfileError(InputError):
    """The profiling options are invalid.

    Fix: pass micro-batch sizes as positive integers.
    """


# -- a training job's options ------------------------------------------------------------------


class UnknownOptimizerError(InputError):
    """No optimizer has this name.

    Fix: choose one of the names the message lists.
    """


class OptimizerStateError(InputError):
    """A checkpoint's optimizer state does not fit the job's optimizer.

    Fix: resume the job with the optimizer it was started with.
    """


class UnsupportedModelError(InputError):
    """The zoo model exists, but `jaxpipe train` cannot run it: the runtime trains Flax linen
    models (their parameters checkpointed by path), not the NNX families.

    Fix: train a linen model of the zoo, or trace and split the NNX model with `jaxpipe.trace`
    in one process.
    """


class UnknownPlatformError(InputError):
    """No platform has this name.

    Fix: choose one of `planners.platforms.names()`, or pass a platform file.
    """


class PlatformError(InputError):
    """The platform cannot run this job as configured.

    Fix: the message says what the platform needs: `--platform local` or `aws-lambda` for
    training, and an `s3://` store for `aws-lambda` (its functions cannot see this machine's
    disk).
    """


class IterationsError(InputError):
    """`--iterations` (`iterations=`) is below 1 or not a whole number.

    Fix: pass the number of iterations to train, at least 1.
    """


class BatchSizeError(InputError):
    """`--batch` (`batch_size=`) is below 1 or not a whole number.

    Fix: pass a global batch of at least 1 example (a multiple of the plan's micro-batch size
    times its replicas).
    """


class CheckpointEveryError(InputError):
    """`--checkpoint-every` is below 1 or not a whole number.

    Fix: pass how many iterations lie between checkpoints, at least 1.
    """


class LearningRateError(InputError):
    """The learning rate of a named optimizer is not a finite number above 0 (NaN, inf, 0 or
    negative), so training could only diverge or stand still.

    Fix: pass `--lr` with a positive value such as 0.003.
    """


class OptionRangeError(InputError):
    """A numeric option (`--shard-size`, `--max-functions`, `--eval-every`, the wait timeout)
    is out of its range.

    Fix: the message names the option, its value and the range.
    """


class PlanFileError(InputError):
    """The `--plan` file is missing, is not JSON, or does not hold a plan.

    Fix: write the plan with `jaxpipe plan ... -o FILE` and pass that file.
    """


class StoreLocationError(InputError):
    """`--store` is neither a directory (or a path where one can be made) nor `s3://bucket`.

    Fix: pass a directory path that is not a file, or `s3://<bucket>`.
    """


class MemoryFloorError(InputError):
    """A stage's memory is below what a rank on the local platform needs to start (a JAX
    process needs about 350 MB of address space), so it would run with more than it is billed.

    Fix: give the stage at least the size the message names, or drop smaller sizes from the
    platform file.
    """


class JobFinishedError(InputError):
    """A resumed job has already run all its iterations; resuming it would do nothing (and must
    never overwrite its results).

    Fix: read its results (`results/summary.json`), or train it further with
    `--resume <job-id> --iterations N` for an N above the job's iterations.
    """


class JobRunningError(InputError):
    """Another driver holds this job (it is being started or run): one job id, one driver.

    Fix: wait for it to end, or stop it (SIGTERM to the pid the message names); a driver that
    was killed leaves a lease that is taken over once its heartbeat has been still for a
    minute. Or choose another `--job-id`.
    """


class JobExistsError(InputError):
    """A job with this id already exists in the store.

    Fix: resume it with `--resume <job-id>` (`jaxpipe.train(..., resume=...)`) or choose another
    job id.
    """


class PlanMismatchError(InputError):
    """The plan does not fit the model, the batch or the platform.

    Fix: every reason is listed; make the plan for this model (`jaxpipe plan`), or change the
    batch or memory sizes it names.
    """


class TiedParameterError(InputError):
    """A parameter is read by two stages (tied weights), which the distributed runtime cannot
    update consistently.

    Fix: cut elsewhere, so that every stage reading the parameter is one stage.
    """


class EventTooLargeError(InputError):
    """A rank's event is larger than the platform's asynchronous payload limit.

    Fix: the event should only point into the store; keep large values out of it.
    """


class UnknownTaskError(InputError):
    """A function was asked to run a task it does not know.

    Fix: send one of the tasks the message lists.
    """


class VersionMismatchError(InputError):
    """The job was built by a driver whose jax, jaxlib, flax or optax differ from the worker's.

    Fix: redeploy the worker image from the driver's environment (`jaxpipe deploy aws`; its tag
    names the versions), or train from an environment with the worker's versions.
    """


class FunctionsNotReadyError(InputError):
    """A memory size the job may use has no worker function, or its function is not ready.

    Fix: the message names each function and its state. Deploy the missing sizes
    (`jaxpipe deploy aws --memory ...`), wait for a function that is still updating, or plan
    only over the sizes that exist (a `--platform-file` with `memory_options_mb`).
    """


class ConcurrencyError(InputError):
    """The plan runs more functions at once than the account's unreserved concurrency allows.

    Fix: plan with fewer functions (`--max-functions`, at most the number the message names), or
    ask AWS for more concurrent executions (the message gives the Service Quotas command).
    """


# -- a job that started ---------------------------------------------------------------------------


class JobFailed(JaxPipeError, RuntimeError):
    """A job could not finish: ranks kept dying, or a rank stayed silent past the timeout.

    Fix: the message shows the failing rank's output. Its checkpoints stay in the store: after
    fixing the cause, resume with `jaxpipe train --resume <job-id>`.
    """


class NonFiniteLossError(JobFailed):
    """An iteration's loss was NaN or infinite: training diverged, and the job stopped at once
    (its attempt cancelled) rather than train on.

    Fix: lower the learning rate, or check the data for NaN or infinite values; resume from
    the last checkpoint (`--resume <job-id>`) once fixed, or start afresh.
    """


class DriverStopped(JobFailed):
    """The driver was stopped (SIGTERM, SIGINT or Ctrl-C): it cancelled the running attempt,
    stopped its ranks and left the job resumable.

    Fix: resume it with `jaxpipe train --resume <job-id>` when you are ready.
    """


class CorruptJobError(JaxPipeError, RuntimeError):
    """A stored object of a job (its `job.json`) does not parse: it was cut short (a full disk,
    a killed upload) or overwritten.

    Fix: the message names the store and the key. Restore the object if you have a copy;
    otherwise the job cannot be resumed: start a new one (its checkpoints can still be read
    with `jaxpipe.load_variables`).
    """


class CorruptBundleError(JaxPipeError, RuntimeError):
    """A job's stored `bundle.zip` (its stage programs) does not load in a rank: it was cut
    short (a killed upload, a full store) or overwritten.

    Fix: the message names the store, the key and its size. Re-run the job under a new
    `--job-id` with the same model and plan (its checkpoints stay readable with
    `jaxpipe.load_variables`).
    """


class BudgetExceeded(JobFailed):
    """The next iteration would take the job past `--max-cost`; it stopped at a checkpoint.

    Fix: resume the job (`jaxpipe train --resume <job-id>`) with a larger `--max-cost`, or plan
    a cheaper configuration.
    """


class LaunchError(JaxPipeError, RuntimeError):
    """The platform did not start a function, or a function it started reported an error.

    Fix: the message quotes the platform's answer (on AWS: check that `jaxpipe deploy aws` ran
    in this region and account).
    """


# -- `jaxpipe.fit` and `jaxpipe train` with the user's model, data and optimizer -----------------


class DataLengthError(InputError):
    """The leaves of the training (or evaluation) data disagree on the number of examples.

    Fix: give every array of `(inputs, targets)` the same leading example axis; the message
    lists each leaf's path and length.
    """


class MissingTargetsError(InputError):
    """The data has no targets: it is not a pair `(inputs, targets)`, or the targets hold no
    array, or a random-access source's items are not pairs.

    Fix: pass `data=(inputs, targets)`, or a source whose `source[i]` returns
    `(inputs_i, targets_i)`; for `--data FILE.npz` name the arrays with `--inputs/--targets`.
    """


class BatchTooLargeError(InputError):
    """The batch size is larger than the training set, so one iteration would repeat examples.

    Fix: pass a `batch_size` of at most the number of examples the message gives.
    """


class IndivisibleBatchError(InputError):
    """The batch size does not split as the plan needs: into micro-batches of the plan's size,
    and those evenly over every stage's replicas.

    Fix: choose a batch size that is a multiple of the micro-batch size times the replicas the
    message names, or make the plan for this batch size (`jaxpipe plan`).
    """


class NotAnOptimizerError(InputError):
    """The optimizer is neither an optimizer name nor an `optax.GradientTransformation`.

    Fix: pass an optax transformation (`optax.adamw(1e-3)`, an `optax.chain(...)`), a name
    (`"adam"`), or on the command line `--optimizer mypkg.opt:make` whose `make()` returns one.
    """


class ImportPathError(InputError):
    """An import path (`package.module:attribute`) does not resolve.

    Fix: the message names the module or attribute that failed; check its spelling and that
    the package imports from this directory (`python -c "import package.module"`).
    """


class MissingMetricsError(InputError):
    """Evaluation data was given without a `metrics_fn` to score it.

    Fix: pass `metrics_fn(outputs, targets) -> {name: value}` with `eval_data`, or drop
    `eval_data`.
    """


class DataFileError(InputError):
    """A `--data` file cannot be read as training data.

    Fix: pass an `.npz` file (`numpy.savez`) holding arrays `inputs` and `targets`, or name its
    arrays with `--inputs KEY --targets KEY`; the message lists the arrays the file holds.
    """


class NoCheckpointError(InputError):
    """The job has no complete checkpoint to read variables from (or to resume from).

    Fix: check the job id and the store (`--store`).
    """


class UnknownJobError(InputError):
    """`jaxpipe report` (or `load_variables`) names a job the store does not hold.

    Fix: check the id and `--store`; `jaxpipe jobs --store ...` lists the store's jobs.
    """


class NoIterationError(InputError):
    """`jaxpipe report --iteration N` asks for an iteration the ranks' timelines do not hold
    (each rank keeps the spans of its last whole iterations).

    Fix: choose one of the iterations the message lists, or leave `--iteration` out.
    """


class CouplingError(InputError):
    """The optimizer's update couples parameters that live on different stages in a way the
    stages cannot compute exactly apart.

    Couplings the runtime makes exact: none (element-wise optimizers, masks, schedules and
    step counts), and scalars that are sums of per-stage terms, such as global-norm clipping's
    sum of squares, which the stages exchange within the iteration. Anything else (a maximum
    over every leaf, a sum another sum's result feeds, a leaf updated from another stage's
    leaf) is refused; the message names the leaves affected and where the coupling was traced.

    Fix: make the transformation act leaf by leaf, or couple leaves only through sums of
    per-leaf scalars; or cut the model so the coupled parameters share a stage.
    """


class LithopsConfigError(InputError):
    """`--platform lithops` has no usable Lithops configuration: no `--lithops-config`, a file
    that is missing or not YAML, one Lithops' own loader refuses, a backend with no catalog
    (no `--platform-file`), or a standalone (VM) backend.

    Fix: pass `--lithops-config FILE` in Lithops' own format (`lithops.backend`,
    `lithops.storage` and their sections; `jaxpipe deploy lithops --backend B` prints one); for
    a backend other than aws_lambda, aliyun_fc and localhost add a full `--platform-file`.
    """


class LithopsMemoryError(InputError):
    """The plan asks for a memory size the Lithops backend cannot give a function.

    Fix: plan with the backend's memory options (`--platform-file` with `memory_options_mb`
    set to sizes the backend accepts); the message lists them.
    """


class LithopsStorageError(InputError):
    """The job's store cannot be reached by the Lithops backend's functions, or has no S3 API:
    JaxPipe's workers claim every invocation with a conditional write (`If-None-Match`), which
    is what makes a duplicate call run once.

    Fix: `--store s3://bucket` (with `--endpoint-url` for a non-AWS endpoint) of an
    S3-compatible store (S3, OSS, IBM COS, MinIO, Ceph, SeaweedFS), or a Lithops storage
    backend with an S3 API (aws_s3, aliyun_oss, ibm_cos, minio, ceph) and its `storage_bucket`.
    """


class LithopsWorkersError(InputError):
    """Lithops' localhost backend runs fewer calls at once (`localhost.worker_processes`) than
    the plan has functions; the ranks of a pipeline wait on each other, so all must run at once.

    Fix: set `worker_processes` in the config's `localhost` section to at least the plan's
    number of functions.
    """
