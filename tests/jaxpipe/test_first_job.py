"""`resnet18-digits` on `local-small` (`jaxpipe.runtime.first_job`): the ResNet trains on the
digit images and learns, and `jaxpipe train` prints the plan table with the planner's own
comparison before the launch and where the job's report is at the end.

The profile is the model's, measured on a 2-core machine by `jaxpipe train` itself and stored
beside this file; the test puts it where `jaxpipe train` caches profiles, so the run plans
without profiling (and on the same numbers, however loaded the test machine is).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from jaxpipe.cli import main
from jaxpipe.models.data import digit_images
from jaxpipe.runtime import first_job
from jaxpipe.runtime.planning import profile_cache_path, profile_sizes
from jaxpipe.runtime.report import read_job
from jaxpipe.runtime.train import open_store
from planners import ModelProfile, Problem, platforms
from planners import plan as make_plan

PROFILE = Path(__file__).parent / "data" / "resnet18-digits-profile.json"


def _problem() -> Problem:
    """The problem `jaxpipe train` plans the job with (`planning.planning_problem`): Adam's
    two slots, and the training set held by stage 0."""
    prof = ModelProfile.from_dict(json.loads(PROFILE.read_text()))
    x, y, _, _ = digit_images(first_job.CONFIG["image_size"])
    return Problem(profile=prof, platform=platforms.get(first_job.PLATFORM),
                   global_batch=first_job.BATCH, micro_batches=profile_sizes(first_job.BATCH),
                   replica_options=(1, 2, 4), max_functions=4, optimizer_slots=2,
                   cached_input_bytes=float(x.nbytes + y.nbytes))


def test_the_comparison_is_the_planners_own() -> None:
    problem = _problem()
    chosen = make_plan(problem, "miqp")
    one = make_plan(dataclasses.replace(problem, max_functions=1), "miqp")
    lines = first_job.comparison(problem, chosen).splitlines()
    assert [line.split("  ")[1].strip() for line in lines] == [
        "this plan", "one function alone", "data parallel (1 stage)"]
    assert f"{one.iteration_seconds:8.3f} s" in lines[1]
    assert chosen.objective_or_inf <= one.objective_or_inf  # the MIQP's is the best of them


def test_digit_images_are_the_digits_upsampled() -> None:
    x, y, x_test, y_test = digit_images(16)
    assert x.shape == (1438, 16, 16, 3) and x_test.shape == (359, 16, 16, 3)
    assert (x[:, ::2, ::2, 0] == x[:, 1::2, 1::2, 2]).all() and set(y) == set(range(10))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("first")
    cache = profile_cache_path(folder / "profiles", first_job.MODEL, {},
                               profile_sizes(first_job.BATCH))
    cache.parent.mkdir(parents=True)
    shutil.copy(PROFILE, cache)
    return folder


def test_the_resnet_learns_and_train_says_where_its_report_is(folder, capsys,
                                                               monkeypatch) -> None:
    """24 iterations as `jaxpipe train` runs them (planned by the MIQP, on local-small's
    emulated links): the loss halves, the test accuracy is far above chance (10 %; BatchNorm's
    running statistics, which evaluation uses, are still young: about 0.5 after 16)."""
    monkeypatch.chdir(folder)
    store = str(folder / "store")
    assert main(["train", "--model", first_job.MODEL, "--platform", first_job.PLATFORM,
                 "--batch", str(first_job.BATCH), "--iterations", "24", "--store", store,
                 "--job-id", "first", "--profile-cache", str(folder / "profiles")]) == 0
    out = capsys.readouterr().out
    assert out.index("headroom MB") < out.index("the planner's comparison") < out.index(
        "job first (starting")  # the plan table and the comparison, before the launch
    assert "one function alone" in out and "eval accuracy" in out
    summary = read_job(open_store(store), "first").summary
    assert summary is not None
    assert min(summary.losses[-3:]) <= summary.losses[0] / 2, summary.losses
    assert summary.test_accuracy is not None and summary.test_accuracy >= 0.4
    page = Path(".jaxpipe") / "reports" / "first" / "index.html"
    assert (folder / page).exists() and f"report:       {page}" in out
