"""JaxPipe: pipelined, cost-aware training of Flax models on serverless functions.

The public surface: `trace` a model into layers, `split` it into stage programs, `export` them
and `load_stages` in a fresh process, `profile` them for the planners.
"""

from jaxpipe.bundle import BundleError, StageRunner, load_stages
from jaxpipe.errors import BatchError, CutError, JaxPipeError, TraceError
from jaxpipe.profile import profile
from jaxpipe.split import Staged
from jaxpipe.stage import StageProgram, StageSpec, TensorSpec
from jaxpipe.trace import Layer, Traced, trace
from planners import coarsen  # merges adjacent layers of a profile; the planners own it

__all__ = [
    "BatchError",
    "BundleError",
    "CutError",
    "JaxPipeError",
    "Layer",
    "StageProgram",
    "StageRunner",
    "StageSpec",
    "Staged",
    "TensorSpec",
    "TraceError",
    "Traced",
    "coarsen",
    "load_stages",
    "profile",
    "trace",
]
