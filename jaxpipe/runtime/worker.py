"""The body of one serverless function: run one rank of a job for a window of iterations.

`handler(event, context)` is the same code on every platform. The event carries only small
values; the rest is read from the store under the job's prefix (see `jaxpipe.runtime.job`).

One iteration of a rank runs its `planners.schedule` task list on three lanes:

    compute  (this thread)   FWD(m) ... BWD(m) ... SYNC UPDATE      in list order
    download (one thread)    RECV_ACT(m) / RECV_GRAD(m)             all queued at the start
    upload   (one thread)    SEND_ACT(m) / SEND_GRAD(m), losses     queued as compute makes them

(1) every receive of the iteration is queued on the download lane at once, so downloads
prefetch as soon as the objects appear; (2) compute waits on the receive's future, never polls;
(3) each result is handed to the upload lane as a future, so the next micro-batch computes while
the last one uploads; (4) replicas of a stage average gradients (and BatchNorm state) with
`transports.allreduce_mean`; (5) the optax update; (6) consumed messages are deleted in one
batch. Micro-batch m's loss is a mean over its b samples and the last stage seeds its backward
with 1/M, so after the all-reduce (mean over d replicas, times d) every replica holds the
gradient of the mean loss over the global batch.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import numpy as np

from jaxpipe.runtime import checkpoint, optim
from jaxpipe.runtime.dataset import ShardReader, batch_indices, micro_batch_keys
from jaxpipe.runtime.job import JobSpec, Keys
from jaxpipe.staging.bundle import load_stages
from planners import Plan, Platform
from planners.schedule import Kind, build
from transports import Backoff, ThrottledStore, allreduce_mean, codec, store_from_spec

__all__ = ["handler"]


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Runs rank `event["rank"]` of job `event["job"]` for iterations [start, stop).

    Event fields: `job`, `rank`, `store` (a `transports.store_to_spec` dict), `start`, `stop`
    (iterations), `attempt`, `invocation`, `link` (bool: emulate the platform's bandwidth and
    latency), optional `launched_at` (epoch seconds, for the cold start), `iteration_s` (the
    driver's estimate of one iteration, seconds) and `fault` ({"iteration": t}: die by SIGKILL
    in that iteration; tests only). An event with a `task` field is a profiling or calibration
    run (`jaxpipe.runtime.platforms.aws_tasks`), which shares this entry point in the container
    image.

    (a) The first delivery of an event claims its slot (job, attempt, invocation, rank) with a
    conditional write, and a duplicate delivery (Lambda may deliver an asynchronous event
    twice) returns at once. (b) On a serverless platform (a `context` with
    `get_remaining_time_in_millis`), a window that cannot finish in the time left is refused
    with status "refused" before any iteration starts. (c) A rank that raises writes status
    "failed" with the traceback, then raises.

    Returns:
      dict: `status` ("done", "handover", "refused" or "duplicate"), `next` iteration, and the
      metrics key.
    """
    if "task" in event:
        from jaxpipe.runtime.platforms.aws_tasks import run_task

        return run_task(event, context)
    began = time.time()
    base = store_from_spec(event["store"])
    status_key = Keys(event["job"]).status(event["attempt"], event["invocation"], event["rank"])
    # (a) Lambda may deliver one asynchronous event twice: only the first claim runs the rank.
    token = json.dumps({"token": uuid.uuid4().hex, "at": began,
                        "request": getattr(context, "aws_request_id", None)}).encode()
    if not base.put_if_absent(status_key + ".claim", token):
        return {"status": "duplicate", "next": event["start"], "metrics": None}
    try:
        return _run(event, context, base, status_key, began)
    except Exception:  # tell the driver why, then fail as the platform expects
        body = {"status": "failed", "error": traceback.format_exc()[-4000:]}
        base.put(status_key, json.dumps(body).encode())
        raise


def _run(event: dict[str, Any], context: Any, base: Any, status_key: str,
         began: float) -> dict[str, Any]:
    spec = JobSpec.from_json(base.get(f"jobs/{event['job']}/job.json", timeout=60))
    platform = Platform.from_dict(spec.platform)
    store = ThrottledStore(base, platform.uplink_bytes_per_s, platform.downlink_bytes_per_s,
                           platform.request_latency_s) if event.get("link", True) else base
    # A message waited for is noticed at most a round trip plus one sleep late: sleeps capped
    # at the request latency, not the default 0.1 s, which a long wait reaches and which then
    # delayed every hand-off on the critical path (the extra GETs cost less than the seconds).
    store.poll = Backoff(max_s=max(Backoff.initial_s, platform.request_latency_s))
    rank = Rank(spec, store, event)
    ready = time.time()
    refusal = _deadline_refusal(event, context, rank.plan)
    if refusal:  # (b) hand the window back whole rather than die in the middle of it
        rank.close()
        base.put(status_key, json.dumps(refusal).encode())
        return refusal
    for t in range(event["start"], event["stop"]):
        rank.iteration(t)
        last = t + 1 == event["stop"]
        if rank.replica == 0 and (last or (t + 1) % spec.checkpoint_every == 0):
            rank.save(t + 1)
    rank.close()
    done = event["stop"] >= spec.iterations
    status = {"status": "done" if done else "handover", "next": event["stop"]}
    # On Lambda the bill starts when the handler does (queueing in the async queue is free);
    # locally the process start is part of the emulated function.
    billed_from = began if context is not None else event.get("launched_at", began)
    metrics = rank.metrics(cold_start=ready - event.get("launched_at", began),
                           billed=time.time() - billed_from)
    key = spec.keys.metrics(rank.rank, event["attempt"], event["invocation"])
    store.put(key, json.dumps(metrics).encode())
    store.put(status_key, json.dumps(status).encode())
    return {**status, "metrics": key}


HANDOVER_MARGIN_S = 15.0
"""Seconds kept free at the end of an invocation to checkpoint and write metrics and status."""


def _deadline_refusal(event: dict[str, Any], context: Any, plan: Plan) -> dict[str, Any] | None:
    """The "refused" status if the window cannot finish in the invocation's time left, else None.

    Needed time = iterations x seconds per iteration (the driver's measurement in the event,
    else the plan's prediction) + HANDOVER_MARGIN_S. Without a context (local processes) there
    is no platform deadline and nothing is refused.
    """
    if context is None or not hasattr(context, "get_remaining_time_in_millis"):
        return None
    remaining = context.get_remaining_time_in_millis() / 1000.0
    per_iteration = event.get("iteration_s") or plan.iteration_seconds or 0.0
    needed = (event["stop"] - event["start"]) * per_iteration + HANDOVER_MARGIN_S
    if remaining >= needed:
        return None
    return {"status": "refused", "reason": "deadline", "next": event["start"],
            "remaining_s": round(remaining, 3), "needed_s": round(needed, 3), "metrics": None}


class Rank:
    """One (stage, replica) of a job: its programs, parameters, optimizer and lanes."""

    def __init__(self, spec: JobSpec, store: Any, event: dict[str, Any]):
        self.spec, self.store, self.event = spec, store, event
        self.keys = spec.keys
        self.plan = Plan.from_dict(spec.plan)
        self.schedule = build(self.plan)
        self.rank = int(event["rank"])
        self.attempt = int(event["attempt"])
        first = self.schedule.tasks[self.rank][0]
        self.stage, self.replica = first.stage, first.replica
        self.replicas = self.plan.stages[self.stage].replicas
        self.last = self.stage == len(self.plan.stages) - 1
        self.count = self.plan.num_micro_batches
        self.timeout = spec.wait_timeout_s
        self.platform = Platform.from_dict(spec.platform)
        bundle = store.get(self.keys.bundle, timeout=self.timeout)
        self.program = load_stages(bundle, only=[self.stage]).stages[self.stage]
        self.optimizer = optim.make(spec.optimizer, spec.learning_rate)
        self.step = optim.make_step(self.optimizer)
        loaded = checkpoint.load(store, self.keys, event["start"], self.stage, self.optimizer,
                                 self.timeout)
        # Committed to the device from the start: jit specialises on commitment, and the
        # optimizer's outputs are committed, so uncommitted loaded arrays made every rank
        # compile its stage programs a second time in its second iteration.
        self.params, self.opt_state, self.state = jax.device_put(loaded, jax.devices()[0])
        self.reader = ShardReader(store, self.keys, spec.shard_size, self.timeout)
        self.up = ThreadPoolExecutor(1, thread_name_prefix="upload")
        self.down = ThreadPoolExecutor(1, thread_name_prefix="download")
        # Requests nothing downstream waits for (deleting consumed messages, the loss record,
        # an all-reduce's cleanup) run here, off the lanes and off the iterations' critical
        # path. At most two iterations' worth stay outstanding (`pending`): an iteration waits
        # for (and raises the errors of) those of the iteration two before it; close() for all.
        self.cleaner = ThreadPoolExecutor(4, thread_name_prefix="cleanup")
        self.pending: deque[list[Future]] = deque()
        self.timeline: list[dict[str, Any]] = []
        self.seconds: list[dict[str, float]] = []

    # -- one iteration -------------------------------------------------------------------------

    def iteration(self, t: int) -> None:
        start, waited = time.time(), _run_queue_wait_s()
        tasks = self.schedule.tasks[self.rank]
        spec = self.program.spec
        received: dict[tuple[str, int], Future] = {}
        for task in tasks:
            if task.kind in (Kind.RECV_ACT, Kind.RECV_GRAD):
                received[(task.kind, task.micro_batch)] = self.down.submit(self._receive, t, task)
        sent: list[Future] = []
        saved: dict[int, Any] = {}
        losses: dict[int, float] = {}
        summed: list[Any] | None = None  # gradients summed over this rank's micro-batches
        params = [self.params[p] for p in spec.param_paths]
        for task in tasks:
            m = task.micro_batch
            if task.kind == Kind.FWD:
                self._fault(t, m)
                acts = received[(Kind.RECV_ACT, m)].result(timeout=self.timeout)
                with self._span("compute", f"FWD {m}"):
                    outs, new_state, saved[m] = self.program.forward(
                        params, [self.state[p] for p in spec.state_paths], acts)
                    jax.block_until_ready(outs)
                self.state.update(zip(spec.new_state_paths, new_state))
                if self.last:
                    losses[m] = float(outs[0])
                else:
                    key = self.keys.message(self.attempt, t, "act", self.stage, m)
                    sent.append(self.up.submit(self._send, key, outs, f"SEND_ACT {m}"))
            elif task.kind == Kind.BWD:
                if self.last:
                    cts = [np.asarray(1.0 / self.count, np.float32)]
                else:
                    cts = received[(Kind.RECV_GRAD, m)].result(timeout=self.timeout)
                with self._span("compute", f"BWD {m}"):
                    g, cts_in = self.program.backward(params, saved.pop(m), cts)
                    summed = list(g) if summed is None else optim.accumulate(summed, list(g))
                    jax.block_until_ready(cts_in)
                if self.stage > 0:
                    key = self.keys.message(self.attempt, t, "grad", self.stage, m)
                    sent.append(self.up.submit(self._send, key, cts_in, f"SEND_GRAD {m}"))
            elif task.kind == Kind.SYNC:
                with self._span("storage", "SYNC"):
                    synced = self._sync(t, dict(zip(spec.param_paths, summed, strict=True)))
                    summed = [synced[p] for p in spec.param_paths]
            elif task.kind == Kind.UPDATE:
                with self._span("compute", "UPDATE"):
                    self._update(dict(zip(spec.param_paths, summed, strict=True)))
        for future in sent:
            future.result(timeout=self.timeout)
        while len(self.pending) >= 2:
            for future in self.pending.popleft():
                future.result(timeout=self.timeout)
        background = []
        if self.last:
            key = self.keys.loss(t, self.rank)
            body = json.dumps({"micro_batches": sorted(losses),
                               "losses": [losses[m] for m in sorted(losses)]}).encode()
            background.append(self.cleaner.submit(self.store.put, key, body))
        consumed = [self._message_key(t, task) for task in tasks
                    if task.kind in (Kind.RECV_ACT, Kind.RECV_GRAD) and task.peer is not None]
        if consumed:
            background.append(self.cleaner.submit(self.store.delete_many, consumed))
        self.pending.append(background)
        self.seconds.append({"iteration": t, "seconds": time.time() - start, "end": time.time(),
                             "cpu_wait_s": max(0.0, _run_queue_wait_s() - waited)})

    def _receive(self, t: int, task: Any) -> list[Any]:
        with self._span("download", f"{task.kind} {task.micro_batch}"):
            if task.peer is None:
                return self._data(t, task.micro_batch)
            key = self._message_key(t, task)
            arrays = codec.decode(self.store.get(key, timeout=self.timeout), key=key)
            return [arrays[i] for i in range(len(arrays))]

    def _message_key(self, t: int, task: Any) -> str:
        if task.kind == Kind.RECV_ACT:
            return self.keys.message(self.attempt, t, "act", self.stage - 1, task.micro_batch)
        return self.keys.message(self.attempt, t, "grad", self.stage + 1, task.micro_batch)

    def _send(self, key: str, arrays: list[Any], name: str) -> None:
        with self._span("upload", name):
            self.store.put(key, codec.encode([np.asarray(a) for a in arrays]))

    def _data(self, t: int, m: int) -> list[Any]:
        """Stage 0's inputs of micro-batch m: samples from the shards, then the PRNG keys."""
        b = self.plan.micro_batch
        indices = batch_indices(self.spec.num_samples, self.plan.global_batch, self.spec.seed, t)
        leaves = self.reader.take(indices[m * b:(m + 1) * b])
        leaves += micro_batch_keys(self.spec.seed, t, m, self.count, self.spec.rng_names)
        return [leaves[i] for i in self.program.spec.input_data]

    def _sync(self, t: int, grads: dict[str, Any]) -> dict[str, Any]:
        """Sum of gradients over replicas (mean times d); BatchNorm state is averaged."""
        paths = list(grads)
        state_paths = list(self.program.spec.state_paths)
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

    def _update(self, grads: dict[str, Any]) -> None:
        self.params, self.opt_state = self.step(grads, self.opt_state, self.params)
        jax.block_until_ready(self.params)

    def _fault(self, t: int, m: int) -> None:
        fault = self.event.get("fault")
        if fault and fault.get("iteration") == t and fault.get("rank") == self.rank and m > 0:
            os.kill(os.getpid(), 9)  # die as a killed function does: no cleanup, no goodbye

    # -- bookkeeping ---------------------------------------------------------------------------

    def save(self, t: int) -> None:
        checkpoint.save(self.store, self.keys, t, self.stage, self.params, self.opt_state,
                        self.state)

    def close(self) -> None:
        self.up.shutdown(wait=True)
        self.down.shutdown(wait=True)
        for future in (f for background in self.pending for f in background):
            future.result(timeout=self.timeout)
        self.cleaner.shutdown(wait=True)

    def metrics(self, cold_start: float, billed: float) -> dict[str, Any]:
        return {
            "rank": self.rank, "stage": self.stage, "replica": self.replica,
            "attempt": self.attempt, "invocation": self.event.get("invocation", 0),
            "cold_start_s": cold_start, "billed_s": billed,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "memory_mb": self.plan.stages[self.stage].memory_mb,
            "iterations": self.seconds, "requests": self.store.stats.to_dict(),
            "timeline": self.timeline[-400:],
        }

    def _span(self, lane: str, name: str) -> _Span:
        return _Span(self.timeline, lane, name)


def _run_queue_wait_s() -> float:
    """Seconds this process's live threads have spent runnable but waiting for a core (Linux
    schedstat; 0 elsewhere): how much of a function's time an oversubscribed machine took."""
    total = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
    except (OSError, IndexError, ValueError):  # not Linux, or a thread that just ended
        return 0.0
    return total / 1e9


class _Span:
    """Records one task's start and end on a lane (Chrome trace "complete" events)."""

    def __init__(self, timeline: list, lane: str, name: str):
        self.timeline, self.lane, self.name = timeline, lane, name

    def __enter__(self) -> None:
        self.start = time.time()

    def __exit__(self, *exc: object) -> None:
        self.timeline.append({"lane": self.lane, "name": self.name, "start": self.start,
                              "end": time.time()})


def main() -> int:
    """`python -m jaxpipe.runtime.worker`: reads one event as JSON on stdin (the local platform)."""
    event = json.loads(sys.stdin.read())
    result = handler(event)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
