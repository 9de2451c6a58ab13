"""Tests of the model zoo: the registry, the layer contract the splitter relies on, sizes, data.

Tiny configs only run; full configs are only sized, through `jax.eval_shape`, never allocated.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpipe import models
from jaxpipe.errors import ModelConfigError, UnknownModelError
from jaxpipe.models.data import digits

# XLA's backend optimisations dominate compile time for these small programs and buy nothing.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}

FAMILIES = ("mlp", "resnet18", "resnet50", "resnet101", "amoebanet18", "amoebanet36",
            "bert-base", "bert-large")
TINY = tuple(f"{f}-tiny" for f in FAMILIES)
# Families shaped like Flax code in the wild (nested, scanned, NNX); their layer contract is
# JaxPipe's own: tests/jaxpipe/test_nested.py, test_scan.py, test_nnx.py.
NEW_FAMILIES = ("lm", "lm-scan", "nnx-cnn", "nnx-lm")

# name -> top-level layers, in execution order (pipeline cut units).
EXPECTED_TINY_LAYERS = {
    "mlp-tiny": ["hidden1", "hidden2", "head"],
    "resnet18-tiny": ["stem", "layer1_block1", "layer2_block1", "layer3_block1",
                      "layer4_block1", "head"],
    "resnet50-tiny": ["stem", "layer1_block1", "layer2_block1", "layer3_block1",
                      "layer4_block1", "head"],
    "resnet101-tiny": ["stem", "layer1_block1", "layer2_block1", "layer3_block1",
                       "layer3_block2", "layer4_block1", "head"],
    "amoebanet18-tiny": ["stem1", "stem2", "stem3", "cell1_normal1", "cell2_reduction",
                         "cell3_normal1", "cell4_reduction", "cell5_normal1", "classify"],
    "amoebanet36-tiny": ["stem1", "stem2", "stem3", "cell1_normal1", "cell1_normal2",
                         "cell2_reduction", "cell3_normal1", "cell3_normal2",
                         "cell4_reduction", "cell5_normal1", "cell5_normal2", "classify"],
    "bert-base-tiny": ["embeddings", "layer1", "layer2", "head"],
    "bert-large-tiny": ["embeddings", "layer1", "layer2", "layer3", "head"],
}

# name -> (top-level layers, parameter count). ResNet counts are torchvision's exactly; BERT's
# are Hugging Face BertModel + a 2-class classifier (papers: 110M / 340M); AmoebaNet-D(18, 208)
# gives 81.5M where GPipe's Table 1 reports 82M, which pins down the (18, 256) / (36, 256) counts.
EXPECTED_FULL = {
    "mlp": (4, 150_794),
    "resnet18": (10, 11_689_512),
    "resnet50": (18, 25_557_032),
    "resnet101": (35, 44_549_160),
    "amoebanet18": (24, 122_470_120),
    "amoebanet36": (42, 236_194_024),
    "bert-base": (14, 109_483_778),
    "bert-large": (26, 335_143_938),
}


def _count(tree: object) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _top_level(eqn: object) -> str | None:
    """The top-level module an equation belongs to: ``Model/<layer>/...`` -> ``<layer>``."""
    parts = str(eqn.source_info.name_stack).split("/")  # type: ignore[attr-defined]
    return parts[1] if len(parts) >= 2 else None


@functools.cache
def _built(name: str) -> tuple[models.ModelSpec, dict, tuple]:
    """The spec, variables and a batch of 3 of a registered model; built once per session."""
    spec = models.get(name)
    variables = spec.init(jax.random.key(0), batch_size=2)
    batch = spec.make_batch(jax.random.key(1), 3)
    return spec, variables, batch


@pytest.fixture(params=TINY)
def tiny(request: pytest.FixtureRequest) -> tuple[models.ModelSpec, dict, tuple]:
    return _built(request.param)


def test_names_are_every_family_in_full_and_tiny_config() -> None:
    assert models.names() == tuple(n for f in FAMILIES + NEW_FAMILIES for n in (f, f"{f}-tiny"))


def test_unknown_name_and_unknown_override_are_refused_with_the_valid_choices() -> None:
    with pytest.raises(UnknownModelError, match="registered: mlp, mlp-tiny"):
        models.get("resnet152")
    with pytest.raises(ModelConfigError, match="AmoebaNetConfig has num_layers, filters"):
        models.get("amoebanet18", filter=64)


def test_overrides_reach_the_config_and_the_input_spec() -> None:
    assert models.get("amoebanet18", filters=64).module.filters == 64
    bert = models.get("bert-base", seq_len=64)
    assert [s.shape for s in bert.input_spec] == [(64,), (64,)]
    assert models.get("resnet50", image_size=64).input_spec.shape == (64, 64, 3)


def test_tiny_model_runs_in_train_and_eval_mode_with_logits_of_batch_by_classes(tiny) -> None:
    spec, variables, (inputs, targets) = tiny
    assert set(variables) == ({"params", "batch_stats"} if spec.has_state else {"params"})
    rngs = spec.rngs(jax.random.key(2))

    @jax.jit(compiler_options=_FAST_COMPILE)
    def run(variables, inputs, rngs):
        train, state = spec.module.apply(variables, inputs, rngs=rngs, mutable=["batch_stats"])
        evaluation = spec.module.clone(train=False).apply(variables, inputs)
        return train, state, evaluation, spec.loss_fn(train, targets)

    train, state, evaluation, loss = run(variables, inputs, rngs)
    assert train.shape == evaluation.shape == (3, spec.num_classes)
    assert np.isfinite(np.asarray(train)).all() and np.isfinite(np.asarray(evaluation)).all()
    assert np.isfinite(float(loss))
    # Training mode draws from the dropout stream iff the spec says so.
    redrawn = run(variables, inputs, spec.rngs(jax.random.key(5)))[0]
    assert np.allclose(train, redrawn) != spec.uses_dropout
    if spec.has_state:  # a training step moves the running statistics
        assert jax.tree.structure(state["batch_stats"]) == jax.tree.structure(
            variables["batch_stats"])
        moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state["batch_stats"],
                             variables["batch_stats"])
        assert any(jax.tree.leaves(moved))
    else:
        assert dict(state) == {}


def test_every_equation_of_forward_and_loss_is_in_one_top_level_layer_run(tiny) -> None:
    spec, variables, (inputs, targets) = tiny
    rngs = spec.rngs(jax.random.key(2))

    def loss(variables, inputs, targets):
        out, _ = spec.module.apply(variables, inputs, rngs=rngs, mutable=["batch_stats"])
        return spec.loss_fn(out, targets)

    eqns = jax.make_jaxpr(loss)(variables, inputs, targets).jaxpr.eqns
    n_loss = len(jax.make_jaxpr(spec.loss_fn)(
        jax.ShapeDtypeStruct((3, spec.num_classes), jnp.float32), targets).jaxpr.eqns)
    forward, tail = eqns[:-n_loss], eqns[-n_loss:]

    # No glue: every forward equation sits under a top-level module; only the loss does not.
    assert all(_top_level(e) is not None for e in forward)
    assert all(_top_level(e) is None for e in tail)

    # The layers appear in the expected order, each as ONE contiguous run of equations.
    names = [_top_level(e) for e in forward]
    runs = [name for i, name in enumerate(names) if i == 0 or name != names[i - 1]]
    assert runs == EXPECTED_TINY_LAYERS[spec.name]


def test_make_batch_matches_the_input_spec_and_draws_valid_targets(tiny) -> None:
    spec, _, (inputs, targets) = tiny
    shapes = jax.tree.map(lambda a: (a.shape, a.dtype), inputs)
    expected = jax.tree.map(lambda s: ((3, *s.shape), s.dtype), spec.input_spec)
    assert shapes == expected
    assert targets.shape == (3,) and targets.dtype == jnp.int32
    assert bool(jnp.all((targets >= 0) & (targets < spec.num_classes)))


def test_bert_mask_is_a_nonempty_prefix_and_padding_does_not_change_the_logits() -> None:
    spec, variables, _ = _built("bert-base-tiny")
    (ids, mask), _ = spec.make_batch(jax.random.key(3), 8)
    lengths = mask.sum(axis=1)
    assert bool(jnp.all(lengths >= 1))
    assert bool(jnp.all(mask == (jnp.arange(16)[None, :] < lengths[:, None])))
    assert bool(jnp.all(ids[mask == 0] == 0))

    apply = jax.jit(spec.module.clone(train=False).apply, compiler_options=_FAST_COMPILE)
    other_padding = jnp.where(mask == 1, ids, 7)
    a = apply(variables, (ids, mask))
    b = apply(variables, (other_padding, mask))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a, apply(variables, (ids + 1, mask)))  # the real tokens do matter


def test_loss_of_uniform_logits_is_log_num_classes() -> None:
    spec = models.get("mlp-tiny")
    loss = spec.loss_fn(jnp.zeros((4, 10)), jnp.array([0, 3, 5, 9]))
    assert float(loss) == pytest.approx(math.log(10), rel=1e-6)


@pytest.mark.parametrize("name", list(EXPECTED_FULL))
def test_full_config_has_the_published_layer_and_parameter_count(name: str) -> None:
    spec = models.get(name)
    variables = jax.eval_shape(spec.init, jax.random.key(0))
    layers, params = EXPECTED_FULL[name]
    assert len(variables["params"]) == layers
    assert _count(variables["params"]) == params


def test_amoebanet_d_18_208_has_gpipes_82m_parameters() -> None:
    # GPipe (Huang et al., 2019), Table 1, "Naive-1": AmoebaNet-D (L=6 per group, D=208), 82M.
    spec = models.get("amoebanet18", filters=208)
    count = _count(jax.eval_shape(spec.init, jax.random.key(0))["params"])
    assert count == pytest.approx(82e6, rel=0.01)


def test_digits_is_a_deterministic_standardised_stratified_split() -> None:
    x_train, y_train, x_test, y_test = digits()
    assert x_train.shape == (1438, 64) and x_test.shape == (359, 64)
    assert (x_train.dtype, y_train.dtype) == (np.float32, np.int32)
    assert set(np.unique(y_train)) == set(np.unique(y_test)) == set(range(10))
    np.testing.assert_allclose(x_train.mean(axis=0), 0.0, atol=1e-5)
    assert np.all((np.abs(x_train.std(axis=0) - 1) < 1e-4) | (x_train.std(axis=0) == 0))
    again = digits()
    assert all(np.array_equal(a, b) for a, b in zip((x_train, y_train, x_test, y_test), again))
