"""`jaxpipe train`: the command line's setup, options and report around `fit_setup`.

    --model NAME | mypkg.models:make    a zoo name, or a function returning a TrainingSetup
                                        (default: the default job, `first_job`, with its
                                        batch and iterations unless given)
    --data FILE.npz [--inputs K --targets K]   the training set on disk (default keys
                                        `inputs`, `targets`); replaces the setup's data
    --optimizer NAME | mypkg.opt:make   a name, or a function returning an optax transformation
    --save DIR                          the trained variables as an Orbax checkpoint

The rest of the flags are `TrainOptions` fields. The command prints the plan and where the job
lives before launch (`reporting.announce_job`) and where the results are at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
from typing import Any

import numpy as np
import optax

from jaxpipe import models
from jaxpipe.errors import DataFileError, ImportPathError
from jaxpipe.runtime import first_job
from jaxpipe.runtime.driver import RunConfig
from jaxpipe.runtime.fit import FitResult, check_optimizer, fit_setup
from jaxpipe.runtime.options import TrainOptions
from jaxpipe.runtime.report.command import report_text
from jaxpipe.runtime.reporting import where_text
from jaxpipe.runtime.training_setup import TrainingSetup
from jaxpipe.runtime.variables import save_variables
from jaxpipe.runtime.zoo import zoo_setup

__all__ = ["job_defaults", "load_npz", "resolve_import_path", "run_train", "setup_from_args"]


def resolve_import_path(path: str, what: str) -> Any:
    """The object at `package.module:attribute` (the attribute may be dotted).

    Raises:
      ImportPathError: no `:`, a module that does not import, or a missing attribute; the
        message names which.

    Example:
      >>> resolve_import_path("os.path:join", "a function").__name__
      'join'
    """
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ImportPathError(f"{what} {path!r} is not an import path module:attribute")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ImportPathError(f"{what} {path!r}: module {err.name!r} was not found") from err
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ImportPathError(f"{what} {path!r}: module {module_name!r} has no attribute "
                                  f"{attribute!r} ({part!r} is missing)")
        obj = getattr(obj, part)
    return obj


def load_npz(path: str, inputs: str = "inputs", targets: str = "targets",
             ) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) from an `.npz` file's arrays `inputs` and `targets` (or as named).

    Raises:
      DataFileError: the file does not open as `.npz`, or lacks an array named.
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataFileError(f"--data {path}: cannot read it as .npz ({err})") from err
    with archive:
        missing = [k for k in (inputs, targets) if k not in archive.files]
        if missing:
            raise DataFileError(f"--data {path} has no array {missing[0]!r}; it holds "
                                f"{sorted(archive.files)} (choose with --inputs/--targets)")
        return archive[inputs], archive[targets]


def setup_from_args(args: argparse.Namespace) -> TrainingSetup:
    """The setup `--model` names, with `--data` in place of its data if given."""
    if args.model in (*models.names(), *first_job.NAMES):
        setup = zoo_setup(args.model, {}, args.seed, args.batch)
    else:
        make = resolve_import_path(args.model, "--model")
        setup = make() if callable(make) else make
        if not isinstance(setup, TrainingSetup):
            raise ImportPathError(f"--model {args.model} must give a jaxpipe.TrainingSetup; "
                                  f"it gave {type(setup).__qualname__}")
        if setup.name is None:
            setup = dataclasses.replace(setup, name=args.model.rpartition(":")[2])
    if args.data:
        setup = dataclasses.replace(setup, data=load_npz(args.data, args.inputs, args.targets))
    return setup


def _optimizer(text: str) -> Any:
    if ":" not in text:
        return text
    make = resolve_import_path(text, "--optimizer")
    made = make() if callable(make) and not isinstance(make, optax.GradientTransformation) else make
    return check_optimizer(made)


def options_from_args(args: argparse.Namespace, setup: TrainingSetup) -> TrainOptions:
    fields = {f.name for f in dataclasses.fields(TrainOptions)}
    given = {k: v for k, v in vars(args).items() if k in fields and k != "run" and v is not None}
    given.update(model=setup.label, optimizer=_optimizer(args.optimizer),
                 shuffle=not args.no_shuffle)
    return TrainOptions(**given, run=RunConfig(
        invocation_seconds=args.invocation_seconds, link=not args.no_link,
        max_cost=args.max_cost, keep_checkpoints=args.keep_checkpoints))


def job_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """`args` with the batch, learning rate and iterations not given filled in: the default
    job's (`first_job.BATCH`, `LEARNING_RATE`, `ITERATIONS`) for its model, else
    `TrainOptions`' (the iterations: or a resumed job's own)."""
    default_job = args.model == first_job.MODEL
    d = TrainOptions()
    batch, lr = args.batch, args.learning_rate
    if batch is None:
        batch = first_job.BATCH if default_job else d.batch
    if lr is None:
        lr = first_job.LEARNING_RATE if default_job else d.learning_rate
    iterations = args.iterations
    if iterations is None and default_job and not args.resume:
        iterations = first_job.ITERATIONS
    return argparse.Namespace(**{**vars(args), "batch": batch, "learning_rate": lr,
                                 "iterations": iterations})


def run_train(args: argparse.Namespace) -> FitResult:
    """Runs `jaxpipe train` for parsed `args`; prints the report and returns the result."""
    args = job_defaults(args)
    setup = setup_from_args(args)
    options = options_from_args(args, setup)
    result = fit_setup(setup, options, resume=args.resume,
                       extend_to=args.iterations if args.resume else None)
    summary = result.summary
    losses = result.losses
    print(f"job {result.job_id}: {len(losses)} iterations, loss {losses[0]:.4f} -> "
          f"{losses[-1]:.4f}")
    rows = [("seconds / iteration", "measured_seconds_per_iteration",
             "predicted_seconds_per_iteration", "simulated_seconds_per_iteration"),
            ("dollars / iteration", "measured_dollars_per_iteration",
             "predicted_dollars_per_iteration", None),
            ("  with start-up", "measured_run_dollars_per_iteration", None, None)]
    print(f"{'':22s}{'measured':>12s}{'cost model':>12s}{'simulator':>12s}")
    for label, *names in rows:
        cells = [getattr(summary, n) if n else None for n in names]
        print(f"{label:22s}" + "".join(f"{c:12.4g}" if c is not None else f"{'-':>12s}"
                                        for c in cells))
    if not summary.has_predictions:
        print("(no predictions: a resumed job has no planning problem)")
    for name, value in result.metrics.items():
        print(f"eval {name}: {value:.4g}")
    saved = save_variables(result.variables, args.save) if args.save else None
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary.to_dict(), f, indent=1)
        print(f"wrote {args.out}")
    print(where_text(result.store, result.where, saved))
    print(report_text(result.store, result.job_id))
    return result
