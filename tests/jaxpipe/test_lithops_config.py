"""Lithops configs and runtime steps, checked by Lithops' own loader and CLI parser, and every
refusal of `--platform lithops` before any call (no JAX, no server: fast)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
import yaml

from jaxpipe.deploy import lithops as deploy
from jaxpipe.errors import (
    LithopsConfigError,
    LithopsMemoryError,
    LithopsStorageError,
    LithopsWorkersError,
)
from jaxpipe.runtime import lithops_job
from jaxpipe.runtime.options import TrainOptions
from jaxpipe.runtime.platforms import lithops_config
from planners import Plan, StagePlan

CLOUDS = ("aws_lambda", "aliyun_fc", "gcp_functions")


def write(tmp_path: Path, config: dict, name: str = "lithops.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize("backend, catalog, limit", [
    ("aws_lambda", "aws-lambda", 895.0), ("aliyun_fc", "alibaba-fc", 595.0),
    ("gcp_functions", None, 595.0)])
def test_generated_configs_pass_lithops_own_loader(tmp_path, backend, catalog, limit):
    config = deploy.config_template(backend, "jaxpipe-jobs", "eu-west-1", timeout_s=900
                                    if backend == "aws_lambda" else 600)
    settings = lithops_config.load_settings(write(tmp_path, config))
    assert (settings.backend, settings.mode, settings.catalog) == (backend, "serverless", catalog)
    assert settings.runtime == deploy.runtime_name(backend)
    assert settings.call_timeout_s == limit  # Lithops gives a call runtime_timeout - 5 s
    if catalog is not None:
        platform = lithops_config.job_platform(settings, None)
        assert platform.name == catalog and platform.timeout_s == min(limit, platform.timeout_s)


@pytest.mark.parametrize("backend", CLOUDS)
def test_runtime_steps_parse_with_lithops_own_cli_and_run_once(tmp_path, backend, monkeypatch):
    from lithops.scripts.cli import lithops_cli

    config = write(tmp_path, deploy.config_template(backend, "jaxpipe-jobs", "eu-west-1"))
    steps = deploy.steps(backend, config, [1024, 2048, 1024], 595, root=tmp_path)
    commands = [s for s in steps if s.command and s.command[0] == "lithops"]
    assert [c.command[2] for c in commands] == ["build", "deploy", "deploy"]  # one per size
    containers = backend not in deploy.FROM_REQUIREMENTS
    assert [s.command[:2] for s in steps if s.command and s.command[0] == "docker"] == (
        [("docker", "build")] if containers else [])
    log = tmp_path / "calls.log"  # stand-ins for `lithops` and `docker` that log their arguments
    for tool in ("lithops", "docker"):
        fake = tmp_path / "bin" / tool
        fake.parent.mkdir(exist_ok=True)
        fake.write_text(f"#!/bin/sh\necho {tool} \"$@\" >> {log}\n")
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    state = tmp_path / "state.json"
    first = deploy.run(steps, state, root=tmp_path)
    assert all(c.action in ("created", "done") for c in first)
    runtime = lithops_cli.commands["runtime"]
    monkeypatch.chdir(tmp_path)  # the commands run from the root, as the docker context
    for step in commands:  # the files exist now, as the Path(exists=True) options need
        sub = runtime.commands[step.command[2]]  # pyright: ignore[reportAttributeAccessIssue]
        sub.make_context(step.command[2], list(step.command[3:]))
    again = deploy.run(steps, state, root=tmp_path)
    assert {c.action for c in again} == {"unchanged"}
    ran = [s for s in steps if s.command]
    assert len(log.read_text().splitlines()) == len(ran)  # the second run ran nothing
    if containers:  # the runtime starts from the base image, which holds the pinned JaxPipe
        runtime_file = tmp_path / "deploy" / "lithops" / backend / "Dockerfile"
        assert runtime_file.read_text().startswith(f"FROM {deploy.base_image()}\n")
        texts = (tmp_path / "deploy" / "lithops" / "constraints.txt").read_text()
    else:
        texts = (tmp_path / "deploy" / "lithops" / backend / "requirements.txt").read_text()
    assert "jax==" in texts and "lithops==3.8.0" in texts


def test_localhost_needs_no_runtime(tmp_path):
    assert deploy.steps("localhost", "x.yaml", [1024], 600) == []
    config = deploy.config_template("localhost", "jaxpipe-jobs")
    settings = lithops_config.load_settings(write(tmp_path, config))
    assert settings.mode == "localhost" and settings.runtime == sys.executable


@pytest.mark.parametrize("config, message", [
    (None, "needs --lithops-config"),
    ("missing.yaml", "does not exist"),
    ("{not yaml", "is not YAML"),
    ({"aws_lambda": {}}, "no `lithops.backend`"),
    ({"lithops": {"backend": "localhost"}, "localhost": {}}, "needs `worker_processes`"),
    ({"lithops": {"backend": "aws_lambda", "storage": "aws_s3"}, "aws": {"region": "x"},
      "aws_lambda": {"runtime": "r"}, "aws_s3": {"storage_bucket": "b"}},
     "loader refuses.*execution_role"),
    ({"lithops": {"backend": "aws_ec2", "storage": "aws_s3"}, "aws": {"region": "x"},
      "aws_ec2": {"region": "x"}, "aws_s3": {"storage_bucket": "b"}},
     "loader refuses|standalone mode"),
])
def test_a_bad_config_is_refused_with_the_reason(tmp_path, config, message):
    if isinstance(config, dict):
        path = write(tmp_path, config)
    elif config == "{not yaml":
        path = str(tmp_path / "bad.yaml")
        Path(path).write_text("{not yaml")
    else:
        path = None if config is None else str(tmp_path / config)
    with pytest.raises(LithopsConfigError, match=message):
        lithops_config.load_settings(path)


def test_a_config_without_a_runtime_is_refused_for_a_cloud(tmp_path):
    config = deploy.config_template("aliyun_fc", "b", "cn-hangzhou")
    del config["aliyun_fc"]["runtime"]
    options = TrainOptions(platform="lithops", lithops_config=write(tmp_path, config))
    with pytest.raises(LithopsConfigError, match="no `runtime`.*jaxpipe deploy lithops"):
        lithops_job.job_platform(options)


def test_a_machine_without_the_clouds_sdk_is_told_which_extra_to_install(tmp_path):
    config = deploy.config_template("aliyun_fc", "b", "cn-hangzhou")
    options = TrainOptions(platform="lithops", lithops_config=write(tmp_path, config))
    if lithops_config.missing_client(lithops_job.settings(options)) is None:
        pytest.skip("lithops[aliyun] is installed here")
    with pytest.raises(LithopsConfigError, match=r"pip install 'lithops\[aliyun\]'"):
        lithops_job.job_platform(options)


def test_a_backend_without_a_catalog_needs_a_platform_file(tmp_path):
    settings = lithops_config.load_settings(
        write(tmp_path, deploy.config_template("gcp_functions", "b", "europe-west1")))
    with pytest.raises(LithopsConfigError, match="no catalog entry.*--platform-file"):
        lithops_config.job_platform(settings, None)


@pytest.mark.parametrize("backend, sizes, refused", [
    ("gcp_functions", [1024, 3072], "one of \\[128, .*\\[3072\\] MB"),
    ("aws_lambda", [1024, 20480], "128-10240 MB.*\\[20480\\]"),
    ("aliyun_fc", [1000], "multiple of 64 MB.*\\[1000\\]"),
])
def test_memory_the_backend_cannot_give_is_refused(tmp_path, backend, sizes, refused):
    settings = lithops_config.load_settings(
        write(tmp_path, deploy.config_template(backend, "b", "eu-west-1")))
    with pytest.raises(LithopsMemoryError, match=refused):
        lithops_config.check_memory(settings, sizes)
    lithops_config.check_memory(settings, [1024])  # and a size it can


def test_the_plan_is_checked_against_the_backend_and_localhost_workers(tmp_path):
    plan = Plan((StagePlan(0, 0, 1024, 2), StagePlan(1, 1, 3072)), micro_batch=1,
                global_batch=2)
    gcp = write(tmp_path, deploy.config_template("gcp_functions", "b", "europe-west1"), "g.yaml")
    with pytest.raises(LithopsMemoryError):
        lithops_job.check_plan(TrainOptions(platform="lithops", lithops_config=gcp), plan)
    local = deploy.config_template("localhost", "b")
    local["localhost"]["worker_processes"] = 2
    path = write(tmp_path, local, "l.yaml")
    with pytest.raises(LithopsWorkersError, match="worker_processes is 2.*3 functions"):
        lithops_job.check_plan(TrainOptions(platform="lithops", lithops_config=path), plan)


def test_the_job_store_must_have_an_s3_api_and_be_reachable(tmp_path):
    aliyun = write(tmp_path, deploy.config_template("aliyun_fc", "jobs", "cn-hangzhou"), "a.yaml")
    derived = lithops_job.resolve(TrainOptions(platform="lithops", lithops_config=aliyun))
    assert (derived.store, derived.endpoint_url) == ("s3://jobs",
                                                     "https://s3.oss-cn-hangzhou.aliyuncs.com")
    given = lithops_job.resolve(TrainOptions(platform="lithops", lithops_config=aliyun,
                                             store="s3://mine", endpoint_url="http://x"))
    assert (given.store, given.endpoint_url) == ("s3://mine", "http://x")
    with pytest.raises(LithopsStorageError, match="cannot see this machine's disk"):
        lithops_job.resolve(TrainOptions(platform="lithops", lithops_config=aliyun,
                                         store=str(tmp_path)))
    gcp = write(tmp_path, deploy.config_template("gcp_functions", "b", "europe-west1"), "g.yaml")
    with pytest.raises(LithopsStorageError, match="no S3 API"):
        lithops_job.resolve(TrainOptions(platform="lithops", lithops_config=gcp))
    local = write(tmp_path, deploy.config_template("localhost", "b"), "l.yaml")
    here = lithops_job.resolve(TrainOptions(platform="lithops", lithops_config=local))
    assert here.store == TrainOptions().store  # localhost calls share this disk


def test_deploy_prints_the_steps_and_runs_them_only_with_run(tmp_path, monkeypatch, capsys):
    from jaxpipe.cli import main

    log = tmp_path / "calls.log"
    for tool in ("lithops", "docker"):
        fake = tmp_path / "bin" / tool
        fake.parent.mkdir(exist_ok=True)
        fake.write_text(f"#!/bin/sh\necho {tool} \"$@\" >> {log}\n")
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(deploy, "REPO", tmp_path)  # the files go under the root
    monkeypatch.chdir(tmp_path)  # and the state file under .jaxpipe/ here
    config = write(tmp_path, deploy.config_template("aws_lambda", "b", "eu-west-1"))
    argv = ["deploy", "lithops", "--lithops-config", config, "--memory", "1024,2048"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "lithops runtime deploy" in printed and not log.exists()  # printed, not run
    assert (tmp_path / "deploy" / "lithops" / "aws_lambda" / "Dockerfile").exists()
    assert main([*argv, "--run"]) == 0
    assert len(log.read_text().splitlines()) == 4  # docker build, lithops build, 2 deploys
    assert main([*argv, "--run"]) == 0
    assert len(log.read_text().splitlines()) == 4  # done before: nothing runs again
