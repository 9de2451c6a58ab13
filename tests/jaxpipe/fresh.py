"""Shared by the nested, scan and NNX tests: running a bundle in a fresh process, NNX's own
oracle, and comparing state that holds PRNG keys and counters."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

FRESH_PROCESS = textwrap.dedent("""
    import sys, numpy as np, jaxpipe
    from jaxpipe.tree import flatten_paths, nest
    folder = sys.argv[1]
    runner = jaxpipe.load_stages(open(folder + "/bundle.zip", "rb").read())
    arrays = dict(np.load(folder + "/inputs.npz", allow_pickle=False))
    variables = nest({k: v for k, v in arrays.items()
                      if k not in ("x", "y") and not k.startswith("rngs/")})
    rngs = {k[len("rngs/"):]: v for k, v in arrays.items() if k.startswith("rngs/")} or None
    loss, grads, state = runner.value_and_grad(variables, (arrays["x"], arrays["y"]), rngs=rngs)
    out = {"loss": np.asarray(loss)}
    for name, tree, prefix in (("grads", grads, "params"), ("state", state, "")):
        flat = flatten_paths(tree, prefix)
        out.update({name + "/" + k: np.asarray(v) for k, v in zip(flat.paths, flat.leaves)})
    np.savez(folder + "/outputs.npz", **out)
    loaded = [m for m in ("flax", "optax", "tests", "jaxpipe.models") if m in sys.modules]
    assert not loaded, loaded
""")


def run_bundle_in_fresh_process(tmp_path, staged, batch, rngs=None, micro_batch=None):
    """Exports `staged`, runs its bundle in a new Python that never imports the model's code,
    on the traced model's own variables; returns (loss, {path: gradient}, {path: new state}),
    keyed by the user's paths (stacked leaves restacked, NNX keys as raw key data)."""
    traced = staged.traced
    (tmp_path / "bundle.zip").write_bytes(staged.export(micro_batch))
    arrays = {p: np.asarray(v) for flat in (traced.user_params, traced.user_state)
              for p, v in zip(flat.paths, flat.leaves)}
    arrays.update(x=np.asarray(batch[0]), y=np.asarray(batch[1]))
    for name, key in (rngs or {}).items():
        arrays["rngs/" + name] = np.asarray(jax.random.key_data(key) if _is_key(key) else key)
    np.savez(tmp_path / "inputs.npz", **arrays)
    subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path)], check=True, timeout=600)
    out = dict(np.load(tmp_path / "outputs.npz"))
    grads = {k[len("grads/"):]: v for k, v in out.items() if k.startswith("grads/")}
    state = {k[len("state/"):]: v for k, v in out.items() if k.startswith("state/")}
    return out["loss"], grads, state


def nnx_reference(model, batch, loss_fn, micro_batches=1):
    """`nnx.value_and_grad` of the unsplit model, micro-batch after micro-batch in order (state
    threads through them, as the stages thread it): mean loss, mean grads, final state."""
    model = nnx.clone(model)
    x, y = batch
    b = x.shape[0] // micro_batches
    total, grads = 0.0, None
    for m in range(micro_batches):
        xm, ym = x[m * b:(m + 1) * b], y[m * b:(m + 1) * b]
        loss, g = nnx.value_and_grad(lambda mod, xm=xm, ym=ym: loss_fn(mod(xm), ym))(model)
        total += loss / micro_batches
        g = jax.tree.map(lambda a: a / micro_batches, g)
        grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
    return total, grads, nnx.state(model, nnx.Not(nnx.Param))


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def state_error(actual, expected) -> float:
    """max |a - e| over state leaves relative to the largest |e| (PRNG keys as key data, which
    must match exactly, as must integer counters)."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    worst, scale = 0.0, 1.0
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        a, e = (jax.random.key_data(v) if _is_key(v) else jnp.asarray(v) for v in (a, e))
        if not jnp.issubdtype(e.dtype, jnp.floating):
            assert bool(jnp.all(a == e)), "an integer or key leaf differs"
            continue
        scale = max(scale, float(jnp.max(jnp.abs(e))))
        worst = max(worst, float(jnp.max(jnp.abs(a - e))))
    return worst / scale
