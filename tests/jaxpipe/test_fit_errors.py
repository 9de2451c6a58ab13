"""Bad input to `jaxpipe.fit` and `jaxpipe train` is refused before any function starts, each
mistake with its own `jaxpipe.errors` class, and nothing is written to the store."""

from __future__ import annotations

import numpy as np
import pytest

import jaxpipe
from jaxpipe import cli
from jaxpipe.errors import (
    BatchTooLargeError,
    DataFileError,
    DataLengthError,
    ImportPathError,
    IndivisibleBatchError,
    InputError,
    MissingMetricsError,
    MissingTargetsError,
    NotAnOptimizerError,
)
from jaxpipe.runtime.train import open_store
from planners import Plan, StagePlan
from tests.jaxpipe.helpers import cross_entropy
from tests.jaxpipe.test_fit import Tower, accuracy, dataset

X, Y = dataset(20)
PLAN = Plan(stages=(StagePlan(0, 1, 1024), StagePlan(2, 3, 1024, 2)), micro_batch=4,
            global_batch=16)


class Items:
    """A random-access source whose items are not (inputs, targets) pairs."""

    def __len__(self):
        return 3

    def __getitem__(self, i):
        return X[i]


@pytest.mark.parametrize("change, error, message", [
    ({"data": (X, Y[:7])}, DataLengthError, r"targets: 7"),
    ({"data": X}, MissingTargetsError, "must be \\(inputs, targets\\)"),
    ({"data": (X, {})}, MissingTargetsError, "targets of data hold no array"),
    ({"data": Items()}, MissingTargetsError, r"data\[0\] must be a pair"),
    ({"batch_size": 32}, BatchTooLargeError, "larger than the training set's 20"),
    ({"batch_size": 12, "plan": PLAN}, IndivisibleBatchError, "multiple of 8"),
    ({"optimizer": 3}, NotAnOptimizerError, "got int"),
    ({"eval_data": (X, Y)}, MissingMetricsError, "without metrics_fn"),
    ({"eval_data": (X[:3], Y), "metrics_fn": accuracy}, DataLengthError, "eval_data"),
])
def test_fit_refuses_bad_input_before_any_work(tmp_path, change, error, message):
    args = dict(data=(X, Y), batch_size=8, iterations=1, store=str(tmp_path / "store"),
                progress=False, profile_cache=str(tmp_path / "profiles"))
    args.update(change)
    data = args.pop("data")
    with pytest.raises(error, match=message):
        jaxpipe.fit(Tower(), cross_entropy, data, **args)
    assert issubclass(error, InputError)
    assert not (tmp_path / "store").exists() or not open_store(str(tmp_path / "store")).list(
        "jobs/")


@pytest.mark.parametrize("argv, error, message", [
    (["--model", "tests.jaxpipe.no_such_module:make"], ImportPathError,
     "module 'tests.jaxpipe.no_such_module' was not found"),
    (["--model", "tests.jaxpipe.test_fit:no_such_function"], ImportPathError,
     "has no attribute 'no_such_function'"),
    (["--model", "tests.jaxpipe.test_fit:dataset"], ImportPathError,
     "must give a jaxpipe.TrainingSetup"),
    (["--optimizer", "optax:no_such_optimizer"], ImportPathError,
     "module 'optax' has no attribute"),
    (["--data", "{tmp}/data.npz", "--targets", "y"], DataFileError, "has no array 'y'"),
])
def test_the_cli_names_what_failed(tmp_path, capsys, argv, error, message):
    np.savez(tmp_path / "data.npz", inputs=X, targets=Y)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert cli.main(["train", "--store", str(tmp_path / "store"), *argv]) == 2
    err = capsys.readouterr().err  # one message, no traceback (jaxpipe.error_report)
    assert f"jaxpipe: {error.__name__}: " in err and message in err and "Traceback" not in err
