"""Scoring trained variables on held-out data: `metrics_fn(outputs, targets)` of the unsplit
model, run in this process on the variables reassembled from the stage checkpoints.

The whole evaluation set goes through `eval_model.apply` at once (default the training model;
its state collections are passed as mutable and their updates dropped, so a BatchNorm in
training mode runs), and `metrics_fn` sees every output and target together, so any metric,
not only means, comes out right. An NNX model is evaluated on a clone (`nnx.clone` of
`eval_model` or `model`) updated with the trained state, so the user's module stays as it was.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flax import nnx

from jaxpipe.runtime import sources
from jaxpipe.runtime.job import JobSpec
from jaxpipe.runtime.training_setup import TrainingSetup
from jaxpipe.runtime.variables import read_variables
from transports import ObjectStore

__all__ = ["evaluate", "evaluate_job", "evaluation_points"]


def evaluate(setup: TrainingSetup, variables: dict[str, Any] | nnx.State) -> dict[str, float]:
    """`setup.metrics_fn` of `setup.eval_data` under `variables`, as floats."""
    assert setup.metrics_fn is not None and setup.eval_data is not None
    data = sources.examples(setup.eval_data, "eval_data")
    inputs, targets = data.rows(0, data.count)
    model = setup.eval_model if setup.eval_model is not None else setup.model
    state = [k for k in variables if k != "params"]
    if isinstance(model, nnx.Module):
        model = nnx.clone(model)
        nnx.update(model, variables)
        outputs = model(inputs)
    elif state:
        outputs, _ = model.apply(variables, inputs, rngs=setup.rngs, mutable=state)
    else:
        outputs = model.apply(variables, inputs, rngs=setup.rngs)
    metrics = setup.metrics_fn(outputs, targets)
    return {str(k): float(np.asarray(v)) for k, v in dict(metrics).items()}


def evaluation_points(iterations: int, every: int | None) -> list[int]:
    """The checkpoints scored: every `every` iterations (if asked) and the last one.

    Example:
      >>> evaluation_points(10, 4), evaluation_points(10, None)
      ([4, 8, 10], [10])
    """
    points = list(range(every, iterations, every)) if every else []
    return [*points, iterations]


def evaluate_job(store: ObjectStore, spec: JobSpec, setup: TrainingSetup,
                 every: int | None) -> dict[int, dict[str, float]]:
    """{t: metrics} of the checkpoints before iteration t at `evaluation_points`."""
    return {t: evaluate(setup, read_variables(store, spec, t))
            for t in evaluation_points(spec.iterations, every)}
