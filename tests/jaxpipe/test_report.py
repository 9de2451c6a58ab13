"""`jaxpipe report`, `jaxpipe jobs` and `jaxpipe gc` on a store holding real jobs: one that
finished, one whose rank was killed with no restart left (no summary), and a copy of that one
whose driver still holds its lease (running). The page is loaded in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from jaxpipe.cli import main
from jaxpipe.errors import JobFailed, NoIterationError, UnknownJobError
from jaxpipe.runtime.driver import RunConfig
from jaxpipe.runtime.event import Fault
from jaxpipe.runtime.job import Keys
from jaxpipe.runtime.lease import LeaseRecord
from jaxpipe.runtime.report import collect, read_job, write_report
from jaxpipe.runtime.report.record import FINISHED, RUNNING
from jaxpipe.runtime.train import TrainOptions, open_store, train
from planners import Plan, StagePlan

BATCH = 16
PLAN = Plan(stages=(StagePlan(0, 0, 1024), StagePlan(1, 2, 1024, 2), StagePlan(3, 3, 1024)),
            micro_batch=4, global_batch=BATCH)
FIGURES = {"loss", "costs", "timeline", "requests"}


def _options(folder: Path, job: str, iterations: int, **run: object) -> TrainOptions:
    return TrainOptions(
        model="mlp", plan_file=str(folder / "plan.json"), batch=BATCH, iterations=iterations,
        store=str(folder / "store"), job_id=job, checkpoint_every=2,
        profile_cache=str(folder / "profiles"), wait_timeout_s=60,
        run=RunConfig(log_dir=str(folder / "logs"), link=False, **run))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    """A store with a finished job ("done", 6 iterations), a failed one ("broken": rank 1
    killed in iteration 4 of 8, no restarts; its first windows handed over, so their metrics
    are stored), and two copies of "broken" with a driver's lease: "busy", whose driver (this
    process) runs, and "crashed", whose driver's process is gone."""
    folder = tmp_path_factory.mktemp("report")
    (folder / "plan.json").write_text(json.dumps(PLAN.to_dict()))
    train(_options(folder, "done", 6), show_progress=False)
    with pytest.raises(JobFailed):
        train(_options(folder, "broken", 8, faults=(Fault(rank=1, iteration=4),),
                       max_restarts=0, invocation_seconds=24.0), show_progress=False)
    jobs = folder / "store" / "jobs"
    store = open_store(str(folder / "store"))
    for job, pid in (("busy", os.getpid()), ("crashed", 2**30)):  # a live driver, a dead one
        shutil.copytree(jobs / "broken", jobs / job)
        spec = json.loads(store.get(Keys(job).spec))
        spec["job_id"] = job
        store.put(Keys(job).spec, json.dumps(spec).encode())
        lease = LeaseRecord("t", socket.gethostname(), pid, time.time(), beat=1)
        store.put(Keys(job).driver, lease.to_json())
    return folder


def test_a_finished_job_is_read_back_whole(store_dir) -> None:
    record = read_job(open_store(str(store_dir / "store")), "done")
    assert record.state == FINISHED and record.iterations_done == 6
    assert record.summary is not None and record.problem is not None
    assert sorted(record.losses) == list(range(6))
    assert record.losses == pytest.approx(dict(enumerate(record.summary.losses)))
    assert {m.rank for m in record.metrics} == {0, 1, 2, 3}
    assert record.latest_checkpoint == 6 and record.checkpoints[-1] == 6  # train keeps the
    assert len(record.checkpoints) >= 2  # last few (--keep-checkpoints): gc leaves one
    assert record.dollars > 0 and record.created is not None


def test_report_of_a_finished_job_writes_the_page_its_figures_and_the_trace(
        store_dir, tmp_path, capsys) -> None:
    out = tmp_path / "done"
    assert main(["report", "done", "--store", str(store_dir / "store"), "--out", str(out),
                 "--open"]) == 0
    assert f"open {(out / 'index.html').resolve().as_uri()}" in capsys.readouterr().out
    page = (out / "index.html").read_text()
    for name in FIGURES:
        assert f"src='{name}.png'" in page and _png_size(out / f"{name}.png")[0] > 300
    assert "finished" in page and "1..2" in page  # the state, the replicated stage's layers
    assert "simulator" in page and "eval accuracy" in page
    trace = json.loads((out / "trace.json").read_text())
    pids = {e["pid"] for e in trace["traceEvents"] if e["ph"] == "X"}
    assert {0, 1, 2, 3} <= pids and any(p >= 1000 for p in pids)  # measured and simulated
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in spans)


def test_report_of_a_failed_job_without_a_summary_still_writes_its_page(store_dir,
                                                                      tmp_path) -> None:
    store = open_store(str(store_dir / "store"))
    record = read_job(store, "broken")
    assert record.summary is None and record.state != FINISHED
    assert 4 <= record.iterations_done < 8 and record.metrics
    files = write_report(store, "broken", tmp_path / "broken")
    assert FIGURES <= set(files.figures)
    page = files.page.read_text()
    assert record.state in page and f"{record.iterations_done} of 8" in page


def test_report_names_a_missing_job_and_an_iteration_the_timelines_lack(store_dir,
                                                                       tmp_path) -> None:
    store = open_store(str(store_dir / "store"))
    with pytest.raises(UnknownJobError, match="broken, busy, crashed, done"):
        write_report(store, "nope", tmp_path)
    with pytest.raises(NoIterationError, match="they hold"):
        write_report(store, "done", tmp_path, iteration=99)
    assert write_report(store, "done", tmp_path / "it", iteration=3).iteration == 3


def test_jobs_lists_every_job_with_its_state(store_dir, capsys) -> None:
    assert main(["jobs", "--store", str(store_dir / "store")]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(rows) == {"done", "broken", "busy", "crashed"}
    assert rows["done"][1:3] == ["finished", "6/6"] and rows["busy"][1] == RUNNING
    assert rows["broken"][1] in ("failed", "stopped") and rows["crashed"][1] == rows["broken"][1]
    assert float(rows["done"][3]) > 0


def test_gc_cleans_finished_jobs_only_and_keeps_their_latest_checkpoint(store_dir,
                                                                       tmp_path) -> None:
    folder = tmp_path / "store"
    shutil.copytree(store_dir / "store", folder)
    store = open_store(str(folder))
    prefix = Keys("done").prefix
    store.put(prefix + "run/0/it/5/act/0/0", b"stale")  # a message left behind
    before = {j: sorted(store.list(Keys(j).prefix)) for j in ("broken", "busy", "crashed")}
    results = {c.job_id: c for c in collect(store)}
    assert results["done"].deleted > 0 and results["done"].kept_checkpoint == 6
    assert results["busy"].skipped.startswith("running")
    left = store.list(prefix)
    assert not any(k.startswith(prefix + "run/") for k in left)
    assert {k.split("/")[3] for k in left if "/ckpt/" in k} == {"00000006"}
    assert read_job(store, "done").latest_checkpoint == 6  # still loadable and reportable
    assert {j: sorted(store.list(Keys(j).prefix)) for j in ("broken", "busy", "crashed")} == before
    write_report(store, "done", tmp_path / "after-gc")
    again = {c.job_id: c for c in collect(store)}
    assert again["done"].deleted == 0 and again["done"].kept_checkpoint == 6


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_PROBE = """<!doctype html><html><body><script>
const names = %s; let left = names.length;
for (const name of names) {
  const img = new Image();
  img.onload = () => { document.body.insertAdjacentHTML("beforeend",
    `<p class="loaded">${name} ${img.naturalWidth}x${img.naturalHeight}</p>`); left--; };
  img.onerror = () => { document.body.insertAdjacentHTML("beforeend",
    `<p class="broken">${name}</p>`); left--; };
  img.src = name;
}
</script></body></html>"""


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian "
                    "package `chromium`; .ci/run installs it)")
def test_the_page_renders_in_chromium_with_every_figure(store_dir, tmp_path) -> None:
    files = write_report(open_store(str(store_dir / "store")), "done", tmp_path / "page")
    shot = tmp_path / "page.png"
    flags = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--allow-file-access-from-files", "--virtual-time-budget=5000"]
    subprocess.run([*flags, "--window-size=1200,2400", f"--screenshot={shot}",
                    files.page.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2400, 1200)
    assert pixels.std() > 0.05 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    names = re.findall(r"<img src='([^']+)'", files.page.read_text())
    assert set(names) == {f"{n}.png" for n in FIGURES}
    probe = files.page.parent / "probe.html"
    probe.write_text(_PROBE % json.dumps(names))
    dom = subprocess.run([*flags, "--dump-dom", probe.resolve().as_uri()], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    loaded = dict(re.findall(r'<p class="loaded">(\S+) (\d+)x\d+</p>', dom))
    broken = [n for n in re.findall(r'<p class="broken">(\S+)</p>', dom) if n in names]
    assert broken == [] and set(loaded) == set(names)
    assert all(int(w) > 300 for w in loaded.values())
