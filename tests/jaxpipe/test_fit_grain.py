"""A grain `MapDataset` is training data: `jaxpipe.fit` reads it through `len` and
`dataset[i] -> (inputs_i, targets_i)` (`jaxpipe.runtime.sources`), and training on it equals
training on the same examples given as numpy arrays, bitwise.

The dataset is a grain pipeline, a random-access source with a `map` transform, so the
examples are produced by grain, not read back from the arrays the comparison uses.
"""

from __future__ import annotations

from typing import Any

import grain
import grain.python as gp
import jax
import numpy as np

import jaxpipe
from tests.jaxpipe.helpers import cross_entropy
from tests.jaxpipe.test_fit import Tower, common, dataset, initial_variables

Pair = tuple[np.ndarray, np.ndarray]


class Pairs(gp.RandomAccessDataSource[Pair]):
    """A grain `RandomAccessDataSource`: example i of the arrays x and y."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> Pair:
        return self.x[index], self.y[index]


def doubled(pair: Pair) -> Pair:
    return pair[0] * np.float32(2), pair[1]


def test_fit_on_a_grain_map_dataset_equals_fit_on_the_same_arrays(tmp_path):
    x, y = dataset()
    source = grain.MapDataset.source(Pairs(x, y)).map(doubled)
    assert len(source) == len(x)
    run: dict[str, Any] = common(tmp_path)  # the options of test_fit's jobs
    on_grain = jaxpipe.fit(Tower(), cross_entropy, source, initial_variables(), job_id="grain",
                           **run)
    on_arrays = jaxpipe.fit(Tower(), cross_entropy, (x * np.float32(2), y),
                            initial_variables(), job_id="arrays", **run)
    assert on_grain.losses == on_arrays.losses
    for a, b in zip(jax.tree.leaves(on_grain.variables), jax.tree.leaves(on_arrays.variables),
                    strict=True):
        np.testing.assert_array_equal(a, b)
