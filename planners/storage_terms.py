"""What a stage's storage traffic outside its boundary messages costs: the replicas'
scatter-reduce (time) and its checkpoints (requests). ``planners.cost`` uses and re-exports
these; they live apart to keep the cost model's module readable."""

from __future__ import annotations

from planners.platforms import Platform
from planners.problem import Problem

__all__ = ["CHECKPOINT_PUTS", "checkpoint_dollars", "checkpoint_puts", "sync_seconds"]

CHECKPOINT_PUTS = 4  # parameters, optimizer state, model state, done marker


def checkpoint_puts(problem: Problem) -> float:
    """PUTs per iteration of one stage's checkpoints inside its windows: replica 0 saves
    (``CHECKPOINT_PUTS``) every ``problem.checkpoint_every`` iterations; 0 when None."""
    every = problem.checkpoint_every
    return 0.0 if every is None else CHECKPOINT_PUTS / every


def checkpoint_dollars(plat: Platform, replicas: int) -> float:
    """Requests of one stage's checkpoint hand-over per window, priced: replica 0 PUTs the
    parameters, optimizer state, model state and a done marker (4 PUTs) and each of the next
    window's d replicas GETs the three parts (``jaxpipe.runtime.checkpoint``)."""
    return plat.request_dollars(CHECKPOINT_PUTS, 3 * replicas)


def sync_seconds(grad_bytes: float, replicas: int, up: float, down: float, lat: float) -> float:
    """FuncPipe's pipelined scatter-reduce over storage as the worker runs it
    (``transports.allreduce_mean`` with one piece per chunk), in s.

    Each of d replicas owns a chunk c = W/d; u = c/up, v = c/down. The transport keeps its
    requests in flight (enough uploads to cover a round trip) and sends each GET to reach the
    store when its chunk lands, so a phase pays the latency once, not once per step:
      (A) the d-1 foreign chunks stream up back to back while the d-1 pieces of its own chunk
          stream down one step behind: (d-1) max(u, v) + min(u, v) + lat;
      (B) it publishes its reduced chunk; the other owners' GETs, sent as B starts, miss it and
          see it on their first poll: max(u, lat) until it is seen, + lat/2 each way;
      (C) it downloads the d-1 reduced chunks together: (d-1) v.
      T = (d-1) max(u, v) + min(u, v) + max(u, lat) + (d-1) v + 2 lat
    which is 2W/bandwidth + 3 lat for chunks above a round trip of bytes. Zero when d = 1.
    When every replica starts at the same instant, the GET timed to meet the last piece of (A)
    races it and polls again about half the time (one lat more, ``experiments.scatter_reduce``);
    in a pipeline the last replica to reach its SYNC finds the others' chunks uploaded.
    """
    if replicas <= 1:
        return 0.0
    chunk = grad_bytes / replicas
    u, v = chunk / up, chunk / down
    return (replicas - 1) * max(u, v) + min(u, v) + max(u, lat) + (replicas - 1) * v + 2 * lat
