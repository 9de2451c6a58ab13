"""Where training data comes from: arrays in memory, or a random-access source.

`examples(data)` accepts either form and checks it before any work:

    (inputs, targets)         pytrees of numpy arrays, every leaf with the same leading example
                              axis (N examples)
    a random-access source    `len(source) == N` and `source[i] -> (inputs_i, targets_i)`, e.g.
                              a grain `MapDataset` or `RandomAccessDataSource`

and returns `Examples`, which reads any range of examples as stacked numpy arrays. Examples
are uploaded shard by shard (`upload`), so a source larger than the driver's memory never has
to be held whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from jaxpipe.errors import DataLengthError, DatasetError, MissingTargetsError
from jaxpipe.runtime.job import Keys
from jaxpipe.tree import PyTree, flatten_paths
from transports import ObjectStore, codec

__all__ = ["Examples", "examples", "upload"]

Pair = tuple[PyTree, PyTree]


@dataclass(frozen=True, eq=False)
class Examples:
    """N examples, read by index range as `(inputs, targets)` of stacked numpy arrays.

    Attributes:
      count: the number of examples, N.
      bytes_per_example: bytes of one example's inputs and targets.
      read: `read(start, stop) -> (inputs, targets)` of examples [start, stop).
    """

    count: int
    bytes_per_example: float
    read: Callable[[int, int], Pair]

    @property
    def nbytes(self) -> float:
        return self.count * self.bytes_per_example

    def rows(self, start: int, stop: int) -> Pair:
        """Examples [start, stop) (clipped to N) as `(inputs, targets)`."""
        return self.read(start, min(stop, self.count))

    def leaves(self, start: int, stop: int) -> list[np.ndarray]:
        """Examples [start, stop) as the flat list of data leaves, inputs first."""
        return [np.asarray(x) for x in jax.tree.leaves(self.rows(start, stop))]


def examples(data: Any, what: str = "data") -> Examples:
    """`data` as `Examples`, checked (see the module docstring).

    Raises:
      MissingTargetsError: not a pair (or a source of pairs), or no target array.
      DataLengthError: leaves with different numbers of examples, or without an example axis.
      DatasetError: an empty source.

    Example:
      >>> x, y = np.zeros((5, 3), np.float32), np.arange(5)
      >>> ex = examples((x, y))
      >>> ex.count, ex.bytes_per_example, ex.rows(3, 9)[1].tolist()
      (5, 20.0, [3, 4])
    """
    if isinstance(data, tuple | list):
        if len(data) != 2:
            raise MissingTargetsError(f"{what} must be the pair (inputs, targets); got a "
                                      f"{type(data).__name__} of {len(data)} items")
        return _from_arrays(data[0], data[1], what)
    if hasattr(data, "__len__") and hasattr(data, "__getitem__") and not isinstance(
            data, np.ndarray | dict):
        return _from_source(data, what)
    raise MissingTargetsError(
        f"{what} must be (inputs, targets) or a random-access source of such pairs; got "
        f"{type(data).__name__}")


def _from_arrays(inputs: PyTree, targets: PyTree, what: str) -> Examples:
    inputs = jax.tree.map(np.asarray, inputs)
    targets = jax.tree.map(np.asarray, targets)
    if not jax.tree.leaves(targets):
        raise MissingTargetsError(f"the targets of {what} hold no array")
    if not jax.tree.leaves(inputs):
        raise MissingTargetsError(f"the inputs of {what} hold no array")
    count = _count((inputs, targets), what)
    per = sum(x.nbytes for x in jax.tree.leaves((inputs, targets))) / count

    def read(start: int, stop: int) -> Pair:
        return jax.tree.map(lambda a: a[start:stop], (inputs, targets))

    return Examples(count, per, read)


def _count(pair: Pair, what: str) -> int:
    flat = flatten_paths({"inputs": pair[0], "targets": pair[1]})
    lengths = {p: (np.shape(x)[0] if np.ndim(x) else None) for p, x in zip(flat.paths,
                                                                        flat.leaves)}
    if len(set(lengths.values())) != 1 or None in lengths.values():
        listed = ", ".join(f"{p}: {n if n is not None else 'no example axis'}"
                           for p, n in lengths.items())
        raise DataLengthError(f"the leaves of {what} disagree on the number of examples "
                              f"({listed})")
    count = next(iter(lengths.values()))
    assert count is not None
    if count == 0:
        raise DatasetError(f"{what} has no examples")
    return count


def _from_source(source: Any, what: str) -> Examples:
    count = len(source)
    if count == 0:
        raise DatasetError(f"{what} (a {type(source).__name__}) has no examples")
    first = source[0]
    if not isinstance(first, tuple | list) or len(first) != 2:
        raise MissingTargetsError(
            f"{what}[0] must be a pair (inputs, targets); got {type(first).__name__}")
    if not jax.tree.leaves(first[1]):
        raise MissingTargetsError(f"the targets of {what}[0] hold no array")
    structure = jax.tree.structure(tuple(first))
    per = float(sum(np.asarray(x).nbytes for x in jax.tree.leaves(first)))

    def read(start: int, stop: int) -> Pair:
        items = [tuple(source[i]) for i in range(start, stop)]
        for i, item in zip(range(start, stop), items):
            if jax.tree.structure(item) != structure:
                raise DataLengthError(f"{what}[{i}] is shaped unlike {what}[0]")
        stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *items)
        return stacked[0], stacked[1]

    return Examples(count, per, read)


def upload(store: ObjectStore, keys: Keys, data: Examples, shard_size: int) -> int:
    """Writes the examples as shards of `shard_size` (codec: {"leaf0": ..., ...}, the layout
    `dataset.ShardReader` reads), one shard in memory at a time; returns the shard count."""
    count = -(-data.count // shard_size)
    for i in range(count):
        leaves: Sequence[np.ndarray] = data.leaves(i * shard_size, (i + 1) * shard_size)
        store.put(keys.shard(i), codec.encode(
            {f"leaf{j}": np.ascontiguousarray(x) for j, x in enumerate(leaves)}))
    return count
