"""JaxPipe: pipelined, cost-aware training of Flax models on serverless functions.

The public surface: `trace` a model into layers, `split` it into stage programs, `export` them
and `load_stages` in a fresh process, `profile` them for the planners, and `train` a job on
functions. The compile side lives in `jaxpipe.staging`, the runtime in `jaxpipe.runtime`
(`docs/design.md` draws the house); every error is in `jaxpipe.errors`.
"""

from typing import TYPE_CHECKING

from jaxpipe.errors import (
    BatchError,
    BundleError,
    CutError,
    InputError,
    JaxPipeError,
    JobFailed,
    TraceError,
)
from jaxpipe.staging.bundle import StageRunner, load_stages
from jaxpipe.staging.profiling import profile
from jaxpipe.staging.split import Staged
from jaxpipe.staging.stage import StageProgram, StageSpec, TensorSpec
from jaxpipe.staging.tracing import Layer, Traced, trace
from planners import coarsen  # merges adjacent layers of a profile; the planners own it

if TYPE_CHECKING:  # imported on first use by __getattr__ below
    from jaxpipe.runtime.fit import FitResult, fit
    from jaxpipe.runtime.train import TrainOptions, train
    from jaxpipe.runtime.training_setup import TrainingSetup
    from jaxpipe.runtime.variables import load_variables

__all__ = [
    "BatchError",
    "BundleError",
    "CutError",
    "FitResult",
    "InputError",
    "JaxPipeError",
    "JobFailed",
    "Layer",
    "StageProgram",
    "StageRunner",
    "StageSpec",
    "Staged",
    "TensorSpec",
    "TraceError",
    "TrainOptions",
    "Traced",
    "TrainingSetup",
    "coarsen",
    "fit",
    "load_stages",
    "load_variables",
    "profile",
    "trace",
    "train",
]


_LAZY = {"train": "train", "TrainOptions": "train", "fit": "fit", "FitResult": "fit",
         "TrainingSetup": "training_setup", "load_variables": "variables"}
"""Public names of the runtime, by the `jaxpipe.runtime` module holding them."""


def __getattr__(name: str) -> object:
    """`jaxpipe.fit`, `jaxpipe.train`, `jaxpipe.load_variables`, `jaxpipe.TrainingSetup` and
    the rest of `_LAZY`, imported on first use: the runtime brings the model zoo (flax), which
    a function that only runs a stage bundle must not need."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"jaxpipe.runtime.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'jaxpipe' has no attribute {name!r}")
