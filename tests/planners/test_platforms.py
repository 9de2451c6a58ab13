"""Platform catalog and overrides."""

from __future__ import annotations

import json

import pytest

from planners import PlanError, platforms

from .conftest import hand_platform


def test_aws_cpu_share_is_proportional_to_memory_up_to_six() -> None:
    aws = platforms.get("aws-lambda")
    assert aws.cpus(1769) == pytest.approx(1.0)
    assert aws.cpus(3538) == pytest.approx(2.0)
    assert aws.cpus(10240) == pytest.approx(10240 / 1769) and aws.cpus(20000) == 6.0
    assert aws.memory_options_mb == (1024, 2048, 3072, 4096, 5120, 6144, 8192, 10240)
    assert aws.price_put == pytest.approx(5e-6) and aws.price_get == pytest.approx(4e-7)


def test_alibaba_uses_the_reference_compute_ratios() -> None:
    ali = platforms.get("alibaba-fc")
    assert [ali.cpus(m) for m in ali.memory_options_mb] == [0.1, 0.2, 0.4, 1.0]


def test_local_defaults_and_toml_and_json_overrides(tmp_path) -> None:
    local = platforms.get("local")
    assert local.cpus(4096) == 1.0 and local.request_latency_s == 0.02
    toml = tmp_path / "p.toml"
    toml.write_text("[platform]\nrequest_latency_s = 0.005\nmemory_options_mb = [512, 1024]\n")
    assert platforms.get("local", toml).request_latency_s == 0.005
    assert platforms.get("local", toml).memory_options_mb == (512, 1024)
    js = tmp_path / "p.json"
    js.write_text(json.dumps({"max_cpus": 2.0}))
    assert platforms.get("local", js).cpus(512) == 2.0


def test_unknown_platform_or_field_is_rejected(tmp_path) -> None:
    with pytest.raises(PlanError, match="choose one of"):
        platforms.get("azure")
    bad = tmp_path / "bad.json"
    bad.write_text('{"bandwith": 1}')
    with pytest.raises(PlanError, match="bandwith"):
        platforms.get("local", bad)


def test_price_methods_by_hand() -> None:
    plat = hand_platform(price_gb_second=1e-5, price_invocation=2e-7, price_put=5e-6,
                         price_get=4e-7, timeout_s=900.0)
    assert plat.compute_dollars(gigabytes=2.0, seconds=14.0) == pytest.approx(2.8e-4)
    assert plat.function_dollars(memory_mb=3072, seconds=10.0) == pytest.approx(3e-4)
    assert plat.invocation_dollars(5) == pytest.approx(1e-6)
    # 4 functions running 450 s, each handed over every 900 s: 2 invocations' worth
    assert plat.handover_invocation_dollars(4, 450.0) == pytest.approx(2 * 2e-7)
    assert plat.request_dollars(puts=3, gets=10) == pytest.approx(1.5e-5 + 4e-6)
