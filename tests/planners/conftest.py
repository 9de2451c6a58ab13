"""Shared small problems: hand-computable profiles and platforms."""

from __future__ import annotations

import pytest

from planners import LayerProfile, ModelProfile, Platform, Problem, synthetic

MIB = 1 << 20


def hand_platform(**kw: object) -> Platform:
    """1 CPU per function, 1 MB/s links, no latency, only GB-seconds priced."""
    base = {"name": "hand", "memory_options_mb": (1024, 2048), "mb_per_cpu": None,
            "max_cpus": 1.0, "uplink_bytes_per_s": 1e6, "downlink_bytes_per_s": 1e6,
            "request_latency_s": 0.0, "price_gb_second": 1e-5, "price_invocation": 0.0,
            "price_put": 0.0, "price_get": 0.0, "timeout_s": 900.0, "runtime_base_mb": 100.0,
            "safety_margin_mb": 50.0}
    return Platform(**(base | kw))


def hand_profile(layers: int = 2) -> ModelProfile:
    """Layers of 1 s forward and 2 s backward per sample, 1 MB boundaries, no parameters."""
    return ModelProfile("hand", tuple(
        LayerProfile(f"l{i}", 0, float(MIB), 1e6, 0.0, 1.0, 0.0, 2.0) for i in range(layers)),
        input_bytes_per_sample=1e6, reference_cpus=1.0)


def small_platform() -> Platform:
    """Three memory sizes with 1, 2, 3 CPUs; priced like a cloud."""
    return Platform(name="small", memory_options_mb=(1024, 2048, 3072), mb_per_cpu=1024.0,
                    max_cpus=3.0, uplink_bytes_per_s=50e6, downlink_bytes_per_s=50e6,
                    request_latency_s=0.01, price_gb_second=1.6e-5, price_invocation=2e-7,
                    price_put=5e-6, price_get=4e-7, timeout_s=900.0, runtime_base_mb=100.0,
                    safety_margin_mb=50.0)


def small_problem(seed: int = 0, layers: int = 3, dots: bool = False, **kw: object) -> Problem:
    """A random chain on ``small_platform``: B = 4, b in {1, 2}, d in {1, 2}, <= 4 functions;
    ``dots``: most layers have a dots-mode profile (``synthetic.random_profile``)."""
    base = {"global_batch": 4, "micro_batches": (1, 2), "replica_options": (1, 2),
            "max_functions": 4}
    return Problem(synthetic.random_profile(seed, layers, dots), small_platform(),
                   **(base | kw))


@pytest.fixture
def hand_problem() -> Problem:
    return Problem(hand_profile(), hand_platform(), global_batch=2, micro_batches=(1,),
                   replica_options=(1,), update_seconds_per_byte=0.0)
