"""One rank of a job inside a function: its stage program, its state, and its three lanes.

One iteration of a rank runs its `planners.schedule` task list on three lanes:

    compute  (this thread)   FWD(m) ... BWD(m) ... SYNC UPDATE      in list order
    download (one thread)    RECV_ACT(m) / RECV_GRAD(m)             <= 2 ahead of use per kind
    upload   (one thread)    SEND_ACT(m) / SEND_GRAD(m)             queued as compute makes them
    cleanup  (four threads)  loss record, deletes, all-reduce tidy  off the critical path

(1) the receives are queued on the download lane in task order, at most two of each kind ahead
of the compute thread (`runtime.receives`), so downloads prefetch as soon as the objects appear
and a rank holds a double buffer per kind, not every message of the iteration; each received
value is dropped once consumed; (2) compute waits on the receive's future, never polls;
(3) each result is handed to the upload lane as a future, so the next micro-batch computes while
the last one uploads; (4) replicas of a stage average gradients (and BatchNorm state) with
`transports.allreduce_mean`; (5) the optimizer's exported update (`runtime.optimizer`), after
exchanging its partial sums with the other stages if it sums over them (`_exchange`); (6)
consumed messages are deleted in one batch. Micro-batch m's loss is a mean over its b samples
and the last stage seeds its backward with 1/M, so after the all-reduce (mean over d replicas,
times d) every replica holds the gradient of the mean loss over the global batch.

Indices: t is an iteration, m a micro-batch, M the micro-batches per iteration, d the replicas
of this rank's stage.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from jaxpipe.runtime import checkpoint, handover, optim
from jaxpipe.runtime.arrays import decode_list
from jaxpipe.runtime.cancel import RankWatch
from jaxpipe.runtime.dataset import ShardReader, batch_indices, micro_batch_keys
from jaxpipe.runtime.event import RankEvent
from jaxpipe.runtime.job import JobSpec
from jaxpipe.runtime.metrics import (
    CompileRecord,
    IterationRecord,
    LossRecord,
    RankMetrics,
    Timeline,
    peak_rss_mb,
    run_queue_wait_s,
)
from jaxpipe.runtime.optimizer import stage_optimizer, sum_partials
from jaxpipe.runtime.receives import RECEIVES, Receives, micro_batch
from jaxpipe.runtime.replica_state import averaged_paths, set_counters, stage_counters
from jaxpipe.runtime.stage_bundle import load_stage
from jaxpipe.runtime.startup import Startup, iteration_wait_s
from planners.schedule import Kind, Task, build
from transports import ObjectStore, allreduce_mean, codec

__all__ = ["Rank"]


@dataclass
class _Iteration:
    """What the compute thread holds while it runs one iteration."""

    t: int
    params: list[Any]  # this stage's parameters, in `spec.param_paths` order
    received: Receives  # this iteration's downloads, taken (and dropped) as consumed
    sent: list[Future[None]] = field(default_factory=list)
    saved: dict[int, Any] = field(default_factory=dict)  # m -> residuals of its forward
    losses: dict[int, float] = field(default_factory=dict)  # m -> its loss (last stage)
    summed: list[Any] | None = None  # gradients summed over this rank's micro-batches
    counted: dict[str, Any] = field(default_factory=dict)  # counters at the iteration's start


class Rank:
    """One (stage, replica) of a job: its programs, parameters, optimizer and lanes.

    `run_window()` runs the event's iterations and checkpoints; `close()` drains the lanes;
    `metrics(...)` reports what the invocation measured; a `deadline` can end it early.
    """

    def __init__(self, spec: JobSpec, store: ObjectStore, event: RankEvent,
                 watch: RankWatch | None = None, deadline: handover.Deadline | None = None):
        self.spec, self.store, self.event, self.watch = spec, store, event, watch
        self.keys, self.plan, self.platform = spec.keys, spec.plan, spec.platform
        self.rank, self.attempt = event.rank, event.attempt
        self.tasks: tuple[Task, ...] = build(self.plan).tasks[self.rank]
        self.stage, self.replica = self.tasks[0].stage, self.tasks[0].replica
        self.replicas = self.plan.stages[self.stage].replicas
        self.last = self.stage == len(self.plan.stages) - 1
        self.count = self.plan.num_micro_batches
        self.timeout = spec.wait_timeout_s
        self.program, shapes = load_stage(store, self.keys, self.stage, self.timeout)
        self.optimizer = stage_optimizer(spec, store, self.stage,
                                         self.program.spec.param_paths, shapes, self.timeout)
        loaded = checkpoint.load(store, self.keys, event.start, self.stage, self.optimizer,
                                 self.timeout)
        # Committed to the device from the start: jit specialises on commitment, and the
        # optimizer's outputs are committed, so uncommitted loaded arrays made every rank
        # compile its stage programs a second time in its second iteration.
        self.params, self.opt_state, self.state = jax.device_put(loaded, jax.devices()[0])
        self.handover = handover.for_rank(store, spec, event, deadline, loaded, self.replica == 0)
        self.stop = event.stop  # where the window ends (earlier at a hand-over marker's stop)
        self.counters = stage_counters(spec, self.program.spec.state_paths,
                                       self.program.spec.new_state_paths, self.state,
                                       self.replicas)  # `runtime.replica_state`
        self.reader = ShardReader(store, self.keys, spec.shard_size, self.timeout,
                                  spec.shard_cache)
        self.up = ThreadPoolExecutor(1, thread_name_prefix="upload")
        self.down = ThreadPoolExecutor(1, thread_name_prefix="download")
        # Requests nothing downstream waits for (deleting consumed messages, the loss record,
        # an all-reduce's cleanup) run here, off the lanes and off the iterations' critical
        # path. At most two iterations' worth stay outstanding (`pending`): an iteration waits
        # for (and raises the errors of) those of the iteration two before it; close() for all.
        self.cleaner = ThreadPoolExecutor(4, thread_name_prefix="cleanup")
        self.pending: deque[list[Future[Any]]] = deque()
        self.timeline = Timeline()
        self.records: list[IterationRecord] = []
        # Called once the window's first iteration ended (the worker publishes the compiled
        # programs there: `runtime.compile_cache`).
        self.after_first: Callable[[], Any] | None = None
        # The compute thread's rule per task kind; receives and sends run on their lanes.
        self.steps: dict[Kind, Callable[[_Iteration, Task], None]] = {
            Kind.FWD: self._forward, Kind.BWD: self._backward, Kind.SYNC: self._all_reduce,
            Kind.UPDATE: self._update}

    def run_window(self) -> None:
        """Iterations [event.start, self.stop): the event's stop, or an earlier one a hand-over
        marker sets (`runtime.handover`, read before every iteration); replica 0 checkpoints
        every `checkpoint_every` iterations and after the window's last."""
        t, saved = self.event.start, None
        while t < self.stop:
            if self.watch is not None:
                self.watch.check()  # AttemptCancelled: the attempt is over, stop here
            if self.handover is not None:
                self.stop = self.handover.stop_at(t, self.stop, [r.seconds for r in self.records])
                if t >= self.stop:
                    break
            self.iteration(t)
            if t == self.event.start and self.after_first is not None:
                self.cleaner.submit(self.after_first)  # off the critical path; close() waits
            t += 1
            if self.replica == 0 and t < self.stop and t % self.spec.checkpoint_every == 0:
                self.save(saved := t)
        if self.replica == 0 and saved != self.stop:
            self.save(self.stop)

    # -- one iteration -------------------------------------------------------------------------

    def iteration(self, t: int) -> None:
        """Runs iteration t of this rank's task list (steps as in the module docstring).

            (1) queue the first receives on the download lane   _queue_receives
            (2) run the compute tasks in list order              self.steps[kind]
                FWD, BWD queue their sends on the upload lane    _send
            (3) wait for this iteration's sends
            (4) wait for the background work of iteration t-2    _drain_background
            (5) queue the loss record and the deletes            _queue_background
            (6) record the iteration's time and CPU wait         IterationRecord
        """
        start, waited = time.time(), run_queue_wait_s()
        # Every wait of a window's first iteration also covers the other stages' start-up
        self.timeout = iteration_wait_s(self.spec.wait_timeout_s, self.stage, t, self.event.start,
                                        self.event.stages_startup_s or Startup.planned(
                                            self.platform, len(self.plan.stages)).stages_s)
        self.timeline.iteration_started(t)
        params = [self.params[p] for p in self.program.spec.param_paths]
        it = _Iteration(t, params, self._queue_receives(t))  # (1)
        it.counted = {p: self.state[p] for p in self.counters}
        for task in self.tasks:  # (2)
            step = self.steps.get(task.kind)
            if step is not None:
                step(it, task)
        self.state.update(set_counters(self.counters, it.counted, self.count))
        for future in it.sent:  # (3)
            future.result(timeout=self.timeout)
        self._drain_background(keep=1)  # (4)
        self.pending.append(self._queue_background(it))  # (5)
        end = time.time()  # (6)
        self.records.append(IterationRecord(
            iteration=t, seconds=end - start, end=end,
            cpu_wait_s=max(0.0, run_queue_wait_s() - waited),
            spans=self.timeline.spans_since(t)))

    def _queue_receives(self, t: int) -> Receives:
        return Receives(self.tasks, lambda task: self._receive(t, task), self.down)

    def _forward(self, it: _Iteration, task: Task) -> None:
        m, spec = micro_batch(task), self.program.spec
        self._fault(it.t, m)
        acts = it.received.take(Kind.RECV_ACT, m, self.timeout)
        self.state.update(set_counters(self.counters, it.counted, m))
        with self.timeline.span("compute", f"FWD {m}"):
            outs, new_state, it.saved[m] = self.program.forward(
                it.params, [self.state[p] for p in spec.state_paths], acts)
            jax.block_until_ready(outs)
        self.state.update(zip(spec.new_state_paths, new_state))
        if self.last:
            it.losses[m] = float(outs[0])
        else:
            self._send(it, "act", m, outs, f"SEND_ACT {m}")

    def _backward(self, it: _Iteration, task: Task) -> None:
        m = micro_batch(task)
        if self.last:
            cts = [np.asarray(1.0 / self.count, np.float32)]
        else:
            cts = it.received.take(Kind.RECV_GRAD, m, self.timeout)
        with self.timeline.span("compute", f"BWD {m}"):
            g, cts_in = self.program.backward(it.params, it.saved.pop(m), cts)
            it.summed = list(g) if it.summed is None else optim.accumulate(it.summed, list(g))
            jax.block_until_ready(cts_in)
        if self.stage > 0:
            self._send(it, "grad", m, cts_in, f"SEND_GRAD {m}")

    def _all_reduce(self, it: _Iteration, task: Task) -> None:
        paths = self.program.spec.param_paths
        with self.timeline.span("storage", "SYNC"):
            synced = self._sync(it.t, dict(zip(paths, _summed(it), strict=True)))
            it.summed = [synced[p] for p in paths]

    def _update(self, it: _Iteration, task: Task) -> None:
        grads = dict(zip(self.program.spec.param_paths, _summed(it), strict=True))
        exchanged = self._exchange(it.t, grads) if self.optimizer.needs_exchange else None
        with self.timeline.span("compute", "UPDATE"):
            self.params, self.opt_state = self.optimizer.update(grads, self.opt_state,
                                                                self.params, exchanged)
            jax.block_until_ready(self.params)

    def _exchange(self, t: int, grads: dict[str, Any]) -> list[Any]:
        """The optimizer's sums over stages (global-norm clipping's sum of squares).

        Replica 0 of each stage publishes its stage's partials at `Keys.partials`; every rank
        reads every stage's (replica 0 its own from memory) and adds them in stage order, so
        all ranks pass the same floats to the update. Replicas need not publish: after the
        all-reduce they hold the same gradients, state and parameters as their replica 0.
        Replica 0 deletes its key of iteration t-1 after reading those of t (see
        `_queue_background`).
        """
        with self.timeline.span("compute", "PARTIALS"):
            mine = [np.asarray(x) for x in self.optimizer.partials(grads, self.opt_state,
                                                                    self.params)]
        with self.timeline.span("storage", "EXCHANGE"):
            if self.replica == 0:
                self.store.put(self.keys.partials(self.attempt, t, self.stage),
                               codec.encode(mine))
            parts = []
            for k in range(len(self.plan.stages)):
                if k == self.stage and self.replica == 0:
                    parts.append(mine)
                    continue
                key = self.keys.partials(self.attempt, t, k)
                parts.append(decode_list(self.store.get(key, timeout=self.timeout), key))
        return [jax.device_put(x, jax.devices()[0]) for x in sum_partials(parts)]

    def _send(self, it: _Iteration, kind: str, m: int, arrays: list[Any], name: str) -> None:
        key = self.keys.message(self.attempt, it.t, kind, self.stage, m)
        it.sent.append(self.up.submit(self._upload, key, arrays, name))

    def _drain_background(self, keep: int) -> None:
        while len(self.pending) > keep:
            for future in self.pending.popleft():
                future.result(timeout=self.timeout)

    def _queue_background(self, it: _Iteration) -> list[Future[Any]]:
        background: list[Future[Any]] = []
        if self.last:
            record = LossRecord.of(it.losses)
            key = self.keys.loss(it.t, self.rank, self.attempt)
            background.append(self.cleaner.submit(self.store.put, key, record.to_json()))
        consumed = [self._message_key(it.t, task) for task in self.tasks
                    if task.kind in RECEIVES and task.peer is not None]
        if consumed:
            background.append(self.cleaner.submit(self.store.delete_many, consumed))
        if self.optimizer.needs_exchange and self.replica == 0 and it.t > 0:
            # Safe: every stage's replica 0 published iteration t's partials after its
            # all-reduce of t, which every replica joined only after reading those of t-1.
            background.append(self.cleaner.submit(
                self.store.delete, self.keys.partials(self.attempt, it.t - 1, self.stage)))
        return background

    # -- the lanes' work -----------------------------------------------------------------------

    def _receive(self, t: int, task: Task) -> list[Any]:
        with self.timeline.span("download", f"{task.kind} {task.micro_batch}"):
            if task.peer is None:
                return self._data(t, micro_batch(task))
            key = self._message_key(t, task)
            return decode_list(self.store.get(key, timeout=self.timeout), key)

    def _message_key(self, t: int, task: Task) -> str:
        m = micro_batch(task)
        if task.kind == Kind.RECV_ACT:
            return self.keys.message(self.attempt, t, "act", self.stage - 1, m)
        return self.keys.message(self.attempt, t, "grad", self.stage + 1, m)

    def _upload(self, key: str, arrays: list[Any], name: str) -> None:
        with self.timeline.span("upload", name):
            self.store.put(key, codec.encode([np.asarray(a) for a in arrays]))

    def _data(self, t: int, m: int) -> list[Any]:
        """Stage 0's inputs of micro-batch m: samples from the shards, then the PRNG keys."""
        b = self.plan.micro_batch
        indices = batch_indices(self.spec.num_samples, self.plan.global_batch, self.spec.seed, t,
                                self.spec.shuffle)
        leaves: list[Any] = list(self.reader.take(indices[m * b:(m + 1) * b]))
        leaves += micro_batch_keys(self.spec.seed, t, m, self.count, self.spec.rng_names)
        return [leaves[i] for i in self.program.spec.input_data]

    def _sync(self, t: int, grads: dict[str, Any]) -> dict[str, Any]:
        """Sum of gradients over replicas (mean times d); float state (BatchNorm's) is averaged,
        integer state never (`runtime.replica_state`)."""
        paths = list(grads)
        state_paths = averaged_paths(self.program.spec.state_paths, self.state)
        parts = [np.ravel(grads[p]) for p in paths] + [np.ravel(self.state[p]) for p in state_paths]
        vector = np.concatenate(parts).astype(np.float32)
        # In place, with the group's cleanup on the cleanup thread (close() waits for it). One
        # piece per chunk, as planners.cost counts the requests: at Lambda prices a second piece
        # pays for its n more PUTs only for chunks above ~25 MB x n / memory in GB. The
        # platform's link times the requests (transports.pacing).
        mean = allreduce_mean(self.store, self.keys.sync_group(self.attempt, t, self.stage),
                              self.replica, self.replicas, vector,
                              algorithm=self.spec.allreduce, timeout=self.timeout, out=vector,
                              cleanup=self.cleaner, pieces=1,
                              bandwidth_bps=min(self.platform.uplink_bytes_per_s,
                                                self.platform.downlink_bytes_per_s),
                              latency_s=self.platform.request_latency_s)
        out, offset = {}, 0
        for p in paths + state_paths:
            ref = grads[p] if p in grads else self.state[p]
            size = int(np.prod(np.shape(ref)))
            value = mean[offset:offset + size].reshape(np.shape(ref))
            offset += size
            # device_put (committed, like the loaded state): an uncommitted array here would
            # make the next forward compile again
            if p in grads:
                out[p] = jax.device_put(np.asarray(value * self.replicas, ref.dtype),
                                        jax.devices()[0])
            else:
                self.state[p] = jax.device_put(np.asarray(value, ref.dtype), jax.devices()[0])
        return out

    def _fault(self, t: int, m: int) -> None:
        fault = self.event.fault
        if fault is not None and fault.iteration == t and fault.rank == self.rank and m > 0:
            os.kill(os.getpid(), 9)  # die as a killed function does: no cleanup, no goodbye
        if self.handover is not None and m == self.replica:  # its first forward of t
            self.handover.stall(self.event.stall, t)

    # -- bookkeeping ---------------------------------------------------------------------------

    def save(self, t: int) -> None:
        began = time.time()
        checkpoint.save(self.store, self.keys, t, self.stage, self.params, self.opt_state,
                        self.state)
        if self.handover is not None:  # what the next checkpoint is expected to take
            self.handover.save_s = time.time() - began

    def close(self) -> None:
        self.up.shutdown(wait=True)
        self.down.shutdown(wait=True)
        self._drain_background(keep=0)
        self.cleaner.shutdown(wait=True)

    def metrics(self, cold_start: float, billed: float, compile: CompileRecord | None = None,
                init_s: float = 0.0) -> RankMetrics:
        """What this invocation measured; `cold_start`, `billed` and `init_s` in seconds."""
        timeline, first = self.timeline.kept()
        return RankMetrics(
            rank=self.rank, stage=self.stage, replica=self.replica, attempt=self.attempt,
            invocation=self.event.invocation, cold_start_s=cold_start, billed_s=billed,
            peak_rss_mb=peak_rss_mb(),
            memory_mb=self.plan.stages[self.stage].memory_mb, iterations=tuple(self.records),
            requests=self.store.stats, timeline=timeline, timeline_from=first,
            compile=compile, init_s=init_s)


def _summed(it: _Iteration) -> list[Any]:
    assert it.summed is not None, "SYNC and UPDATE come after this rank's backwards"
    return it.summed
