"""The zoo as one source of training setups: a model name becomes a `TrainingSetup`.

The MLP family trains on scikit-learn's digits and is scored on their held-out part
(`accuracy`); `digits-cnn`, the default job's model, and `resnet18-digits` (`first_job`), on
the same digits as images; every other model trains on two global batches of its own synthetic
data.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from numpy.typing import NDArray

from jaxpipe import models
from jaxpipe.errors import UnknownModelError, UnsupportedModelError
from jaxpipe.runtime import first_job
from jaxpipe.runtime.training_setup import TrainingSetup

__all__ = ["accuracy", "linen_module", "trains_on_digits", "training_data", "zoo_setup"]

HeldOut = tuple[NDArray[Any], NDArray[Any]]  # (inputs, labels) of the test set


def zoo_setup(name: str, overrides: dict[str, Any], seed: int, batch: int) -> TrainingSetup:
    """The zoo model `name` (with config `overrides`) as a setup: variables from `seed`, its
    training data, and for the digits models the test set scored by `accuracy`.

    Raises:
      UnknownModelError: no zoo model is called `name`.

    An NNX family's module is built from `seed` (`ModelSpec.build`) and holds its variables.
    """
    if name in first_job.NAMES:  # the default job's model: a zoo config with its real data
        return first_job.setup(name, overrides, seed)
    if name not in models.names():
        raise UnknownModelError(f"unknown model {name!r}; choose one of "
                                f"{models.names() + first_job.NAMES} or pass an import path, "
                                "mypkg.models:make")
    spec = models.get(name, **overrides)
    if spec.kind == "nnx":
        data, _ = training_data(spec, seed, batch)
        return TrainingSetup(spec.build(jax.random.PRNGKey(seed)), spec.loss_fn, data,
                             name=name)
    module = linen_module(spec)
    variables = spec.init(jax.random.PRNGKey(seed))
    assert isinstance(variables, dict), "a linen model's init returns its variables"
    data, test_set = training_data(spec, seed, batch)
    evaluated: dict[str, Any] = {}
    if test_set is not None:
        evaluated = dict(eval_data=test_set, metrics_fn=accuracy,
                         eval_model=dataclasses.replace(module, train=False))
    return TrainingSetup(module, spec.loss_fn, data, variables,
                         rngs=spec.rngs(jax.random.PRNGKey(seed)), name=name, **evaluated)


def accuracy(logits: Any, labels: Any) -> dict[str, float]:
    """`{"accuracy": share of argmax(logits) == labels}`, the zoo's metric."""
    return {"accuracy": float(np.mean(np.argmax(np.asarray(logits), -1) == np.asarray(labels)))}


def linen_module(model: models.ModelSpec) -> nn.Module:
    """The zoo model's Flax linen module (for the commands that run linen models only).

    Raises:
      UnsupportedModelError: the model is of an NNX family.
    """
    if not isinstance(model.module, nn.Module):
        raise UnsupportedModelError(
            f"model {model.name!r} is an NNX model; `jaxpipe train` runs the linen models of "
            "the zoo (trace and split NNX models in one process with `jaxpipe.trace`)")
    return model.module


def trains_on_digits(model: models.ModelSpec) -> bool:
    """Whether a zoo model trains on scikit-learn's digits (the MLP family: 64 features, 10
    classes) rather than on its own synthetic data."""
    return isinstance(model.config, models.MLPConfig)


def training_data(model: models.ModelSpec, seed: int, batch: int,
                  ) -> tuple[tuple[Any, Any], HeldOut | None]:
    """A zoo model's training set (inputs, targets) and its test set, or None: scikit-learn's
    digits for the models that train on them (`trains_on_digits`), two global batches of the
    model's synthetic data (drawn from `seed + 1`) otherwise."""
    if trains_on_digits(model):
        x, y, x_test, y_test = models.digits()
        return (x, y), (x_test, y_test)
    inputs, targets = model.make_batch(jax.random.PRNGKey(seed + 1), 2 * batch)
    return (inputs, targets), None
