"""`TrainingSetup`: what a user trains, as one value: the model, its loss, its data.

`jaxpipe.fit` takes these as arguments; `jaxpipe train --model mypkg.models:make` takes a
function returning one; the zoo makes one per model (`jaxpipe.runtime.zoo.zoo_setup`). All three
then go through the same `train.prepare`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jaxpipe.staging.batch import Rngs
from jaxpipe.staging.tracing import LossFn
from jaxpipe.tree import PyTree, Variables

__all__ = ["MetricsFn", "TrainingSetup"]

MetricsFn = Callable[[PyTree, PyTree], Mapping[str, Any]]
"""`metrics_fn(outputs, targets) -> {name: scalar}` over the whole evaluation set."""


@dataclass(frozen=True, eq=False)
class TrainingSetup:
    """A model to train, its loss and its data (compared by identity: it holds arrays).

    Attributes:
      model: a `flax.linen.Module` whose `__call__` takes the inputs pytree, or an
        `nnx.Module` (called as `model(inputs)`), which holds its own variables and rngs.
      loss_fn: `loss_fn(outputs, targets) -> scalar`, the mean over the batch.
      data: `(inputs, targets)`, pytrees of numpy arrays with a leading example axis, or a
        random-access source (`len(source)`, `source[i] -> (inputs_i, targets_i)`, e.g. a
        grain `MapDataset`); see `jaxpipe.runtime.sources`.
      variables: the dict from `model.init` (params and state); None: initialised from the
        seed on the first batch. None for an NNX module.
      eval_data: data in the same form, scored with `metrics_fn` on the trained variables.
      metrics_fn: `metrics_fn(outputs, targets) -> {name: scalar}`.
      rngs: PRNG collections the model draws from in training (e.g. `{"dropout": key}`); only
        the names count: the runtime derives each micro-batch's key from the seed
        (`jaxpipe.runtime.dataset.micro_batch_keys`). None for an NNX module, whose dropout
        draws from its own `nnx.Rngs`.
      eval_model: the module evaluated (default `model`), e.g. `model.clone(train=False)`;
        an NNX one is cloned and updated with the trained state (`runtime.evaluation`).
      name: a label for the job id and the profile cache (default: the model's class name).
    """

    model: Any
    loss_fn: LossFn
    data: Any
    variables: Variables | None = None
    eval_data: Any = None
    metrics_fn: MetricsFn | None = None
    rngs: Rngs | None = None
    eval_model: Any = None
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or type(self.model).__name__
