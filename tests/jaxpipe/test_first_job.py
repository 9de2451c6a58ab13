"""The default job (`jaxpipe.runtime.first_job`): `jaxpipe train --platform local` without
flags trains the DigitsCNN, and the planner's own, unforced plan for it, from the shipped
profile on the local catalog, is a pipeline of 3 stages whose first is replicated; the run
learns and prints the plan table with the planner's comparison before the launch and where
the job's report is at the end.

The shipped profile is the one `jaxpipe train` plans the default job from; a run does not
profile (its profile cache stays empty), so it plans on the same numbers however loaded the
test machine is.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from jaxpipe.cli import _add_train_arguments, main  # pyright: ignore[reportPrivateUsage]
from jaxpipe.models.data import digit_images
from jaxpipe.runtime import first_job
from jaxpipe.runtime.options import TrainOptions
from jaxpipe.runtime.planning import profile_sizes
from jaxpipe.runtime.report import read_job
from jaxpipe.runtime.train import open_store
from jaxpipe.runtime.train_command import job_defaults
from planners import ModelProfile, Plan, Problem, platforms
from planners import plan as make_plan

RESNET_PROFILE = Path(__file__).parent / "data" / "resnet18-digits-profile.json"
DIGITS_CNN_LAYERS = ["conv1", "conv2", "conv3", "conv4", "dense1", "dense2", "head"]


def _problem(profile: Path = first_job.PROFILE, image_size: int = 32,
             platform: str = first_job.PLATFORM, batch: int = first_job.BATCH) -> Problem:
    """The problem `jaxpipe train` plans the job with (`planning.planning_problem`): Adam's
    two slots, the CLI's function limit, and the training set held by stage 0."""
    prof = ModelProfile.from_dict(json.loads(profile.read_text()))
    x, y, _, _ = digit_images(image_size)
    return Problem(profile=prof, platform=platforms.get(platform), global_batch=batch,
                   micro_batches=profile_sizes(batch), replica_options=(1, 2, 4),
                   max_functions=TrainOptions().max_functions, optimizer_slots=2,
                   cached_input_bytes=float(x.nbytes + y.nbytes))


def _assert_pipelines(plan: Plan) -> None:
    """At least 3 stages, a replicated one, and only the weight-light convolutions replicated
    (the Dense layers' 34 MB each never all-reduced)."""
    assert len(plan.stages) >= 3, plan.stages
    assert any(s.replicas > 1 for s in plan.stages), plan.stages
    dense = {DIGITS_CNN_LAYERS.index("dense1"), DIGITS_CNN_LAYERS.index("dense2")}
    for s in plan.stages:
        if s.replicas > 1:
            assert not dense & set(range(s.first_layer, s.last_layer + 1)), plan.stages


def test_the_default_jobs_plan_is_a_replicated_pipeline() -> None:
    layers = json.loads(first_job.PROFILE.read_text())["meta"]["layer_names"]
    assert layers == DIGITS_CNN_LAYERS
    problem = _problem()
    chosen = make_plan(problem, "miqp")
    _assert_pipelines(chosen)
    one = make_plan(dataclasses.replace(problem, max_functions=1), "miqp")
    assert chosen.objective_or_inf < one.objective_or_inf
    assert chosen.iteration_seconds is not None and one.iteration_seconds is not None
    assert chosen.iteration_seconds < one.iteration_seconds


def _train_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    _add_train_arguments(parser)
    return job_defaults(parser.parse_args(argv))


def test_the_cli_defaults_are_the_default_job() -> None:
    args = _train_args(["--platform", "local"])
    assert (args.model, args.batch, args.iterations, args.learning_rate, args.platform) == (
        first_job.MODEL, first_job.BATCH, first_job.ITERATIONS, first_job.LEARNING_RATE,
        first_job.PLATFORM)
    mlp = _train_args(["--model", "mlp"])
    d = TrainOptions()
    assert (mlp.batch, mlp.iterations, mlp.learning_rate) == (d.batch, None, d.learning_rate)
    sizes = profile_sizes(first_job.BATCH)
    assert first_job.shipped_profile(first_job.MODEL, {}, sizes) == first_job.PROFILE
    assert first_job.shipped_profile(first_job.MODEL, {"hidden": [64]}, sizes) is None
    assert first_job.shipped_profile("mlp", {}, sizes) is None


def test_the_comparison_is_the_planners_own() -> None:
    problem = _problem()
    chosen = make_plan(problem, "miqp")
    one = make_plan(dataclasses.replace(problem, max_functions=1), "miqp")
    lines = first_job.comparison(problem, chosen).splitlines()
    assert [line.split("  ")[1].strip() for line in lines] == [
        "this plan", "one function alone", "data parallel (1 stage)"]
    assert f"{one.iteration_seconds:8.3f} s" in lines[1]


def test_the_resnet_on_small_functions_stays_on_one_function() -> None:
    """`resnet18-digits` on `local-small` (first_job's docstring): its convolutions at 16x16
    are too cheap to pay for a pipeline's transfers."""
    problem = _problem(RESNET_PROFILE, 16, "local-small", 32)
    assert len(make_plan(problem, "miqp").stages) == 1


def test_digit_images_are_the_digits_upsampled() -> None:
    x, y, x_test, y_test = digit_images(16)
    assert x.shape == (1438, 16, 16, 3) and x_test.shape == (359, 16, 16, 3)
    assert (x[:, ::2, ::2, 0] == x[:, 1::2, 1::2, 2]).all() and set(y) == set(range(10))


def test_the_default_job_learns_and_says_where_its_report_is(tmp_path, capsys,
                                                              monkeypatch) -> None:
    """16 iterations of the default job as `jaxpipe train --platform local` runs them
    (planned by the MIQP from the shipped profile, on local's emulated links): the plan is
    the pipeline, the loss halves, the test accuracy is far above chance (10 %)."""
    monkeypatch.chdir(tmp_path)
    store, profiles = str(tmp_path / "store"), tmp_path / "profiles"
    assert main(["train", "--platform", "local", "--iterations", "16", "--store", store,
                 "--job-id", "first", "--profile-cache", str(profiles)]) == 0
    out = capsys.readouterr().out
    assert out.index("headroom MB") < out.index("the planner's comparison") < out.index(
        "job first (starting")  # the plan table and the comparison, before the launch
    assert "one function alone" in out and "eval accuracy" in out
    assert not profiles.exists()  # planned from the shipped profile, nothing measured
    record = read_job(open_store(store), "first")
    _assert_pipelines(record.spec.plan)
    summary = record.summary
    assert summary is not None
    assert min(summary.losses[-3:]) <= summary.losses[0] / 2, summary.losses
    assert summary.test_accuracy is not None and summary.test_accuracy >= 0.5
    page = Path(".jaxpipe") / "reports" / "first" / "index.html"
    assert (tmp_path / page).exists() and f"report:       {page}" in out


def test_live_profile_plans_from_this_machines_profile_not_the_shipped_one(tmp_path) -> None:
    """`--live-profile`: the planner reads (or measures) the profile cache, never the shipped
    profile; without it the shipped profile wins over a cached one."""
    import jaxpipe
    from jaxpipe.runtime.planning import planning_problem, profile_cache_path

    setup = first_job.setup(first_job.MODEL, {}, 0)
    x, y = setup.data
    traced = jaxpipe.trace(setup.model, setup.variables, (x[:8], y[:8]), setup.loss_fn)
    sizes = profile_sizes(first_job.BATCH)
    cache = profile_cache_path(tmp_path, first_job.MODEL, {}, sizes)
    cached = json.loads(first_job.PROFILE.read_text())
    cached["model"] = "measured here"
    cache.write_text(json.dumps(cached))
    platform = platforms.get(first_job.PLATFORM)
    for live, model in ((True, "measured here"), (False, first_job.MODEL)):
        options = TrainOptions(model=first_job.MODEL, batch=first_job.BATCH,
                               profile_cache=str(tmp_path), live_profile=live)
        assert planning_problem(traced, first_job.MODEL, platform, options,
                                None).profile.model == model
