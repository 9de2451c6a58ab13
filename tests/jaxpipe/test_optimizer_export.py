"""Exported optimizer programs: per-stage `init` and `update` (and `partials` exchanged between
stages when the update sums over them) equal one optax update of the whole model; couplings
that are not sums are refused by name; the state survives the archive and checkpoints."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpipe.errors import CouplingError, OptimizerStateError
from jaxpipe.runtime import checkpoint
from jaxpipe.runtime.job import Keys
from jaxpipe.runtime.optimizer import (
    compile_optimizer,
    load_optimizer,
    state_slots,
    sum_partials,
)
from jaxpipe.tree import flatten_paths, nest
from tests.jaxpipe.test_optim import SHAPES, STAGES  # the same three-stage model
from transports import MemoryStore

STEPS = 4
MAX_NORM = 0.05  # far below the gradients' global norm (about 15): clipping binds every step
SCHEDULE = optax.warmup_cosine_decay_schedule(0.0, 0.05, warmup_steps=2, decay_steps=10)


def kernels_only(params):
    return jax.tree.map(lambda x: x.ndim > 1, params)


OPTIMIZERS = {
    "sgd": lambda: optax.sgd(0.1),
    "adamw-warmup-cosine": lambda: optax.adamw(SCHEDULE, weight_decay=0.1),
    "clip-then-adamw": lambda: optax.chain(optax.clip_by_global_norm(MAX_NORM),
                                           optax.adamw(SCHEDULE, weight_decay=0.1)),
    "masked-weight-decay": lambda: optax.chain(
        optax.scale_by_adam(), optax.masked(optax.add_decayed_weights(0.1), kernels_only),
        optax.scale_by_learning_rate(SCHEDULE)),
}


def scale_by_max_abs() -> optax.GradientTransformation:
    """Divides every update by the largest |update| over all leaves: a max, not a sum."""

    def init_fn(params):
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        largest = jax.tree.reduce(jnp.maximum, jax.tree.map(lambda u: jnp.max(jnp.abs(u)),
                                                            updates))
        return jax.tree.map(lambda u: u / largest, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def model_params(seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {p: jnp.asarray(rng.normal(size=s), jnp.float32) for p, s in SHAPES.items()}


def gradients(steps: int = STEPS, seed: int = 1) -> list[dict[str, jax.Array]]:
    rng = np.random.default_rng(seed)
    return [{p: jnp.asarray(3 * rng.normal(size=s), jnp.float32) for p, s in SHAPES.items()}
            for _ in range(steps)]


def by_stage(values: dict[str, jax.Array]) -> list[dict[str, jax.Array]]:
    return [{p: values[p] for p in paths} for paths in STAGES]


def whole_model_training(optimizer: optax.GradientTransformation) -> list[dict[str, np.ndarray]]:
    """The oracle: optax on the model's nested parameter tree; the params after each step."""
    params = nest(model_params(), strip="params")
    state = optimizer.init(params)
    out = []
    for grads in gradients():
        updates, state = optimizer.update(nest(grads, strip="params"), state, params)
        params = optax.apply_updates(params, updates)
        flat = flatten_paths(params, "params")
        out.append(dict(zip(flat.paths, map(np.asarray, flat.leaves))))
    return out


def per_stage_training(optimizer: optax.GradientTransformation, exchange: str = "sum",
                       ) -> list[dict[str, np.ndarray]]:
    """The stages, each loading its programs from the archive; `exchange="own"` gives each
    stage its own partials instead of the sum over stages (the exchange removed)."""
    params = by_stage(model_params())
    blob = compile_optimizer(optimizer, params).export()
    stages = [load_optimizer(blob, k) for k in range(len(STAGES))]
    states = [s.init(p) for s, p in zip(stages, params)]
    out = []
    for grads in map(by_stage, gradients()):
        parts = [s.partials(g, st, p) if s.needs_exchange else []
                 for s, g, st, p in zip(stages, grads, states, params)]
        for k, stage in enumerate(stages):
            exchanged = sum_partials(parts) if exchange == "sum" else parts[k]
            params[k], states[k] = stage.update(grads[k], states[k], params[k],
                                                exchanged if stage.needs_exchange else None)
        out.append({p: np.asarray(v) for part in params for p, v in part.items()})
    return out


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_per_stage_exported_updates_equal_optax_on_the_whole_model(name):
    expected, got = whole_model_training(OPTIMIZERS[name]()), per_stage_training(
        OPTIMIZERS[name]())
    for t, (e, g) in enumerate(zip(expected, got, strict=True)):
        assert set(g) == set(SHAPES)
        for p in SHAPES:
            np.testing.assert_allclose(g[p], e[p], rtol=1e-6, atol=1e-7,
                                       err_msg=f"{name}, step {t}, {p}")
    # the oracle moves: every step changes every parameter
    assert all(not np.allclose(expected[-1][p], model_params()[p]) for p in SHAPES)


@pytest.mark.parametrize("name, exchanges", [
    ("sgd", False), ("adamw-warmup-cosine", False), ("masked-weight-decay", False),
    ("clip-then-adamw", True)])
def test_only_the_global_norm_makes_the_stages_exchange(name, exchanges):
    programs = compile_optimizer(OPTIMIZERS[name](), by_stage(model_params()))
    assert programs.needs_exchange == exchanges
    if exchanges:
        assert programs.manifest["exchange"] == ["float32"]  # one scalar: the sum of squares


def test_clipping_binds_in_these_tests():
    norm = optax.tree.norm(gradients()[0])
    assert norm > 10 * MAX_NORM


def test_without_the_exchange_global_norm_clipping_is_not_exact():
    expected = whole_model_training(OPTIMIZERS["clip-then-adamw"]())
    got = per_stage_training(OPTIMIZERS["clip-then-adamw"](), exchange="own")
    worst = max(float(np.max(np.abs(got[-1][p] - expected[-1][p]))) for p in SHAPES)
    assert worst > 1e-3


def test_a_coupling_that_is_not_a_sum_is_refused_naming_the_transformation_and_leaves():
    optimizer = optax.chain(scale_by_max_abs(), optax.sgd(0.1))
    with pytest.raises(CouplingError) as info:
        compile_optimizer(optimizer, by_stage(model_params()))
    message = str(info.value)
    assert "scale_by_max_abs.<locals>.update_fn" in message
    assert "test_optimizer_export.py" in message
    assert "`max`" in message
    assert "new params/head/kernel (stage 2) depends on stages 0, 1, 2" in message


def test_a_coupling_inside_one_stage_needs_no_exchange():
    # the same transformation is fine when every parameter lives on one stage
    whole = [model_params()]
    optimizer = optax.chain(scale_by_max_abs(), optax.sgd(0.1))
    assert not compile_optimizer(optimizer, whole).needs_exchange
    assert not compile_optimizer(OPTIMIZERS["clip-then-adamw"](), whole).needs_exchange


def test_state_bytes_come_from_the_traced_init():
    params = by_stage(model_params())
    floats = [sum(int(np.prod(SHAPES[p])) for p in paths) for paths in STAGES]
    sgd = compile_optimizer(optax.sgd(0.1), params)
    adamw = compile_optimizer(OPTIMIZERS["adamw-warmup-cosine"](), params)
    for k, n in enumerate(floats):
        assert sgd.state_bytes(k) == 0
        # mu and nu per parameter, and each stage's copy of the two int32 step counts
        assert adamw.state_bytes(k) == 2 * 4 * n + 2 * 4
    assert state_slots(optax.adamw(1e-3), model_params()) == 2
    assert state_slots(optax.sgd(0.1, momentum=0.9), model_params()) == 1


def test_each_stage_holds_its_leaves_of_the_whole_state_and_copies_of_the_counts():
    optimizer = OPTIMIZERS["clip-then-adamw"]()
    params = by_stage(model_params())
    whole = flatten_paths(optimizer.init(nest(model_params(), strip="params")))
    blob = compile_optimizer(optimizer, params).export()
    held = [set(load_optimizer(blob, k).init(params[k])) for k in range(len(STAGES))]
    counts = {p for p in whole.paths if p.endswith("count")}
    assert len(counts) == 2
    for k, paths in enumerate(held):
        assert counts <= paths
        assert all(p in counts or any(p.endswith(q.removeprefix("params")) for q in STAGES[k])
                   for p in paths)
    assert set().union(*held) == set(whole.paths)


def test_the_state_round_trips_through_a_checkpoint():
    optimizer = OPTIMIZERS["masked-weight-decay"]()
    params = by_stage(model_params())
    blob = compile_optimizer(optimizer, params).export()
    stage = load_optimizer(blob, 1)
    state = stage.init(params[1])
    grads = by_stage(gradients()[0])[1]
    new_params, state = stage.update(grads, state, params[1])
    store, keys = MemoryStore(), Keys("opt-job")
    checkpoint.save(store, keys, 1, 1, new_params, state, {})
    got_params, got_state, _ = checkpoint.load(store, keys, 1, 1, stage, timeout=1.0)
    assert list(got_state) == list(state)
    for p in state:
        np.testing.assert_array_equal(got_state[p], state[p])
        assert got_state[p].dtype == state[p].dtype
    other = load_optimizer(compile_optimizer(optax.sgd(0.1, momentum=0.9), params).export(), 1)
    with pytest.raises(OptimizerStateError, match="another optimizer"):
        checkpoint.load(store, keys, 1, 1, other, timeout=1.0)


# -- one real run: the exported chain, exchanged through the store, on the local platform ------

RUN_ITERATIONS = 4
RUN_MAX_NORM = 0.1
RUN_SCHEDULE = optax.warmup_cosine_decay_schedule(0.0, 0.01, warmup_steps=2, decay_steps=8)


def clip_then_adamw(learning_rate: float) -> optax.GradientTransformation:
    # eps well above float32 rounding: Adam divides each gradient by its own running scale,
    # which turns rounding in near-zero gradients into full-size steps (test_runtime.py)
    return optax.chain(optax.clip_by_global_norm(RUN_MAX_NORM),
                       optax.adamw(RUN_SCHEDULE, eps=1e-3, weight_decay=0.1))


def test_pipelined_training_with_clipping_and_adamw_equals_single_process_training(
        tmp_path, monkeypatch):
    from jaxpipe import models
    from jaxpipe.runtime import optim
    from jaxpipe.runtime.dataset import batch_indices
    from jaxpipe.runtime.driver import RunConfig
    from jaxpipe.runtime.train import TrainOptions, open_store, train
    from tests.jaxpipe.helpers import max_relative_error, reference
    from tests.jaxpipe.test_runtime import BATCH, PLAN
    from transports import codec

    # The workers never build the optimizer: they load the programs `prepare` exported. The
    # name exists only in this process, for `prepare` to find the optax object.
    monkeypatch.setitem(optim.OPTIMIZERS, "clip-adamw", clip_then_adamw)
    (tmp_path / "plan.json").write_text(json.dumps(PLAN.to_dict()))
    options = TrainOptions(
        model="mlp", plan_file=str(tmp_path / "plan.json"), batch=BATCH,
        iterations=RUN_ITERATIONS, optimizer="clip-adamw", store=str(tmp_path / "store"),
        job_id="clip-adamw", checkpoint_every=RUN_ITERATIONS,
        profile_cache=str(tmp_path / "profiles"), wait_timeout_s=60,
        run=RunConfig(log_dir=str(tmp_path / "logs")))
    summary = train(options, show_progress=False)
    store = open_store(str(tmp_path / "store"))
    got = {}
    for k in range(len(PLAN.stages)):
        key = f"jobs/clip-adamw/ckpt/{RUN_ITERATIONS:08d}/stage{k}/params"
        got.update(codec.decode(store.get(key), key=key))

    spec = models.get("mlp")
    params = spec.init(jax.random.PRNGKey(0))["params"]
    x, y, _, _ = models.digits()
    optimizer = clip_then_adamw(0.0)
    opt_state = optimizer.init(params)
    losses = []
    for t in range(RUN_ITERATIONS):
        idx = batch_indices(len(x), BATCH, 0, t)
        loss, grads, _ = reference(spec.module, {"params": params}, (x[idx], y[idx]),
                                   spec.loss_fn, jit=True)
        assert optax.tree.norm(grads) > 2 * RUN_MAX_NORM  # clipping binds every iteration
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        losses.append(float(loss))
    assert max_relative_error(nest(got, strip="params"), params) <= 1e-5
    np.testing.assert_allclose(summary.losses, losses, rtol=1e-5)
    assert not store.exists("jobs/clip-adamw/optimizer.zip")  # cleaned up with the bundle
    # every rank exchanged the partial sums through the store, every iteration
    from jaxpipe.runtime.metrics import RankMetrics
    for key in store.list("jobs/clip-adamw/metrics/rank"):
        spans = RankMetrics.from_dict(json.loads(store.get(key))).timeline
        assert sum(s.name == "EXCHANGE" for s in spans) == RUN_ITERATIONS, key
