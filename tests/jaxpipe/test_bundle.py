"""A stage bundle runs in a fresh process, without the model's code, with the same results."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import jaxpipe
from jaxpipe.errors import RngError
from jaxpipe.tree import flatten_paths
from tests.jaxpipe.helpers import cross_entropy, max_relative_error, skipnet_case

FRESH_PROCESS = textwrap.dedent("""
    import sys, numpy as np, jaxpipe
    from jaxpipe.tree import nest
    folder = sys.argv[1]
    runner = jaxpipe.load_stages(open(folder + "/bundle.zip", "rb").read())
    arrays = dict(np.load(folder + "/inputs.npz", allow_pickle=False))
    variables = nest({k: v for k, v in arrays.items() if not k.startswith("batch/")})
    batch = (arrays["batch/x"], arrays["batch/y"])
    loss, grads, state = runner.value_and_grad(variables, batch)
    out = {"loss": np.asarray(loss)}
    flat = jaxpipe.tree.flatten_paths(grads)
    out.update({"grads/" + k: np.asarray(v) for k, v in zip(flat.paths, flat.leaves)})
    np.savez(folder + "/outputs.npz", **out)
    assert "flax" not in sys.modules and "tests" not in sys.modules, sorted(sys.modules)
""")


@pytest.mark.parametrize("mode", ["stash", "dots", "recompute"])
def test_bundle_in_a_fresh_process_gives_the_same_loss_and_gradients(tmp_path, mode):
    model, variables, batch, _ = skipnet_case(norm=True)
    traced = jaxpipe.trace(model, variables, batch, cross_entropy)
    staged = traced.split((1, 3), mode)
    loss, grads, _ = staged.value_and_grad(variables, batch, micro_batches=2)
    (tmp_path / "bundle.zip").write_bytes(staged.export(micro_batch=4))
    flat = flatten_paths(variables)
    arrays = {p: np.asarray(v) for p, v in zip(flat.paths, flat.leaves)}
    np.savez(tmp_path / "inputs.npz", **arrays,
             **{"batch/x": np.asarray(batch[0]), "batch/y": np.asarray(batch[1])})
    subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path)], check=True,
                   timeout=300)
    out = dict(np.load(tmp_path / "outputs.npz"))
    assert abs(float(out["loss"]) - float(loss)) <= 1e-6 * abs(float(loss))
    expected = flatten_paths(grads)
    got = {p: out["grads/" + p] for p in expected.paths}
    assert max_relative_error(list(got.values()), list(expected.leaves)) <= 1e-6


def test_loaded_stage_programs_match_the_jitted_ones_stage_by_stage():
    model, variables, batch, _ = skipnet_case()
    traced = jaxpipe.trace(model, variables, batch, cross_entropy)
    staged = traced.split((2,))
    runner = jaxpipe.load_stages(staged.export())
    params = dict(zip(traced.params.paths, traced.params.leaves))
    acts = [[*batch][i] for i in runner.stages[0].spec.input_data]
    for ours, theirs in zip(staged.stages(8), runner.stages):
        assert ours.spec == theirs.spec
        p = [params[k] for k in ours.spec.param_paths]
        out_a, _, saved_a = ours.forward(p, [], acts)
        out_b, _, saved_b = theirs.forward(p, [], acts)
        assert max_relative_error(out_b, out_a) == 0.0
        cts = [np.ones(t.shape, t.dtype) for t in ours.spec.outputs if t.differentiable]
        assert max_relative_error(theirs.backward(p, saved_b, cts),
                                  ours.backward(p, saved_a, cts)) == 0.0
        acts = out_a


def test_a_worker_can_load_only_its_stage():
    model, variables, batch, _ = skipnet_case()
    staged = jaxpipe.trace(model, variables, batch, cross_entropy).split((1, 2))
    runner = jaxpipe.load_stages(staged.export(), only=[1])
    assert runner.stages[0] is None and runner.stages[2] is None
    assert runner.stages[1].spec.first_layer == 1


def test_manifest_is_json_and_names_every_stage():
    import io
    import zipfile

    model, variables, batch, _ = skipnet_case()
    staged = jaxpipe.trace(model, variables, batch, cross_entropy).split((1, 2))
    archive = zipfile.ZipFile(io.BytesIO(staged.export()))
    manifest = json.loads(archive.read("manifest.json"))
    assert [s["first_layer"] for s in manifest["stages"]] == [0, 1, 2]
    assert sorted(archive.namelist()) == sorted(
        ["manifest.json"] + [f"stage{k}/{d}" for k in range(3) for d in ("forward", "backward")])


def test_garbage_is_refused_with_a_clear_error():
    with pytest.raises(jaxpipe.BundleError, match="not a JaxPipe stage bundle"):
        jaxpipe.load_stages(b"not a zip")


def test_keys_in_bundle_are_required(tmp_path):
    model, variables, batch, rngs = skipnet_case(dropout=0.5)
    staged = jaxpipe.trace(model, variables, batch, cross_entropy, rngs=rngs).split((2,))
    runner = jaxpipe.load_stages(staged.export(micro_batch=4))
    with pytest.raises(RngError, match="dropout"):
        runner.value_and_grad(variables, batch)
    loss, grads, _ = runner.value_and_grad(variables, batch, rngs=rngs)
    ref_loss, ref_grads, _ = staged.value_and_grad(variables, batch, micro_batches=2)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-6)
    assert max_relative_error(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)) <= 1e-6
