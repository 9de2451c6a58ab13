"""Stage checkpoints: what is saved is what is loaded, the `done` marker goes last, and the
latest complete checkpoint is the newest one every stage finished."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpipe.errors import OptimizerStateError
from jaxpipe.runtime import checkpoint, optim
from jaxpipe.runtime.job import Keys
from jaxpipe.runtime.optimizer import StageOptimizer, compile_optimizer, load_optimizer
from transports import GetTimeout, MemoryStore, codec

KEYS = Keys("ckpt-job")
PARTS = ("params", "opt", "state")


class RecordingStore(MemoryStore):
    """A MemoryStore that records the order of its puts."""

    def __init__(self) -> None:
        super().__init__()
        self.puts: list[str] = []

    def put(self, key: str, data: bytes) -> None:
        self.puts.append(key)
        super().put(key, data)


def stage_values(seed: int = 0) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    params = {
        "params/block1/Dense_0/kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
        "params/block1/Dense_0/bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32),
        "params/block1/scale": jnp.asarray(rng.normal(), jnp.float32),  # a 0-d leaf
    }
    state = {
        "batch_stats/block1/BatchNorm_0/mean": jnp.asarray(rng.normal(size=(4,)), jnp.float32),
        "batch_stats/block1/BatchNorm_0/var": jnp.asarray(rng.random(size=(4,)), jnp.float32),
    }
    return params, state


def stage_optimizer(name: str, params: dict) -> StageOptimizer:
    """The exported programs of optimizer `name` for one stage holding `params`."""
    return load_optimizer(compile_optimizer(optim.make(name, 0.1), [params]).export(), 0)


def trained(name: str, params: dict) -> tuple:
    """An optimizer and its state after two steps, so no state leaf is at its initial value."""
    optimizer = stage_optimizer(name, params)
    state = optimizer.init(params)
    for k in range(2):
        grads = {p: jnp.full_like(v, 0.5 + k) for p, v in params.items()}
        params, state = optimizer.update(grads, state, params)
    return optimizer, params, state


def assert_trees_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert np.asarray(a).dtype == np.asarray(e).dtype
        assert np.shape(a) == np.shape(e)
        np.testing.assert_array_equal(a, e)


def write_complete(store, t: int, stages: int) -> None:
    params, state = stage_values()
    optimizer = optim.make("sgd", 0.1)
    for k in range(stages):
        checkpoint.save(store, KEYS, t, k, params, optimizer.init(params), state)


# -- save and load ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_a_checkpoint_loads_back_exactly_what_was_saved(name):
    store = MemoryStore()
    optimizer, params, opt_state = trained(name, stage_values()[0])
    state = stage_values()[1]
    checkpoint.save(store, KEYS, 7, 1, params, opt_state, state)
    got_params, got_opt, got_state = checkpoint.load(store, KEYS, 7, 1, optimizer, timeout=1.0)
    assert list(got_params) == list(params)
    assert_trees_equal(got_params, params)
    assert_trees_equal(got_opt, opt_state)
    assert_trees_equal(got_state, state)


def test_a_stage_without_state_round_trips_an_empty_state():
    store = MemoryStore()
    optimizer, params, opt_state = trained("momentum", stage_values()[0])
    checkpoint.save(store, KEYS, 0, 0, params, opt_state, {})
    _, _, state = checkpoint.load(store, KEYS, 0, 0, optimizer, timeout=1.0)
    assert state == {}


def test_the_parts_go_to_their_keys_and_the_done_marker_goes_last():
    store = RecordingStore()
    optimizer, params, opt_state = trained("adam", stage_values()[0])
    checkpoint.save(store, KEYS, 3, 2, params, opt_state, stage_values()[1])
    assert sorted(store.puts[:-1]) == sorted(KEYS.checkpoint(3, 2, p) for p in PARTS)
    assert store.puts[-1] == KEYS.checkpoint(3, 2, "done")
    # the parts are codec objects of path-named arrays
    assert sorted(codec.decode(store.get(KEYS.checkpoint(3, 2, "params")))) == sorted(params)
    assert set(codec.decode(store.get(KEYS.checkpoint(3, 2, "opt")))) == set(
        optim.state_to_leaves(opt_state))


def test_checkpoints_of_other_iterations_and_stages_are_apart():
    store = MemoryStore()
    optimizer = stage_optimizer("sgd", stage_values()[0])
    first, second = stage_values(1)[0], stage_values(2)[0]
    checkpoint.save(store, KEYS, 1, 0, first, optimizer.init(first), {})
    checkpoint.save(store, KEYS, 2, 0, second, optimizer.init(second), {})
    checkpoint.save(store, KEYS, 1, 1, second, optimizer.init(second), {})
    assert_trees_equal(checkpoint.load(store, KEYS, 1, 0, optimizer, 1.0)[0], first)
    assert_trees_equal(checkpoint.load(store, KEYS, 2, 0, optimizer, 1.0)[0], second)
    assert_trees_equal(checkpoint.load(store, KEYS, 1, 1, optimizer, 1.0)[0], second)


def test_loading_with_another_optimizer_is_refused():
    store = MemoryStore()
    _, params, opt_state = trained("momentum", stage_values()[0])
    checkpoint.save(store, KEYS, 0, 0, params, opt_state, {})
    with pytest.raises(OptimizerStateError):
        checkpoint.load(store, KEYS, 0, 0, stage_optimizer("adam", params), timeout=1.0)


def test_loading_a_missing_checkpoint_times_out_naming_the_key():
    with pytest.raises(GetTimeout, match="ckpt/00000004/stage0/params"):
        checkpoint.load(MemoryStore(), KEYS, 4, 0, stage_optimizer("sgd", stage_values()[0]),
                        timeout=0.05)


def test_the_initial_checkpoint_gives_each_stage_its_slice_and_a_fresh_optimizer():
    store = MemoryStore()
    params, state = stage_values()
    more = {"params/head/kernel": jnp.ones((4, 2), jnp.float32)}
    all_params = {**params, **more}
    stages = [(list(params), list(state)), (list(more), [])]
    programs = compile_optimizer(optim.make("adam", 0.1), [params, more])
    checkpoint.save_initial(store, KEYS, stages, all_params, state, programs)
    assert checkpoint.latest_complete(store, KEYS, 2) == 0
    for k, (param_paths, state_paths) in enumerate(stages):
        optimizer = load_optimizer(programs.export(), k)
        got_params, got_opt, got_state = checkpoint.load(store, KEYS, 0, k, optimizer, 1.0)
        assert_trees_equal(got_params, {p: all_params[p] for p in param_paths})
        assert_trees_equal(got_state, {p: state[p] for p in state_paths})
        assert_trees_equal(got_opt, optimizer.init({p: all_params[p] for p in param_paths}))


# -- latest_complete -------------------------------------------------------------------------

def test_no_checkpoint_means_none():
    assert checkpoint.latest_complete(MemoryStore(), KEYS, 2) is None


def test_the_newest_checkpoint_every_stage_finished_is_chosen():
    store = MemoryStore()
    write_complete(store, 0, 3)
    write_complete(store, 5, 3)
    assert checkpoint.latest_complete(store, KEYS, 3) == 5


def test_a_checkpoint_missing_a_stage_marker_is_ignored():
    store = MemoryStore()
    write_complete(store, 0, 3)
    write_complete(store, 5, 3)
    write_complete(store, 10, 3)
    store.delete(KEYS.checkpoint(10, 1, "done"))  # stage 1 crashed before its marker
    assert checkpoint.latest_complete(store, KEYS, 3) == 5


def test_a_checkpoint_with_too_few_stages_is_ignored():
    store = MemoryStore()
    write_complete(store, 2, 3)
    write_complete(store, 4, 2)  # stage 2 never wrote anything
    assert checkpoint.latest_complete(store, KEYS, 3) == 2


def test_parts_without_a_marker_do_not_make_a_checkpoint():
    store = MemoryStore()
    write_complete(store, 1, 2)
    params, state = stage_values()
    for k in range(2):
        for part, value in (("params", params), ("opt", {}), ("state", state)):
            store.put(KEYS.checkpoint(8, k, part),
                      codec.encode({p: np.asarray(v) for p, v in value.items()}))
    assert checkpoint.latest_complete(store, KEYS, 2) == 1


def test_iterations_compare_as_numbers_and_stages_past_nine_count():
    store = MemoryStore()
    for t in (9, 10, 100):
        for k in range(12):
            store.put(KEYS.checkpoint(t, k, "done"), b"{}")
    store.delete(KEYS.checkpoint(100, 11, "done"))
    assert checkpoint.latest_complete(store, KEYS, 12) == 10


def test_checkpoints_of_another_job_are_not_seen():
    store = MemoryStore()
    other = Keys(KEYS.job_id + "-2")  # its prefix extends this job's id
    for k in range(2):
        store.put(other.checkpoint(9, k, "done"), b"{}")
    assert checkpoint.latest_complete(store, KEYS, 2) is None
    write_complete(store, 3, 2)
    assert checkpoint.latest_complete(store, KEYS, 2) == 3
    assert checkpoint.latest_complete(store, other, 2) == 9
