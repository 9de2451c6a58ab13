"""How a layer's time scales with cores: one core against all, for Amdahl's parallel fraction.

XLA:CPU sizes its intra-op thread pool from the cores the process may use when it starts
(`os.sched_getaffinity`: a process pinned to one core when it starts has 4 threads fewer on
this 2-core machine, and a 2048^2 float32 matmul takes 197 ms in it against 102 ms unpinned,
jax 0.10.2, quiet machine). `measure_scaling` pins every thread of this process, that pool
included, to one core, runs the layer, unpins them and runs it again, alternating
`max(repeats, 3)` times after one warm-up each, so a change in the machine's load hits both
sides alike. Pinned, the pool time-slices one core, as a function with one vCPU of N visible
ones runs it.

Two estimates of the all-core time t_N against the one-core time t_1:

- wall: the fastest run on each side. Right on a quiet machine; on a busy one (a load of
  11-18 on these 2 cores) the pinned run got 0.2-0.4 CPU-seconds per second, the all-core
  run was no faster, and p read as about 0.
- cpu: each thread's own CPU clock (`clock_gettime` of its thread CPU clock) over the runs:
  t_1 = the CPU seconds of the pinned run, all threads; t_N = the larger of the busiest
  thread's CPU seconds in the all-core run and all its threads' CPU seconds over N, the least
  the run could have taken on N free cores. Contention does not enter CPU clocks, but this
  is an upper bound on the speed-up: serial work that hops between threads, and waits at
  barriers, are not seen.

`Scaling.parallel_fraction` uses the wall estimate when both runs got their cores (CPU
seconds >= 0.9 x wall seconds on each side, and other processes took < 10 % of the cores
during the all-core runs: without that test, at a load of 3 the all-core runs of ResNet-101's
later blocks got one core and p read 0.0-0.05 where SCHED_FIFO measured 0.73-0.92), else the
cpu estimate (`Scaling.method`; on BERT-Large's embeddings it read 1.0 where the wall
estimate under SCHED_FIFO read 0.54).

On a busy machine `realtime=True` gets the cores for the wall estimate: every thread of the
process runs the timed runs (only those) under SCHED_FIFO priority 1 (root or CAP_SYS_NICE;
the kernel leaves other processes 5 % of each core), then returns to SCHED_OTHER. On this
2-core machine at a load of 16, a 1024^2 matmul then ran 1.94x faster on 2 cores than on one,
and its pinned run got 1.00 CPU-second per second (0.4 without).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import jax

from planners.cpu_share import fit_parallel_fraction

__all__ = ["Scaling", "measure_scaling"]

QUIET = 0.9  # a run got its cores when its CPU seconds are at least this share of its wall time
OTHERS = 0.1  # ... and other processes took less than this share of the cores meanwhile


@dataclass(frozen=True)
class Scaling:
    """One layer's runs on one core and on all ``cores``, in seconds.

    Attributes:
      cores: N, the cores of the all-core runs.
      one_wall, all_wall: fastest wall time of the pinned and all-core runs.
      one_cpu, all_cpu: CPU seconds (all threads) of those two fastest runs.
      one_cpu_median: median CPU seconds of the pinned runs, all threads.
      all_cpu_median: the same of the all-core runs.
      busiest_median: median CPU seconds of the busiest thread of the all-core runs.
      others_share: CPU time other processes took on the cores during the all-core runs, over
        N x their wall time (from /proc/stat, less its tick per core and run).
      realtime: whether the runs ran under SCHED_FIFO (the kernel then caps the others at 5 %
        of each core, and ``others_share`` is not tested).
    """

    cores: int
    one_wall: float
    all_wall: float
    one_cpu: float
    all_cpu: float
    one_cpu_median: float
    all_cpu_median: float
    busiest_median: float
    others_share: float = 0.0
    realtime: bool = False

    @property
    def method(self) -> str:
        """"wall" when both fastest runs had their cores (CPU >= 0.9 wall) and other processes
        took under 10 % of the cores during the all-core runs (unless ``realtime``), else
        "cpu"."""
        quiet = (self.one_cpu >= QUIET * self.one_wall and self.all_cpu >= QUIET * self.all_wall
                 and (self.realtime or self.others_share < OTHERS))
        return "wall" if quiet else "cpu"

    @property
    def parallel_fraction(self) -> float:
        """Amdahl's p in [0, 1] from the ``method``'s t_1 and t_N."""
        if self.method == "wall":
            return fit_parallel_fraction(self.one_wall, self.all_wall, self.cores)
        least = max(self.busiest_median, self.all_cpu_median / self.cores)
        return fit_parallel_fraction(self.one_cpu_median, least, self.cores)

    def to_dict(self) -> dict[str, float | int | str | bool]:
        """The measurements, the method and p, JSON-ready."""
        return asdict(self) | {"method": self.method, "parallel_fraction": self.parallel_fraction}


def _thread_cpu() -> dict[int, float]:
    """CPU seconds of every thread of this process, by thread id (Linux thread CPU clocks)."""
    out: dict[int, float] = {}
    for name in os.listdir("/proc/self/task"):
        tid = int(name)
        try:  # the CPU-time clock of thread tid: (~tid << 3) | CPUCLOCK_PERTHREAD | SCHED
            out[tid] = time.clock_gettime(((~tid) << 3) | 6)
        except OSError:  # the thread ended meanwhile
            pass
    return out


def _pin(cores: Sequence[int]) -> None:
    """Sets the CPU affinity of every thread of this process (XLA's pool included)."""
    for name in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(name), set(cores))
        except OSError:  # the thread ended meanwhile
            pass


def _busy(cores: Sequence[int]) -> float:
    """CPU seconds the machine has spent busy on ``cores`` since boot (/proc/stat: all but idle
    and iowait ticks)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0
    wanted = {f"cpu{c}" for c in cores}
    with open("/proc/stat") as f:
        for line in f:
            name, *ticks = line.split()
            if name in wanted:
                values = [int(x) for x in ticks]
                total += sum(values) - values[3] - values[4]
    return total / tick


def _timed(run: Callable[[], object], cores: Sequence[int]) -> tuple[float, float, float, float]:
    """(wall, CPU of all threads, CPU of the busiest thread, CPU of other processes on
    ``cores``) seconds of one call of ``run``."""
    busy, before, start = _busy(cores), _thread_cpu(), time.perf_counter()
    jax.block_until_ready(run())
    wall, after, busy = time.perf_counter() - start, _thread_cpu(), _busy(cores) - busy
    used = [after[t] - before.get(t, 0.0) for t in after]
    return wall, sum(used), max(used, default=0.0), max(busy - sum(used), 0.0)


def _policy(realtime: bool) -> None:
    """Every thread of this process to SCHED_FIFO priority 1 (True) or SCHED_OTHER (False)."""
    policy = os.SCHED_FIFO if realtime else os.SCHED_OTHER
    param = os.sched_param(1 if realtime else 0)
    for name in os.listdir("/proc/self/task"):
        try:
            os.sched_setscheduler(int(name), policy, param)
        except ProcessLookupError:  # the thread ended meanwhile
            pass


def _others_share(runs: Sequence[tuple[float, float, float, float]], cores: int) -> float:
    """Other processes' CPU seconds over ``cores`` x the wall seconds of ``runs``, less one
    /proc/stat tick per core and run (each busy reading is that coarse)."""
    slack = len(runs) * cores / os.sysconf("SC_CLK_TCK")
    return max(sum(x[3] for x in runs) - slack, 0.0) / (cores * sum(x[0] for x in runs))


def measure_scaling(run: Callable[[], object], cores: Sequence[int], repeats: int,
                    realtime: bool = False) -> Scaling:
    """Times ``run`` pinned to ``cores[0]`` and on all ``cores``, alternating.

    Args:
      run: the layer's forward and backward, jitted and compiled; returns arrays to wait on.
      cores: the cores this process may use (``sorted(os.sched_getaffinity(0))``); >= 2.
      repeats: rounds of one pinned and one all-core run (at least 3), after a warm-up round.
      realtime: time the runs under SCHED_FIFO (see the module docstring).

    Returns:
      Scaling: the fastest runs and the median CPU clocks of each side.

    Raises:
      ValueError: fewer than 2 cores.
      PermissionError: ``realtime`` without the right to raise the scheduling policy.
    """
    if len(cores) < 2:
        raise ValueError(f"measuring the scaling needs at least 2 cores, got {list(cores)}")
    sides: list[list[tuple[float, float, float, float]]] = [[], []]
    try:
        if realtime:
            _policy(True)
        for k in range(max(repeats, 3) + 1):
            for side, allowed in enumerate(([cores[0]], cores)):
                _pin(allowed)
                timed = _timed(run, cores)
                if k:  # the first round warms each placement up
                    sides[side].append(timed)
    finally:
        if realtime:
            _policy(False)
        _pin(cores)
    one, many = min(sides[0]), min(sides[1])
    return Scaling(cores=len(cores), one_wall=one[0], all_wall=many[0], one_cpu=one[1],
                   all_cpu=many[1], one_cpu_median=statistics.median(x[1] for x in sides[0]),
                   all_cpu_median=statistics.median(x[1] for x in sides[1]),
                   busiest_median=statistics.median(x[2] for x in sides[1]),
                   others_share=_others_share(sides[1], len(cores)), realtime=realtime)
