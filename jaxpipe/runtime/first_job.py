"""The default job (`jaxpipe train --platform local` without flags), which the planner
pipelines because it pays, and the planner's comparison every planned job prints.

    model     `digits-cnn` (`jaxpipe.models.digits_cnn`): four 3x3 convolutions with 64 channels
              at 32x32 and 16x16 pixels, two Dense layers of 8.4 M weights each and a linear
              classifier, 17 M parameters, 99 % of them in the Dense layers
    data      scikit-learn's 8x8 digits, upsampled to 32x32 RGB (`models.digit_images`),
              shipped with scikit-learn; test accuracy on the held-out fifth
    platform  `local`: functions of 0.5-4 GB with one core each and 70 MB/s to storage
    batch     `BATCH` for `ITERATIONS` iterations, Adam at `LEARNING_RATE`
    profile   `PROFILE`, measured once by `jaxpipe.profile` in a process pinned to one core
              with XLA on one thread, as a local function runs (reference_cpus 1.0); the
              planner plans from it, so the plan does not depend on how loaded the machine is
              (`--live-profile` measures this machine instead, `shipped_profile`)

Why a pipeline: the convolutions do most of the compute on 450 kB of weights, the Dense layers
hold 67 MB and take a time per micro-batch that hardly depends on its size. One function
computes everything in turn; data parallelism would all-reduce 67 MB of gradients every
iteration; the planner's plan replicates the convolutions (an all-reduce of 450 kB) and gives
each Dense layer a function of its own (no all-reduce), so the three overlap over the
micro-batches. `comparison` prints the planner's own numbers for the alternatives after the
plan table of every planned job (`reporting.plan_text`).

`resnet18-digits` (ResNet-18 at width 32 on the digits as 16x16 images) is a second zoo setup:
the planner puts it on one function (its convolutions at 16x16 are too cheap to pay for a
pipeline's transfers).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax

from jaxpipe import models
from jaxpipe.models import digits_cnn
from jaxpipe.models.data import digit_images
from jaxpipe.runtime.training_setup import TrainingSetup
from planners import Plan, Problem
from planners import plan as make_plan

__all__ = ["BATCH", "ITERATIONS", "LEARNING_RATE", "MODEL", "NAMES", "PLATFORM", "PROFILE",
           "comparison", "setup", "shipped_profile"]

MODEL = "digits-cnn"
"""The default job's model (a zoo setup: `jaxpipe.runtime.zoo.zoo_setup` knows it)."""
PLATFORM = "local"
BATCH = 64
"""The default job's global batch: four micro-batches of 16 in its plan."""
ITERATIONS = 40
LEARNING_RATE = 3e-4
"""Adam's step for the default job (the CLI's 3e-3 makes its 67 MB of Dense weights diverge)."""
PROFILE = Path(__file__).parent / "profiles" / f"{MODEL}.json"
"""The default model's shipped profile (micro-batch sizes 1-16, one core)."""
RESNET = "resnet18-digits"
BASE = "resnet18"
CONFIG: dict[str, Any] = {"width": 32, "image_size": 16, "num_classes": 10}
NAMES = (MODEL, RESNET)
"""Zoo setups beyond `models.names()`: a model at a config, with its real data."""


def shipped_profile(name: str, overrides: dict[str, Any], sizes: tuple[int, ...],
                    ) -> Path | None:
    """The shipped profile of `name` at these micro-batch sizes, or None: only the default
    model at its default config has one, and only for sizes it was measured at."""
    if name != MODEL or overrides or not PROFILE.exists():
        return None
    import json

    measured = json.loads(PROFILE.read_text())["meta"]["micro_batch_sizes"]
    return PROFILE if set(sizes) <= set(measured) else None


def setup(name: str, overrides: dict[str, Any], seed: int) -> TrainingSetup:
    """The setup of `MODEL` (the DigitsCNN on the digits at 32x32) or of `RESNET` (ResNet-18
    at `CONFIG` on the digits at 16x16, with the model in evaluation mode for its test score:
    BatchNorm's running stats), each with `overrides` and scored by test accuracy."""
    from jaxpipe.runtime.zoo import accuracy, linen_module

    assert name in NAMES, name
    if name == MODEL:
        cnn = digits_cnn.DigitsCNNConfig(**overrides)
        spec = digits_cnn.make_spec(name, cnn)
        module = linen_module(spec)
        x, y, x_test, y_test = digit_images(cnn.image_size)
        return TrainingSetup(module, spec.loss_fn, (x, y), spec.init(jax.random.PRNGKey(seed)),
                             eval_data=(x_test, y_test), metrics_fn=accuracy, name=name)
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
