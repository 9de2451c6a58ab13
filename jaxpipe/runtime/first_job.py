"""A job meant to show what pipelining is for, and the planner's comparison every planned job
prints.

`jaxpipe train --model resnet18-digits --platform local-small` (not yet the default job: see
"Why a pipeline" for the intent and the README for what the planner chose on this machine):

    model     `resnet18-digits`: the zoo's ResNet-18 (basic blocks 2-2-2-2) at width 32 for
              16x16 RGB images and 10 classes, 2.8 M parameters, three quarters of them in its
              last two blocks
    data      scikit-learn's 8x8 digits, upsampled to 16x16 RGB (`models.digit_images`),
              shipped with scikit-learn; test accuracy on the held-out fifth
    platform  `local-small`: functions of 1-3 GB with half a CPU each and 10 MB/s to storage
    batch     32 for `ITERATIONS` iterations, Adam

Why a pipeline (the intent): the early convolutions do most of the compute on few weights,
the last blocks hold most of the weights and do little compute. One function alone computes
everything on half a CPU; data parallelism would send all 11 MB of gradients through a
10 MB/s link every iteration; a plan that replicates the compute-heavy, weight-light front
(a small all-reduce) and gives the weight-heavy back stages one function each (no all-reduce)
avoids both.
Whether it pays is the planner's call on the measured profile: with XLA's default
optimisation the early convolutions at 16x16 are cheap, and on a loaded 2-core machine the
planner has chosen one function. `comparison` prints the planner's own numbers for the
alternatives, after the plan table of every planned job (`reporting.plan_text`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jaxpipe import models
from jaxpipe.models.data import digit_images
from jaxpipe.runtime.training_setup import TrainingSetup
from planners import Plan, Problem
from planners import plan as make_plan

__all__ = ["BATCH", "ITERATIONS", "MODEL", "NAMES", "PLATFORM", "comparison", "setup"]

MODEL = "resnet18-digits"
"""The job's model (a zoo setup: `jaxpipe.runtime.zoo.zoo_setup` knows it)."""
PLATFORM = "local-small"
BATCH = 32
ITERATIONS = 60
BASE = "resnet18"
CONFIG: dict[str, Any] = {"width": 32, "image_size": 16, "num_classes": 10}
NAMES = (MODEL,)
"""Zoo setups beyond `models.names()`: a zoo model at a config, with its real data."""


def setup(name: str, overrides: dict[str, Any], seed: int) -> TrainingSetup:
    """The setup of `MODEL`: ResNet-18 at `CONFIG` (with `overrides`) on the digit images,
    scored by test accuracy with the model in evaluation mode (BatchNorm's running stats)."""
    from jaxpipe.runtime.zoo import accuracy, linen_module

    assert name in NAMES, name
    config = {**CONFIG, **overrides}
    spec = models.get(BASE, **config)
    module = linen_module(spec)
    variables = spec.init(jax.random.PRNGKey(seed))
    assert isinstance(variables, dict), "a linen model's init returns its variables"
    x, y, x_test, y_test = digit_images(int(config["image_size"]))
    return TrainingSetup(module, spec.loss_fn, (x, y), variables, eval_data=(x_test, y_test),
                         metrics_fn=accuracy, eval_model=dataclasses.replace(module, train=False),
                         name=name)


def comparison(problem: Problem, chosen: Plan) -> str:
    """The planner's own comparison, in lines: the chosen plan against the best plan on one
    function and the best plan without pipelining (one stage, replicated), each as predicted
    seconds and dollars per iteration; a plan that does not exist is said so."""
    cur = problem.platform.currency
    rows: list[tuple[str, Plan | str]] = [
        ("this plan", chosen),
        ("one function alone", _best(dataclasses.replace(problem, max_functions=1), "miqp")),
        ("data parallel (1 stage)", _best(problem, "data-parallel"))]
    out = []
    for label, p in rows:
        if isinstance(p, str):
            out.append(f"  {label:26s} {p}")
            continue
        out.append(f"  {label:26s} {p.iteration_seconds:8.3f} s  {p.iteration_dollars:.6f} {cur}"
                   f"  per iteration  ({len(p.stages)} stages, {p.num_functions} functions, "
                   f"{'/'.join(str(s.memory_mb) for s in p.stages)} MB)")
    return "\n".join(out)


def _best(problem: Problem, method: str) -> Plan | str:
    try:
        return make_plan(problem, method)
    except Exception as err:  # any planner refusal is the row's answer
        return f"no plan ({type(err).__name__}: {str(err).splitlines()[0][:60]})"
