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
    from jaxpipe.runtime.train import TrainOptions, train

__all__ = [
    "BatchError",
    "BundleError",
    "CutError",
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
    "coarsen",
    "load_stages",
    "profile",
    "trace",
    "train",
]


def __getattr__(name: str) -> object:
    """`jaxpipe.train` and `jaxpipe.TrainOptions`, imported on first use: the runtime brings
    the model zoo (flax), which a function that only runs a stage bundle must not need."""
    if name in ("train", "TrainOptions"):
        from jaxpipe.runtime import train as training

        return getattr(training, name)
    raise AttributeError(f"module 'jaxpipe' has no attribute {name!r}")
