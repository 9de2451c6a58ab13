"""Pytrees as flat leaves with path names, the form in which values cross process borders.

A path names a leaf by its dict keys joined with '/', e.g. `params/block0/Dense_0/kernel`.
Stage bundles, checkpoints and the store speak in paths, never in Python tree structures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from jaxpipe.errors import StructureError

__all__ = ["Array", "Flat", "PyTree", "Variables", "flatten_paths", "nest"]

PyTree = Any
"""A pytree: nested dicts, lists and tuples (or any registered node) with arrays at the leaves.

`Any`, because Python's types cannot say "a tree of arrays"; the alias says which values are
meant as one, and `Flat` is how JaxPipe checks their structure.
"""

Array = jax.Array | np.ndarray
"""A leaf that holds data: a JAX array, or a numpy array (from a checkpoint, the store, a test)."""

Variables = Mapping[str, PyTree]
"""Flax variables by collection, as `model.init` returns them: `params`, `batch_stats`, ..."""


@dataclass(frozen=True, eq=False)
class Flat:
    """A pytree's leaves in `jax.tree` order, their path names, and the structure to rebuild it."""

    paths: tuple[str, ...]
    leaves: tuple[Any, ...]  # whatever the tree held; arrays, for variables and batches
    # jaxlib ships no stub for its C++ PyTreeDef, so pyright sees JAX's alias as a variable.
    treedef: jax.tree_util.PyTreeDef  # pyright: ignore[reportInvalidTypeForm]

    def rebuild(self, leaves: Sequence[object]) -> PyTree:
        """The tree of this structure with `leaves` in place of the original ones."""
        return jax.tree.unflatten(self.treedef, list(leaves))

    def leaves_of(self, tree: PyTree, what: str) -> list[Any]:
        """The leaves of `tree`, which must have this structure; `what` names it in the error."""
        leaves, treedef = jax.tree.flatten(tree)
        if treedef != self.treedef:
            raise StructureError(f"{what} has structure {treedef}, expected {self.treedef}")
        return leaves


def flatten_paths(tree: PyTree, prefix: str = "") -> Flat:
    """Flattens `tree`, naming each leaf by its path (dict keys, sequence indices) under
    `prefix`."""
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = tuple("/".join([prefix, *(_key(k) for k in path)]).strip("/")
                  for path, _ in with_paths)
    return Flat(paths, tuple(leaf for _, leaf in with_paths), treedef)


def nest(flat: Mapping[str, object], strip: str = "") -> dict[str, PyTree]:
    """Rebuilds nested dicts from `{path: leaf}`, dropping the leading component `strip`."""
    out: dict[str, PyTree] = {}
    for path, leaf in flat.items():
        parts = path.split("/")
        if strip and parts[0] == strip:
            parts = parts[1:]
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = leaf
    return out


def _key(k: object) -> str:
    """A path component: a dict key, a sequence index, an attribute name, or `str` of others."""
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)
