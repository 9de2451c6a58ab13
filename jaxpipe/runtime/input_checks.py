"""The checks of `jaxpipe train`'s and `jaxpipe.fit`'s inputs that need no model: run first.

    check_options(options)        numbers in range: iterations, batch, checkpoint interval,
                                  learning rate, shard size, wait timeout, functions
    check_store_location(text)    a directory (or one that can be made), or s3://bucket
    read_plan_file(path)          the plan file exists and holds a plan
    check_memory_floor(plan, p)   no local rank is capped below what a JAX process needs

Each failure is its own `InputError` subclass with a one-line message that names the value and
the fix, raised before anything is traced, planned or written (docs/design.md, "Validate").
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from jaxpipe.errors import (
    BatchSizeError,
    CheckpointEveryError,
    IterationsError,
    LearningRateError,
    MemoryFloorError,
    OptionRangeError,
    PlanFileError,
    StoreLocationError,
)
from jaxpipe.runtime.options import TrainOptions
from jaxpipe.runtime.platforms.local import MIN_MEMORY_MB
from planners import Plan, PlanError, Platform

__all__ = ["check_memory_floor", "check_options", "check_store_location", "read_plan_file"]


def check_options(options: TrainOptions) -> None:
    """Refuses numeric options out of range (see the module docstring).

    Raises:
      IterationsError, BatchSizeError, CheckpointEveryError, LearningRateError,
      OptionRangeError: the first option out of range; the message names it and its value.
    """
    if not _positive_int(options.iterations):
        raise IterationsError(f"--iterations {options.iterations}: the number of iterations "
                              "must be a whole number of at least 1")
    if not _positive_int(options.batch):
        raise BatchSizeError(f"--batch {options.batch}: the global batch must be a whole "
                             "number of at least 1")
    if not _positive_int(options.checkpoint_every):
        raise CheckpointEveryError(
            f"--checkpoint-every {options.checkpoint_every}: checkpoints are written every that "
            "many iterations, so it must be at least 1 (the last iteration always checkpoints)")
    if isinstance(options.optimizer, str) and not (
            isinstance(options.learning_rate, int | float)
            and math.isfinite(options.learning_rate) and options.learning_rate > 0):
        raise LearningRateError(f"--lr {options.learning_rate}: the learning rate must be a "
                                "finite number above 0")
    for flag, value in (("--shard-size", options.shard_size),
                        ("--max-functions", options.max_functions)):
        if not _positive_int(value):
            raise OptionRangeError(f"{flag} {value}: must be a whole number of at least 1")
    if options.eval_every is not None and not _positive_int(options.eval_every):
        raise OptionRangeError(f"--eval-every {options.eval_every}: must be a whole number of "
                               "at least 1 (or left out)")
    if not (math.isfinite(options.wait_timeout_s) and options.wait_timeout_s > 0):
        raise OptionRangeError(f"wait_timeout_s {options.wait_timeout_s}: must be a finite "
                               "number of seconds above 0")


def check_store_location(location: str) -> None:
    """Refuses a store that is not a directory (nor can become one) and is not s3://bucket.

    Raises:
      StoreLocationError: the path is a file, or lies under a file; an `s3://` without bucket.
    """
    if location.startswith("s3://"):
        if not location[5:].strip("/"):
            raise StoreLocationError(f"--store {location}: name the bucket, s3://<bucket>")
        return
    path = Path(location)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            raise StoreLocationError(
                f"--store {location}: {parent} is a file, not a directory; a local store is a "
                "directory (it is created if missing): choose another path, or s3://<bucket>")


def read_plan_file(path: str | None) -> Plan | None:
    """The plan in `path` (None for no path).

    Raises:
      PlanFileError: the file is missing, not JSON, or not a plan; the message says which.
    """
    if not path:
        return None
    file = Path(path)
    if not file.is_file():
        raise PlanFileError(f"--plan {path}: no such file (write one with `jaxpipe plan -o "
                            f"{path}`)")
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PlanFileError(f"--plan {path} is not JSON ({err}); write it with "
                            "`jaxpipe plan -o FILE`") from err
    try:
        return Plan.from_dict(data)
    except (PlanError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise PlanFileError(f"--plan {path} is JSON but not a plan ({type(err).__name__}: "
                            f"{err}); write it with `jaxpipe plan -o FILE`") from err


def check_memory_floor(plan: Plan, platform: Platform) -> None:
    """On the local platform, refuses a stage capped below `MIN_MEMORY_MB` (a JAX process
    does not start in less), rather than run it with more memory than it is billed for.

    Raises:
      MemoryFloorError: the stages below the floor are named.
    """
    if platform.name != "local":
        return
    low = [(s, st.memory_mb) for s, st in enumerate(plan.stages) if st.memory_mb < MIN_MEMORY_MB]
    if low:
        listed = ", ".join(f"stage {s} at {mb} MB" for s, mb in low)
        raise MemoryFloorError(f"{listed}: a local rank needs at least {MIN_MEMORY_MB} MB (a JAX "
                               "process does not start in less); give it more memory in the "
                               "plan, or leave sizes below that out of the platform file")


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
