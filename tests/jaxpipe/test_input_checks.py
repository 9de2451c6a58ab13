"""Bad input to `jaxpipe train` is refused before any work, in one message and a non-zero exit;
`--debug` adds the traceback."""

from __future__ import annotations

import io
import json

import pytest

from jaxpipe.cli import main
from jaxpipe.error_report import message, report_errors
from jaxpipe.errors import JobFailed, MemoryFloorError
from jaxpipe.runtime.input_checks import check_memory_floor
from planners import Plan, StagePlan, platforms
from transports import KeyNotFound


def refused(tmp_path, capsys, *flags: str) -> str:
    """Runs `jaxpipe train` with `flags` on a fresh store; its stderr, once it exited 2
    having written nothing."""
    store = tmp_path / "store"
    code = main(["train", "--store", str(store), "--profile-cache", str(tmp_path / "prof"),
                 *flags])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not store.exists() or not list(store.rglob("*.json")), "something was written"
    return err


@pytest.mark.parametrize("flags, expected", [
    (["--checkpoint-every", "0"], "CheckpointEveryError: --checkpoint-every 0: checkpoints"),
    (["--iterations", "0"], "IterationsError: --iterations 0: the number of iterations"),
    (["--iterations", "-3"], "IterationsError: --iterations -3"),
    (["--lr", "nan"], "LearningRateError: --lr nan: the learning rate must be a finite"),
    (["--lr", "inf"], "LearningRateError: --lr inf"),
    (["--batch", "0"], "BatchSizeError: --batch 0: the global batch"),
    (["--shard-size", "0"], "OptionRangeError: --shard-size 0"),
    (["--plan", "/nonexistent/plan.json"], "PlanFileError: --plan /nonexistent/plan.json: no "
                                           "such file"),
])
def test_a_bad_option_is_refused_in_one_line_before_any_work(tmp_path, capsys, flags, expected):
    err = refused(tmp_path, capsys, *flags)
    lines = err.strip().splitlines()
    assert lines[0] == "jaxpipe: " + lines[0].removeprefix("jaxpipe: ")
    assert expected in lines[0] and len(lines) == 2 and "--debug" in lines[1]
    assert "Traceback" not in err


@pytest.mark.parametrize("text, expected", [
    ("{", "is not JSON"),
    (json.dumps({"stages": "no"}), "is JSON but not a plan"),
])
def test_a_malformed_plan_file_is_refused_before_tracing(tmp_path, capsys, text, expected):
    plan = tmp_path / "plan.json"
    plan.write_text(text)
    assert f"PlanFileError: --plan {plan} {expected}" in refused(tmp_path, capsys,
                                                               "--plan", str(plan))


def test_a_store_path_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    code = main(["train", "--store", str(tmp_path / "afile" / "store")])
    err = capsys.readouterr().err
    assert code == 2 and f"StoreLocationError: --store {tmp_path}/afile/store: " \
        f"{tmp_path}/afile is a file, not a directory" in err


def test_debug_shows_the_traceback(tmp_path, capsys):
    code = main(["--debug", "train", "--iterations", "0", "--store", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and "IterationsError" in err.splitlines()[-1]


def test_a_memory_cap_below_the_local_floor_is_refused():
    plan = Plan(stages=(StagePlan(0, 1, 1024), StagePlan(2, 3, 256)), micro_batch=4,
                global_batch=16)
    with pytest.raises(MemoryFloorError, match="stage 1 at 256 MB: a local rank needs at least "
                                               "400 MB"):
        check_memory_floor(plan, platforms.get("local"))
    check_memory_floor(plan, platforms.get("aws-lambda"))  # Lambda's own floor applies there


def test_failed_jobs_and_store_errors_exit_1_with_their_message():
    def fail(err: Exception):
        def run() -> int:
            raise err
        return run

    out = io.StringIO()
    assert report_errors(fail(JobFailed("rank 1 failed")), out=out) == 1
    assert out.getvalue().startswith("jaxpipe: JobFailed: rank 1 failed\n")
    assert "check --store" in message(KeyNotFound("jobs/j/job.json"))
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        report_errors(fail(ZeroDivisionError()))
