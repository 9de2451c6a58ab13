"""The stage bundle: exported stage programs a fresh process runs without the model's code.

A bundle is a zip archive (no pickle anywhere):

    manifest.json          format, micro-batch size, every parameter/state path with its shape,
                           the data leaves, the stacked leaves of unrolled scans (the user's
                           paths and slice counts), and one `StageSpec` per stage
    stage<k>/forward       jax.export-serialised forward of stage k
    stage<k>/backward      jax.export-serialised backward of stage k

Loading needs only jax and jaxlib. A worker that runs one stage loads only that stage's programs.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

import jax
from jax import export as jax_export
from jax.stages import Wrapped

from jaxpipe.errors import (
    BatchError,
    BundleError,
    PartialBundleError,
    RngError,
    VariablesError,
)
from jaxpipe.staging.batch import Batch, Rngs, batch_size_of, raw_key
from jaxpipe.staging.reference import micro_batches, run_pipeline
from jaxpipe.staging.stage import StageProgram, StageSpec
from jaxpipe.staging.unroll import Unstacking
from jaxpipe.tree import Array, Flat, PyTree, Variables, flatten_paths, nest

if TYPE_CHECKING:  # split imports this module to export; at run time a bundle needs no split
    from jaxpipe.staging.split import Staged

__all__ = ["StageRunner", "export_bundle", "load_stages"]

FORMAT = "jaxpipe-stages/1"


class ShapeEntry(TypedDict):
    """A leaf's shape and dtype in the manifest, e.g. `{"shape": [64, 10], "dtype": "float32"}`."""

    shape: list[int]
    dtype: str


def export_bundle(staged: Staged, micro_batch: int) -> bytes:
    """Exports every stage of `staged` at `micro_batch` samples per micro-batch."""
    traced = staged.traced
    stages = staged.stages(micro_batch)
    shapes = {p: _spec(x) for p, x in zip(traced.params.paths, traced.params.leaves)}
    shapes.update({p: _spec(x) for p, x in zip(traced.state.paths, traced.state.leaves)})
    data = [_spec(s) for s in traced.data_specs(micro_batch)]
    manifest = {
        "format": FORMAT,
        "micro_batch": micro_batch,
        "param_paths": list(traced.params.paths),
        "state_paths": list(traced.state.paths),
        "shapes": shapes,
        "data": {"inputs": len(traced.inputs.leaves), "targets": len(traced.targets.leaves),
                 "rngs": list(traced.rng_names), "leaves": data},
        "layers": [layer.name for layer in traced.layers],
        "stages": [s.spec.to_dict() for s in stages],
        "user_paths": {"params": list(traced.user_params.paths),
                       "state": list(traced.user_state.paths)},
        "stacked": {"params": traced.unstacking[0].to_dict(),
                    "state": traced.unstacking[1].to_dict()},
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("manifest.json", json.dumps(manifest, indent=1))
        for stage in stages:
            fwd, bwd = _export(stage, shapes)
            archive.writestr(f"stage{stage.spec.index}/forward", fwd)
            archive.writestr(f"stage{stage.spec.index}/backward", bwd)
    return buffer.getvalue()


def _export(stage: StageProgram, shapes: Mapping[str, ShapeEntry]) -> tuple[bytes, bytes]:
    spec = stage.spec
    params = [_struct(shapes[p]) for p in spec.param_paths]
    state = [_struct(shapes[p]) for p in spec.state_paths]
    fwd = jax_export.export(stage.forward)(params, state, [t.struct() for t in spec.inputs])
    cts = [t.struct() for t in spec.outputs if t.differentiable]
    bwd = jax_export.export(stage.backward)(params, [t.struct() for t in spec.saved], cts)
    return bytes(fwd.serialize()), bytes(bwd.serialize())


@dataclass(frozen=True)
class StageRunner:
    """Stages loaded from a bundle: drive one stage (`stages[k]`) or all of them in order.

    Attributes:
      manifest: the bundle's manifest (paths, shapes, data layout, stage specs).
      stages: the loaded stages, in order (only those asked for, others are None).
    """

    manifest: dict
    stages: tuple[StageProgram | None, ...]

    @property
    def micro_batch(self) -> int:
        return self.manifest["micro_batch"]

    def value_and_grad(
        self, variables: Variables, batch: Batch, rngs: Rngs | None = None,
    ) -> tuple[jax.Array, dict[str, PyTree], dict[str, PyTree]]:
        """Loss, gradients and new state of `batch`, in micro-batches of the exported size.

        Gradients and state come back as nested dicts keyed like `variables`; `rngs` gives the
        PRNG keys the traced model took (derived per micro-batch as in `Staged.value_and_grad`).
        Leaves the programs take as slices (scans unrolled) are sliced here and their gradients
        and new state stacked back. An NNX model's variables are `{"params": ..., "state":
        ...}` by attribute path, PRNG keys as raw key data.
        """
        stages = [s for s in self.stages if s is not None]
        if len(stages) != len(self.stages):
            raise PartialBundleError(
                "value_and_grad needs every stage; load the bundle without `only`")
        size = batch_size_of(batch)
        if size % self.micro_batch:
            raise BatchError(
                f"the bundle runs micro-batches of {self.micro_batch} samples; a batch of "
                f"{size} does not divide into them"
            )
        p_un, s_un = self.unstacking
        params = _user_leaves(flatten_paths(variables["params"], "params"), p_un,
                              "variables['params']")
        state = _user_leaves(flatten_paths({k: v for k, v in variables.items() if k != "params"}),
                             s_un, "the state collections of variables")
        leaves = [*jax.tree.leaves(batch[0]), *jax.tree.leaves(batch[1])]
        info = self.manifest["data"]
        if len(leaves) != info["inputs"] + info["targets"]:
            raise BatchError(
                f"the batch has {len(leaves)} leaves; the bundle expects "
                f"{info['inputs']} input and {info['targets']} target leaves"
            )
        rngs = rngs or {}
        missing = sorted(set(info["rngs"]) - set(rngs))
        if missing:
            raise RngError(f"this bundle needs PRNG keys for {missing}; pass them as rngs")
        keys = [raw_key(rngs[name]) for name in info["rngs"]]
        data = micro_batches(leaves, keys, size // self.micro_batch)
        loss, grads, new_state = run_pipeline(
            stages, dict(zip(p_un.program_paths, p_un.expand(params))),
            dict(zip(s_un.program_paths, s_un.expand(state))), data,
        )
        grads = dict(zip(p_un.paths, p_un.collapse([grads[p] for p in p_un.program_paths])))
        new_state = dict(zip(s_un.paths, s_un.collapse([new_state[p] for p in s_un.program_paths])))
        return loss, nest(grads, strip="params"), nest(new_state)

    @property
    def unstacking(self) -> tuple[Unstacking, Unstacking]:
        """How the user's parameter and state leaves map to the programs' (`staging.unroll`)."""
        m = self.manifest
        user = m.get("user_paths", {"params": m["param_paths"], "state": m["state_paths"]})
        stacked = m.get("stacked", {"params": {}, "state": {}})
        return (Unstacking.from_dict(user["params"], stacked["params"]),
                Unstacking.from_dict(user["state"], stacked["state"]))


def _user_leaves(flat: Flat, unstacking: Unstacking, what: str) -> list[Array]:
    """The leaves of `flat` in the bundle's order of the user's paths (any nesting order)."""
    given = dict(zip(flat.paths, flat.leaves))
    if set(given) != set(unstacking.paths):
        missing = sorted(set(unstacking.paths) - set(given))
        extra = sorted(set(given) - set(unstacking.paths))
        raise VariablesError(f"{what} does not match the bundle's paths: missing {missing[:5]}, "
                             f"unexpected {extra[:5]}")
    return [given[p] for p in unstacking.paths]


def load_stages(blob: bytes, only: Sequence[int] | None = None) -> StageRunner:
    """Loads a stage bundle made by `Staged.export`; `only` limits it to some stage indices."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(blob))
        manifest = json.loads(archive.read("manifest.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise BundleError(f"not a JaxPipe stage bundle ({exc}); make one with Staged.export()"
                          ) from exc
    if manifest.get("format") != FORMAT:
        raise BundleError(f"bundle format {manifest.get('format')!r}; this JaxPipe reads {FORMAT}")
    stages: list[StageProgram | None] = []
    for entry in manifest["stages"]:
        spec = StageSpec.from_dict(entry)
        if only is not None and spec.index not in only:
            stages.append(None)
            continue
        fwd = jax_export.deserialize(bytearray(archive.read(f"stage{spec.index}/forward")))
        bwd = jax_export.deserialize(bytearray(archive.read(f"stage{spec.index}/backward")))
        stages.append(StageProgram(spec, _as_lists(fwd.call), _as_lists(bwd.call)))
    return StageRunner(manifest, tuple(stages))


def _as_lists(call: Callable[..., PyTree]) -> Wrapped:
    """Exported programs take and return lists; accept any sequences and numpy arrays."""

    def run(*args: Sequence[Array]) -> PyTree:
        return call(*[list(a) for a in args])

    return jax.jit(run)


def _spec(x: Array | jax.ShapeDtypeStruct) -> ShapeEntry:
    return {"shape": list(x.shape), "dtype": str(x.dtype)}


def _struct(d: ShapeEntry) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(d["shape"]), jax.numpy.dtype(d["dtype"]))
