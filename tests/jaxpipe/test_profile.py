"""`jaxpipe.profile.profile` measures every traced layer, with sizes a hand can check."""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpipe
from jaxpipe.cli import main as cli_main
from jaxpipe.errors import ProfileError
from jaxpipe.staging.profiling import profile
from planners.profile import ModelProfile
from tests.jaxpipe.helpers import Block, cross_entropy

# A three-layer chain of known widths: 8 inputs -> wide (Dense 32 + tanh)
# -> narrow (Dense 12 + tanh) -> head (Dense 4, the logits).
IN, WIDE, NARROW, CLASSES = 8, 32, 12, 4
F32, I32 = 4, 4  # bytes of a float32 activation and of an int32 target
SIZES = (1, 3)


class Chain(nn.Module):
    def setup(self):
        self.wide = Block(WIDE)
        self.narrow = Block(NARROW)
        self.head = nn.Dense(CLASSES)

    def __call__(self, x):
        return self.head(self.narrow(self.wide(x)))


@pytest.fixture(scope="module")
def chain():
    model = Chain()
    x = jax.random.normal(jax.random.PRNGKey(0), (4, IN))
    y = jnp.asarray(np.arange(4) % CLASSES, jnp.int32)
    variables = model.init(jax.random.PRNGKey(1), x)
    traced = jaxpipe.trace(model, variables, (x, y), cross_entropy)
    return traced, profile(traced, micro_batch_sizes=SIZES, repeats=2, name="chain")


def test_one_layer_profile_per_traced_layer_with_its_names_and_bytes(chain):
    traced, prof = chain
    assert prof.model == "chain"
    assert [la.name for la in prof.layers] == [la.name for la in traced.layers]
    assert [la.name for la in prof.layers] == ["wide", "narrow", "head"]
    assert [la.param_bytes for la in prof.layers] == [la.param_bytes for la in traced.layers]
    assert [la.param_bytes for la in prof.layers] == [
        (IN + 1) * WIDE * F32, (WIDE + 1) * NARROW * F32, (NARROW + 1) * CLASSES * F32]
    assert [la.boundary_bytes_per_sample for la in prof.layers] == [
        la.boundary_bytes_per_sample for la in traced.layers]
    # Across a cut go the activations and the targets; nothing crosses after the last layer.
    assert [la.boundary_bytes_per_sample for la in prof.layers] == [
        WIDE * F32 + I32, NARROW * F32 + I32, 0.0]
    assert prof.input_bytes_per_sample == IN * F32 + I32
    assert prof.meta["micro_batch_sizes"] == list(SIZES)


def test_dots_mode_keeps_only_the_matmul_input_and_output_and_times_its_backward(chain):
    _, prof = chain
    wide, narrow, head = prof.layers
    # Dense(d -> w) + tanh under dots_saveable: the input x and the matmul output x W + b (the
    # backward recomputes tanh from it), (d + w) floats per sample, less than stash keeps.
    for layer, (d, w) in ((wide, (IN, WIDE)), (narrow, (WIDE, NARROW))):
        assert layer.dots_stash_bytes_per_sample == pytest.approx((d + w) * F32), layer
        assert layer.dots_stash_bytes_per_sample < layer.stash_bytes_per_sample, layer
    for layer in prof.layers:
        assert layer.has_dots and sorted(layer.dots_bwd_seconds) == list(SIZES)
        assert all(t > 0 for t in layer.dots_bwd_seconds.values())
    assert ModelProfile.from_json(prof.to_json()) == prof
    assert head.has_dots


def test_times_are_positive_at_every_requested_micro_batch_size(chain):
    _, prof = chain
    for layer in prof.layers:
        assert sorted(layer.fwd_seconds) == sorted(layer.bwd_seconds) == list(SIZES)
        assert all(t > 0 for t in [*layer.fwd_seconds.values(), *layer.bwd_seconds.values()])
        assert min(layer.fwd_alpha, layer.fwd_beta, layer.bwd_alpha, layer.bwd_beta) >= 0
        assert layer.fwd_alpha + layer.fwd_beta > 0 and layer.bwd_alpha + layer.bwd_beta > 0


def test_stash_and_flops_per_sample_are_at_least_what_the_shapes_demand(chain):
    _, prof = chain
    wide, narrow, head = prof.layers
    # A Dense(d -> w) + tanh layer's backward needs its input x (for dW = x^T g) and its output
    # or pre-activation (for tanh'), per sample: (d + w) floats. The head needs its input.
    for layer, (d, w) in ((wide, (IN, WIDE)), (narrow, (WIDE, NARROW))):
        assert layer.stash_bytes_per_sample >= (d + w) * F32, layer
        assert layer.stash_bytes_per_sample <= 4 * (d + w) * F32, layer  # nothing absurd
        assert layer.flops_per_sample >= 2 * d * w, layer  # the matmul's multiply-adds
    assert head.stash_bytes_per_sample >= NARROW * F32
    assert head.flops_per_sample >= 2 * NARROW * CLASSES


def test_profile_round_trips_through_json(chain):
    _, prof = chain
    text = json.dumps(prof.to_dict())
    again = ModelProfile.from_dict(json.loads(text))
    assert again == prof
    assert again.layers[0].fwd_seconds == prof.layers[0].fwd_seconds  # int keys come back
    assert ModelProfile.from_json(prof.to_json()) == prof


def test_each_layer_gets_a_parallel_fraction_from_one_core_against_all(chain):
    traced, prof = chain
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        assert all(la.parallel_fraction is None for la in prof.layers)
        return
    assert all(0.0 <= la.parallel_fraction <= 1.0 for la in prof.layers)
    scaling = prof.meta["scaling"]
    assert scaling["cores"] == cores and scaling["micro_batch"] == max(SIZES)
    for la, sc in zip(prof.layers, scaling["layers"], strict=True):
        assert sc["parallel_fraction"] == la.parallel_fraction
        assert sc["method"] in ("wall", "cpu")
        assert sc["one_wall"] > 0 and sc["all_wall"] > 0 and sc["one_cpu_median"] > 0
    # the profile leaves every thread free to use every core again
    for tid in os.listdir("/proc/self/task"):
        assert os.sched_getaffinity(int(tid)) == os.sched_getaffinity(0)
    quick = profile(traced, micro_batch_sizes=(1,), repeats=1, name="chain", scaling=False)
    assert all(la.parallel_fraction is None for la in quick.layers)
    assert quick.meta["scaling"] is None


def test_pinned_to_one_core_the_process_runs_no_faster_than_one_core_allows():
    from jaxpipe.staging.scaling import measure_scaling

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs 2 cores")
    x = jnp.ones((1024, 1024), jnp.float32)
    f = jax.jit(lambda a: jnp.tanh(a @ a))
    sc = measure_scaling(lambda: f(x), cores, 3)
    # one core: CPU seconds cannot exceed wall seconds (5 % for reading the thread clocks)
    assert sc.one_cpu <= sc.one_wall * 1.05
    assert 0.0 <= sc.parallel_fraction <= 1.0 and sc.to_dict()["method"] == sc.method
    if os.geteuid() == 0:  # under SCHED_FIFO for the timed runs only
        measure_scaling(lambda: f(x), cores, 3, realtime=True)
        for tid in os.listdir("/proc/self/task"):
            assert os.sched_getscheduler(int(tid)) == os.SCHED_OTHER


@pytest.mark.parametrize("sizes", [(), (0,), (-1, 2), (2, 0), (1.5,), ("2",), 4])
def test_bad_micro_batch_sizes_raise_value_error(chain, sizes):
    traced, _ = chain
    with pytest.raises(ProfileError, match="micro_batch_sizes"):
        profile(traced, micro_batch_sizes=sizes)


def test_cli_profile_writes_a_loadable_profile(tmp_path, capsys):
    out = tmp_path / "profile.json"
    code = cli_main(["profile", "--model", "mlp-tiny", "--micro-batches", "1,2",
                     "--repeats", "1", "-o", str(out)])
    assert code == 0
    prof = ModelProfile.from_json(out.read_text())
    assert prof.model == "mlp-tiny"
    assert prof.num_layers == 3
    assert all(sorted(la.fwd_seconds) == [1, 2] for la in prof.layers)
    assert f"wrote {out}" in capsys.readouterr().out
