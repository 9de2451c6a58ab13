"""The `jaxpipe` command: train, plan, profile, calibrate, deploy, demo, report, jobs, gc."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jaxpipe.models._spec import ModelSpec
    from jaxpipe.staging.batch import Batch
    from jaxpipe.staging.tracing import Traced

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `jaxpipe` console script.

    A project error (bad input, a failed job, a store error) prints as one message and exits
    non-zero (`jaxpipe.error_report`); `--debug`, anywhere on the line, adds its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = argparse.ArgumentParser(prog="jaxpipe", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train", help="train a zoo model, or your own (--model mypkg.models:make), on "
        "emulated or real serverless functions (every flag optional)")
    _add_train_arguments(train)
    train.set_defaults(run=_train)

    demo = commands.add_parser(
        "demo", help="trace, split and check a zoo model against the unsplit model")
    demo.add_argument("--model", default="mlp", help="zoo model name (default: mlp)")
    demo.add_argument("--stages", type=int, default=3, help="number of stages (default: 3)")
    demo.add_argument("--batch", type=int, default=16, help="batch size (default: 16)")
    demo.add_argument("--micro-batches", type=int, default=4, help="M (default: 4)")
    demo.set_defaults(run=_demo)

    prof = commands.add_parser("profile", help="profile every layer of a zoo model")
    prof.add_argument("--model", required=True, help="zoo model name, e.g. resnet101")
    prof.add_argument("--micro-batches", default="1,2,4,8",
                      help="micro-batch sizes to time, comma-separated (default: 1,2,4,8)")
    prof.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    prof.add_argument("--no-scaling", dest="scaling", action="store_false",
                      help="skip the one-core vs all-cores runs that measure each layer's "
                      "parallel fraction (default: measure them, about 2 x repeats more runs)")
    prof.add_argument("--realtime", action="store_true",
                      help="time those runs under SCHED_FIFO priority 1, for a busy machine "
                      "(root or CAP_SYS_NICE; only the timed runs)")
    prof.add_argument("-o", "--output", default="profile.json", help="where to write the JSON")
    _add_cloud_arguments(prof, "profile inside functions of each memory size")
    prof.set_defaults(run=_profile)

    cal = commands.add_parser(
        "calibrate", help="measure storage latency and bandwidth (inside functions on aws-lambda)")
    cal.add_argument("--size-mb", type=float, default=16.0,
                     help="object size of the bandwidth test, MB (default: 16)")
    cal.add_argument("--repeats", type=int, default=5, help="transfers per measurement")
    _add_cloud_arguments(cal, "measure inside functions of each memory size")
    cal.add_argument("--store", help="local platform: a directory or s3://bucket to measure")
    cal.set_defaults(run=_calibrate)

    deploy = commands.add_parser("deploy",
                                 help="set up a cloud platform (image, functions, bucket)")
    clouds = deploy.add_subparsers(dest="cloud", required=True)
    aws = clouds.add_parser("aws", help="AWS Lambda + S3 (see docs/aws.md)")
    from jaxpipe.deploy.cli import add_aws_arguments, run_aws

    add_aws_arguments(aws)
    aws.set_defaults(run=run_aws)
    lithops = clouds.add_parser("lithops", help="any cloud through Lithops: its config, and a "
                                "runtime with JaxPipe in it (docs/alibaba.md)")
    from jaxpipe.deploy.lithops import add_lithops_arguments, run_lithops

    add_lithops_arguments(lithops)
    lithops.set_defaults(run=run_lithops)

    from planners.cli import add_plan_arguments, run_plan

    plan = commands.add_parser("plan", help="plan stages, memory and replicas from a profile")
    add_plan_arguments(plan)
    plan.set_defaults(run=run_plan)

    from jaxpipe.runtime.report import command as report_command

    for name, help_text in (("report", "one job's page: plan, loss, timeline, measured against "
                             "predicted, requests, restarts (HTML, PNGs, Chrome trace)"),
                            ("jobs", "list the jobs of a store: state, iterations, dollars, age"),
                            ("gc", "remove finished jobs' messages and all but their latest "
                             "checkpoint")):
        sub = commands.add_parser(name, help=help_text)
        getattr(report_command, f"add_{name}_arguments")(sub)
        sub.set_defaults(run=getattr(report_command, f"run_{name}"))

    args = parser.parse_args(argv)
    from jaxpipe.error_report import report_errors

    return report_errors(lambda: int(args.run(args) or 0), debug)


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from jaxpipe.runtime import first_job
    from jaxpipe.runtime.train import TrainOptions

    d = TrainOptions()
    parser.add_argument("--model", default=first_job.MODEL,
                        help=f"zoo model, or module:function returning a jaxpipe.TrainingSetup "
                        f"(default: {first_job.MODEL}, the default job: jaxpipe/runtime/"
                        "first_job.py)")
    parser.add_argument("--data", help="training set: an .npz with arrays inputs and targets")
    parser.add_argument("--inputs", default="inputs", help="--data's inputs array (inputs)")
    parser.add_argument("--targets", default="targets", help="--data's targets array (targets)")
    parser.add_argument("--save", metavar="DIR",
                        help="write the trained variables here as an Orbax checkpoint")
    parser.add_argument("--no-shuffle", action="store_true",
                        help="iteration t uses examples [t*B, (t+1)*B) modulo N, in order")
    parser.add_argument("--shard-size", type=int, default=d.shard_size,
                        help=f"examples per data shard ({d.shard_size})")
    parser.add_argument("--data-cache-mb", type=float,
                        help="training data stage 0 keeps in memory, MB (default: a quarter of "
                        "the smallest function); more streams")
    parser.add_argument("--eval-every", type=int, help="also evaluate every this many iterations")
    parser.add_argument("--profile-cache", default=d.profile_cache,
                        help=f"where model profiles are cached ({d.profile_cache})")
    parser.add_argument("--platform", default=d.platform,
                        help="local, aws-lambda, or lithops (any Lithops backend, with "
                        "--lithops-config; default: local)")
    parser.add_argument("--platform-file", help="TOML/JSON overrides of the platform catalog")
    parser.add_argument("--plan", dest="plan_file", help="a plan JSON (from `jaxpipe plan -o`)")
    parser.add_argument("--method", default=d.method,
                        help=f"planner when no --plan is given (default: {d.method})")
    parser.add_argument("--batch", type=int,  # None: the default job's, else TrainOptions'
                        help=f"global batch ({first_job.BATCH} for {first_job.MODEL}, else "
                        f"{d.batch})")
    parser.add_argument("--iterations", type=int,  # None: the default, or the resumed job's
                        help=f"iterations ({first_job.ITERATIONS} for {first_job.MODEL}, else "
                        f"{d.iterations}); with --resume, train the job on to this many")
    parser.add_argument("--live-profile", action="store_true",
                        help=f"profile the model on this machine even where a profile ships "
                        f"({first_job.MODEL}'s: first_job.PROFILE)")
    parser.add_argument("--optimizer", default=d.optimizer,
                        help=f"optimizer name, or module:function returning an optax "
                        f"transformation ({d.optimizer})")
    parser.add_argument("--lr", dest="learning_rate", type=float,  # None: as --batch
                        help=f"learning rate ({first_job.LEARNING_RATE} for {first_job.MODEL}, "
                        f"else {d.learning_rate})")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--store", default=d.store,
                        help=f"a directory, or s3://bucket (default: {d.store})")
    parser.add_argument("--endpoint-url", help="S3 API endpoint for an s3:// store")
    parser.add_argument("--job-id", help="name the job (default: model, time, random suffix)")
    parser.add_argument("--resume", metavar="JOB", help="continue a job from its last checkpoint")
    parser.add_argument("--max-functions", type=int, default=d.max_functions,
                        help=f"most functions the planner may use ({d.max_functions})")
    parser.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    parser.add_argument("--keep-checkpoints", type=int, default=d.run.keep_checkpoints,
                        help="checkpoints a finished job keeps, the final one included "
                        f"(default {d.run.keep_checkpoints}; 0: all)")
    parser.add_argument("--allreduce", default=d.allreduce, choices=("pipelined", "lambdaml"))
    parser.add_argument("--no-link", action="store_true",
                        help="do not emulate the storage bandwidth and latency")
    parser.add_argument("--invocation-seconds", type=float,
                        help="time limit of one invocation (default: the platform's)")
    parser.add_argument("--out", help="write the summary JSON here")
    parser.add_argument("--max-cost", type=float,
                        help="stop before the run would spend more than this many dollars")
    parser.add_argument("--function-prefix", default=d.function_prefix,
                        help="aws-lambda: ranks run on <prefix>-<memory MB>")
    parser.add_argument("--region", help="aws-lambda: the functions' and the bucket's region "
                        "(default: AWS_REGION or AWS_DEFAULT_REGION, else the AWS profile's; "
                        "never a silent default)")
    parser.add_argument("--wait-timeout", dest="wait_timeout_s", type=float,
                        default=d.wait_timeout_s,
                        help="seconds a rank waits for any one message of a steady iteration "
                        f"({d.wait_timeout_s:g}); in a window's first iteration the wait also "
                        "covers the other stages' start-up (cold start + compile: the "
                        "platform's cold_start_s, then as the previous window measured), so "
                        "this needs to cover only a peer's slowest steady step")
    parser.add_argument("--no-compile-cache", dest="compile_cache", action="store_false",
                        help="compile every stage in every fresh function (default: share the "
                        "compiled programs through the store)")
    parser.add_argument("--lithops-config", metavar="FILE",
                        help="lithops: the Lithops config (backend, storage, runtime) that "
                        "--platform lithops runs ranks with")


def _train(args: argparse.Namespace) -> int:
    from jaxpipe.runtime.train_command import run_train

    run_train(args)
    return 0


def _demo(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    import jaxpipe
    from jaxpipe import models
    from jaxpipe.staging.stage import MODES

    spec = models.get(args.model)
    batch = spec.make_batch(jax.random.PRNGKey(1), args.batch)
    traced, user, (ref_loss, ref_grads), bundle_variables, rngs = _demo_case(spec, batch)
    n = len(traced.layers)
    stages = max(1, min(args.stages, n))
    cuts = sorted({round(n * k / stages) for k in range(1, stages)} - {0, n})
    print(f"{spec.name}: {n} layers, cut at {cuts} into {len(cuts) + 1} stages")
    for layer in traced.layers:
        note = f"  ({layer.note})" if layer.note else ""  # e.g. why a scan stayed one unit
        print(f"  {layer.index:3d} {layer.name:24s} {layer.param_bytes / 1e6:9.3f} MB params "
              f"{layer.boundary_bytes_per_sample / 1e3:9.2f} kB/sample across a cut after it"
              f"{note}")
    scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(ref_grads))
    worst = 0.0
    for mode in MODES:
        staged = traced.split(cuts, mode)
        loss, grads, _ = staged.value_and_grad(user, batch, micro_batches=1)
        err = max(float(np.max(np.abs(a - b))) for a, b in
                  zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads))) / scale
        worst = max(worst, err)
        print(f"{mode:9s}: loss {float(loss):.6f} (unsplit {float(ref_loss):.6f}), "
              f"max relative gradient error {err:.2e}")
    staged = traced.split(cuts)
    blob = staged.export(args.batch // args.micro_batches)
    runner = jaxpipe.load_stages(blob)
    loss, _, _ = runner.value_and_grad(bundle_variables, batch, rngs=rngs)
    print(f"bundle: {len(blob) / 1e6:.2f} MB, {args.micro_batches} micro-batches through the "
          f"loaded programs: loss {float(loss):.6f}")
    ok = worst <= 1e-5
    print("OK: stage gradients equal the unsplit model's" if ok else "MISMATCH")
    return 0 if ok else 1


def _demo_case(spec: ModelSpec, batch: Batch) -> tuple[Traced, Any, tuple[Any, Any], Any, Any]:
    """A zoo model traced for the demo: (traced, what its split's value_and_grad takes, the
    unsplit model's (loss, grads) on `batch`, the variables a loaded bundle takes, rngs)."""
    import jax

    import jaxpipe

    if spec.kind == "nnx":  # the module holds its variables and its dropout streams
        from flax import nnx

        from jaxpipe.tree import nest

        model = spec.build(jax.random.PRNGKey(0))
        traced = jaxpipe.trace(model, None, batch, spec.loss_fn)
        x, y = batch
        reference = nnx.value_and_grad(lambda m: spec.loss_fn(m(x), y))(nnx.clone(model))
        flat = {**dict(zip(traced.params.paths, traced.params.leaves)),
                **dict(zip(traced.state.paths, traced.state.leaves))}
        return traced, model, reference, nest(flat), None
    from jaxpipe.runtime.zoo import linen_module

    module = linen_module(spec)
    variables = spec.init(jax.random.PRNGKey(0))
    assert isinstance(variables, dict), "a linen model's init returns its variables"
    rngs = {"dropout": jax.random.PRNGKey(2)} if spec.uses_dropout else None
    traced = jaxpipe.trace(module, variables, batch, spec.loss_fn, rngs=rngs)
    state = {k: v for k, v in variables.items() if k != "params"}

    def unsplit(params: Any) -> Any:
        out: Any
        if state:
            out, _ = module.apply({"params": params, **state}, batch[0], rngs=rngs,
                                  mutable=list(state))
        else:
            out = module.apply({"params": params}, batch[0], rngs=rngs)
        return spec.loss_fn(out, batch[1])

    return traced, variables, jax.value_and_grad(unsplit)(variables["params"]), variables, rngs


def _add_cloud_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    from jaxpipe.deploy.cli import add_region_argument
    from jaxpipe.runtime.platforms.aws import FUNCTION_PREFIX

    parser.add_argument("--platform", default="local",
                        help=f"local (this machine), aws-lambda or lithops ({what})")
    parser.add_argument("--lithops-config", metavar="FILE",
                        help="lithops: the Lithops config whose backend runs the calls")
    parser.add_argument("--memory", help="aws-lambda: memory sizes in MB, comma-separated "
                        "(default: the platform's grid)")
    parser.add_argument("--bucket", help="aws-lambda: the bucket `jaxpipe deploy aws` set up")
    parser.add_argument("--endpoint-url", help="S3 API endpoint (default: AWS)")
    add_region_argument(parser)
    parser.add_argument("--function-prefix", default=FUNCTION_PREFIX,
                        help="aws-lambda: functions are <prefix>-<memory MB>")
    parser.add_argument("--platform-file", default=None,
                        help="platform JSON to write or update (default: platform-<name>.json)")


def _profile(args: argparse.Namespace) -> int:
    if args.platform != "local":
        from jaxpipe.deploy.cli import profile_on_platform

        return profile_on_platform(args)
    import jax
    from tqdm import tqdm

    import jaxpipe
    from jaxpipe import models
    from jaxpipe.staging.profiling import profile

    sizes = [int(s) for s in str(args.micro_batches).split(",") if s]
    spec = models.get(args.model)
    batch = spec.make_batch(jax.random.PRNGKey(1), max(sizes))
    if spec.kind == "nnx":  # the module holds its variables and rngs
        traced = jaxpipe.trace(spec.build(jax.random.PRNGKey(0)), None, batch, spec.loss_fn)
    else:
        variables = spec.init(jax.random.PRNGKey(0))
        rngs = {"dropout": jax.random.PRNGKey(2)} if spec.uses_dropout else None
        from jaxpipe.runtime.zoo import linen_module

        traced = jaxpipe.trace(linen_module(spec), variables, batch, spec.loss_fn, rngs=rngs)
    with tqdm(total=len(traced.layers), desc=f"profiling {spec.name}", unit="layer",
              file=sys.stderr) as bar:

        def progress(msg: str) -> None:
            bar.set_postfix_str(msg)
            bar.update()

        result = profile(traced, sizes, repeats=args.repeats, name=spec.name, progress=progress,
                         scaling=args.scaling, realtime=args.realtime)
    with open(args.output, "w") as f:
        json.dump(result.to_dict(), f, indent=1)
    print(f"wrote {args.output}: {len(result.layers)} layers of {spec.name}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from jaxpipe.deploy.cli import calibrate_platform

    return calibrate_platform(args)


if __name__ == "__main__":
    sys.exit(main())
