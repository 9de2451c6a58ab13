"""All-reduce (mean) of a gradient over object storage: FuncPipe's pipelined scatter-reduce.

Notation, used throughout: n ranks (`world`), this rank i, peers j, step r = 1..n-1. The
vector of N elements is cut into n chunks; chunk k starts at k*floor(N/n) + min(N mod n, k) and
holds floor(N/n) + [k < N mod n] elements, and rank k owns (reduces) chunk k. Each chunk is cut
the same way into p pieces (`pipeline_pieces`; p = 1 is FuncPipe's algorithm). Keys, all under
the caller's `group` prefix (unique per job, iteration and stage):

    <group>/scatter/<k>/<q>/<j>   piece q of chunk k of rank j's vector, for owner k (read once)
    <group>/reduced/<k>/<q>       the mean of piece q of chunk k, published by its owner
    <group>/done/<j>              empty marker: rank j has read everything it needs

"pipelined" (FuncPipe's bandwidth-optimal variant), as seen by rank i, p = 1:

    uplink   | A: scatter/(i+1)/i  scatter/(i+2)/i ... scatter/(i+n-1)/i | B: reduced/i | D
    downlink |   A: scatter/i/(i-1)  scatter/i/(i-2) ... scatter/i/(i-n+1) | C: reduced/* | D
    (indices mod n, piece index left out)

  A. An upload pool sends chunk (i+r) mod n at step r while a download pool fetches, in step
     order, the chunk addressed to i by rank (i-r) mod n, which that rank sends at its own step
     r. Both links of every rank are busy at once. The owner starts from its *own* slice (the
     reference code forgot it) and adds each arrival; the scatter keys it read are deleted in
     one batched request, off the critical path. The first uploads start one piece-time apart
     and each GET is sent when its piece should have landed (`transports.pacing`), so
     transfers neither land together on a shared link nor poll a round trip too early.
  B. The owner divides by n (a mean, not a sum), casts back to the vector's dtype and publishes.
  C. Meanwhile it gathers the other owners' reduced chunks. Every rank assembles the result from
     the same published chunks (its own included), so all ranks get bit-identical results.
  D. Cleanup without a barrier: rank i puts `done/i`, then LISTs `<group>/`. A rank that sees
     all n markers knows every rank has read everything, and deletes every key it listed.
     The last LIST sees all markers (each rank's PUT precedes its LIST): at least one rank
     cleans up, nobody waits for anybody (`_cleanup` also handles retried PUTs).

With p > 1, A runs in rounds q = 0..p-1 (piece q of every chunk), and B and C per piece, so the
gather overlaps the scatter (transports/README.md: why this beats 2W/B).

"lambdaml" (LambdaML's ScatterReduce, the baseline) does the same phases one request at a
time: scatter all n-1 chunks, then fetch-reduce-delete each arrival, publish, gather, cleanup.
Request counts per rank: `allreduce_requests`.
"""

from __future__ import annotations

import concurrent.futures as cf
from dataclasses import dataclass

import numpy as np

from transports import codec
from transports.clock import MONOTONIC, Clock
from transports.pacing import RequestTimes, not_before, pipeline_depth, pipeline_pieces
from transports.store import GetTimeout, ObjectStore, check_prefix

__all__ = ["ALGORITHMS", "PeerTimeout", "allreduce_mean", "allreduce_requests", "chunk_bounds"]

ALGORITHMS = ("pipelined", "lambdaml")
_MAX_GATHERS = 16  # concurrent GETs of reduced pieces per rank


class PeerTimeout(TimeoutError):
    """A rank waited too long for a peer's chunk during an all-reduce.

    The message names the group, both ranks, the phase and the key. Fix: check that the peer
    was launched with the same group, world size and store, or raise `timeout`.
    """

    def __init__(self, group: str, rank: int, world: int, peer: int, what: str, key: str,
                 waited_s: float) -> None:
        super().__init__(
            f"allreduce {group!r}: rank {rank} of {world} timed out after {waited_s:.3g} s "
            f"waiting for {what} from rank {peer} (key {key!r}); is rank {peer} running with "
            "the same group, world size and store?")
        self.peer = peer
        self.key = key


def chunk_bounds(length: int, world: int) -> list[tuple[int, int]]:
    """Returns the (start, stop) of each rank's chunk; sizes differ by at most one element.

    Example:
      >>> chunk_bounds(10, 4)
      [(0, 3), (3, 6), (6, 8), (8, 10)]
    """
    base, extra = divmod(length, world)
    starts = [k * base + min(extra, k) for k in range(world + 1)]
    return [(starts[k], starts[k + 1]) for k in range(world)]


def allreduce_requests(world: int, algorithm: str = "pipelined",
                       pieces: int = 1) -> dict[str, int]:
    """Returns the requests one rank sends in one `allreduce_mean`, by kind.

    With n = world > 1 (n = 1 sends nothing) and p pieces per chunk ("pipelined" only; the
    count `allreduce_mean` picks is `pipeline_pieces(chunk bytes, bandwidth, latency)`):

    | kind    | pipelined                              | lambdaml                      |
    |---------|----------------------------------------|-------------------------------|
    | PUT     | p(n-1) + p + 1 (pieces, reduced, done) | n+1                           |
    | GET     | 2p(n-1)                                | 2(n-1)                        |
    | HEAD    | 0                                      | 0                             |
    | LIST    | 1 (the group, for cleanup)             | 1                             |
    | DELETE  | 1 (one batch of p(n-1) keys)           | n-1 (one per received chunk)  |

    plus "CLEANUP_DELETE": 1 more DELETE on each rank whose LIST finds all n markers (at least
    one rank per group, at most n), or finds strays of retried PUTs after the sweep. Misses
    (GETs of keys not yet written) and retried attempts come on top.

    Example:
      >>> allreduce_requests(4)
      {'PUT': 5, 'GET': 6, 'HEAD': 0, 'LIST': 1, 'DELETE': 1, 'CLEANUP_DELETE': 1}
      >>> allreduce_requests(4, pieces=2)["PUT"]
      9
    """
    _check_algorithm(algorithm)
    n, p = world, (pieces if algorithm == "pipelined" else 1)
    if p < 1:
        raise ValueError(f"pieces must be >= 1, got {pieces}")
    if n == 1:
        return {"PUT": 0, "GET": 0, "HEAD": 0, "LIST": 0, "DELETE": 0, "CLEANUP_DELETE": 0}
    return {"PUT": p * n + 1, "GET": 2 * p * (n - 1), "HEAD": 0, "LIST": 1,
            "DELETE": 1 if algorithm == "pipelined" else n - 1, "CLEANUP_DELETE": 1}


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown allreduce algorithm {algorithm!r}; choose one of {ALGORITHMS}")


@dataclass(frozen=True)
class _Round:
    """Everything one rank knows about one all-reduce."""

    store: ObjectStore
    group: str
    rank: int
    world: int
    flat: np.ndarray            # (N,) the local vector, flattened
    bounds: list[list[tuple[int, int]]]  # [chunk k][piece p] -> (start, stop) in flat
    clock: Clock                # what the deadline and `times` are readings of
    deadline: float             # the clock reading at which waiting ends
    times: RequestTimes         # earliest start of each scatter request ("pipelined")

    @property
    def pieces(self) -> int:
        return len(self.bounds[0])

    def scatter_key(self, owner: int, piece: int, sender: int) -> str:
        return f"{self.group}/scatter/{owner}/{piece}/{sender}"

    def reduced_key(self, owner: int, piece: int) -> str:
        return f"{self.group}/reduced/{owner}/{piece}"

    def done_key(self, rank: int) -> str:
        return f"{self.group}/done/{rank}"

    def piece(self, k: int, p: int) -> np.ndarray:
        lo, hi = self.bounds[k][p]
        return self.flat[lo:hi]

    def left(self) -> float:
        return max(0.0, self.deadline - self.clock.now())

    def fetch(self, key: str, peer: int, what: str) -> np.ndarray:
        """GETs `key`, waiting until the deadline; a timeout names the peer."""
        try:
            data = self.store.get(key, timeout=self.left())
        except GetTimeout as err:
            raise PeerTimeout(self.group, self.rank, self.world, peer, what, key,
                              err.waited_s) from err
        chunk = codec.decode(data, key=key)
        if not isinstance(chunk, np.ndarray):
            raise codec.CodecError(f"object {key!r} holds a {type(chunk).__name__} of arrays, "
                                   "not the one array an all-reduce sends")
        return chunk

    def send(self, key: str, chunk: np.ndarray) -> None:
        self.store.put(key, codec.encode(chunk))


def allreduce_mean(store: ObjectStore, group: str, rank: int, world: int, vector: np.ndarray,
                   algorithm: str = "pipelined", timeout: float = 300.0, *,
                   inflight: int | None = None, pieces: int | None = None,
                   bandwidth_bps: float = 70e6,
                   latency_s: float = 0.02, out: np.ndarray | None = None,
                   cleanup: cf.Executor | None = None, clock: Clock = MONOTONIC) -> np.ndarray:
    """Returns the mean of `vector` over the `world` ranks of `group`, through `store`.

    Every rank calls it with the same group, world, vector shape and dtype; each gets the same,
    bit-identical result. Keys are deleted before the call returns (by at least one rank).

    Args:
      store: this rank's store handle (e.g. its own ThrottledStore).
      group: key prefix unique to this all-reduce, e.g. "jobs/<id>/it/<t>/stage/<s>".
      rank: this rank, in [0, world).
      world: number of ranks, >= 1.
      vector: floating array (float16/32/64, bfloat16); any shape, flattened on the wire.
      algorithm: "pipelined" (FuncPipe) or "lambdaml" (the sequential baseline).
      timeout: seconds this call may wait for peers in total.
      inflight: uploads in flight in "pipelined" (downloads: one more). None picks
        `pipeline_depth(chunk bytes, bandwidth_bps, latency_s)`.
      pieces: pieces each chunk is cut into in "pipelined" (lambdaml: always 1), so owners
        publish reduced pieces while later ones are still arriving. None picks
        `pipeline_pieces(chunk bytes, bandwidth_bps, latency_s)`.
      bandwidth_bps, latency_s: the link the ranks are expected to have (bytes/s, seconds),
        by default AWS Lambda to S3. They choose `inflight` and `pieces`, and in "pipelined"
        when each scatter request starts (transports/pacing.py): a GET of a peer's piece is
        not sent before that piece could have been uploaded at `bandwidth_bps`, so a link
        faster than that is used only as fast as that. `math.inf` sends every request at once.
      out: where to write the mean: a C-contiguous array of `vector`'s shape and dtype, which
        may be `vector` itself (in place, as MPI_IN_PLACE; spares a fresh W-byte array's page
        faults). None allocates one.
      cleanup: an executor to run the key cleanup (one PUT, one LIST, maybe one DELETE) on,
        off the critical path; the caller waits for it before its function ends (e.g. by
        shutting the executor down). None cleans up before returning.
      clock: what `timeout` and the start of each scatter request are measured on
        (`transports.clock`); real time unless a test passes its own.

    Returns:
      np.ndarray: the element-wise mean, same shape and dtype as `vector` (accumulated in
      float32, or float64 for float64 input).

    Raises:
      PeerTimeout: a peer's chunk did not appear in time; the message names the peer and key.
      ValueError: bad rank, world, group or algorithm.
    """
    _check_algorithm(algorithm)
    if not (world >= 1 and 0 <= rank < world):
        raise ValueError(f"need world >= 1 and 0 <= rank < world, got rank={rank}, "
                         f"world={world}")
    if group.endswith("/") or not group:
        raise ValueError(f"group {group!r} must be a non-empty key prefix without a trailing '/'")
    check_prefix(group + "/")
    vector = np.asarray(vector)
    if vector.dtype.kind != "f" and vector.dtype.name not in ("bfloat16",) \
            and not vector.dtype.name.startswith("float8"):
        raise TypeError(f"allreduce_mean needs a floating-point vector, got {vector.dtype}")
    result = _output(vector, out)
    if world == 1:
        if result is not vector:
            result[...] = vector
        return result
    flat = np.ascontiguousarray(vector).reshape(-1)
    chunk_bytes = flat.nbytes // world
    if pieces is None:
        pieces = pipeline_pieces(chunk_bytes, bandwidth_bps, latency_s)
    if pieces < 1:
        raise ValueError(f"pieces must be >= 1, got {pieces}")
    if algorithm == "lambdaml":
        pieces = 1
    if inflight is None:
        inflight = pipeline_depth(chunk_bytes // pieces, bandwidth_bps, latency_s)
    deadline = clock.now() + timeout
    rnd = _Round(store, group, rank, world, flat, _piece_bounds(flat.size, world, pieces),
                 clock, deadline,
                 RequestTimes.for_link(chunk_bytes // pieces, bandwidth_bps, deadline, clock))
    run = _pipelined if algorithm == "pipelined" else _lambdaml
    run(rnd, max(1, inflight), result.reshape(-1))
    if cleanup is None:
        _cleanup(rnd)
    else:
        cleanup.submit(_cleanup, rnd)
    return result


def _output(vector: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """Checks `out` (or allocates it): the array the mean is written into."""
    if out is None:
        return np.empty_like(vector, order="C")
    if out.shape != vector.shape or out.dtype != vector.dtype or not out.flags.c_contiguous \
            or not out.flags.writeable:
        raise ValueError(f"allreduce_mean out= must be a writeable C-contiguous {vector.dtype} "
                         f"array of shape {vector.shape}, got {out.dtype} {out.shape}")
    return out


def _piece_bounds(length: int, world: int, pieces: int) -> list[list[tuple[int, int]]]:
    """The (start, stop) of piece p of chunk k, as `chunk_bounds` cuts both levels."""
    return [[(lo + a, lo + b) for a, b in chunk_bounds(hi - lo, pieces)]
            for lo, hi in chunk_bounds(length, world)]


def _accumulator(rnd: _Round, p: int) -> np.ndarray:
    """Starts a piece's sum from the rank's own slice (defect 1 of the reference code)."""
    wide = np.float64 if rnd.flat.dtype == np.float64 else np.float32
    return rnd.piece(rnd.rank, p).astype(wide, copy=True)


def _publish_value(rnd: _Round, total: np.ndarray) -> np.ndarray:
    total /= rnd.world
    return total.astype(rnd.flat.dtype, copy=False)


def _pipelined(rnd: _Round, inflight: int, out: np.ndarray) -> None:
    i, n, pieces = rnd.rank, rnd.world, rnd.pieces
    others = [(i + r) % n for r in range(1, n)]    # step order r = 1..n-1
    senders = [(i - r) % n for r in range(1, n)]
    up = cf.ThreadPoolExecutor(inflight, thread_name_prefix=f"allreduce-up-{i}")
    down = cf.ThreadPoolExecutor(inflight + 1, thread_name_prefix=f"allreduce-down-{i}")
    # C's GETs of a piece start together: they share the downlink anyway, and each notices its
    # piece a poll earlier than if it queued behind another download.
    gather = cf.ThreadPoolExecutor(min(n - 1, _MAX_GATHERS), f"allreduce-gather-{i}")
    times, clock = rnd.times, rnd.clock

    def scatter_round(p: int) -> list[cf.Future[None]]:
        """A, round p: piece p of every other owner's chunk, in step order."""
        return [up.submit(not_before, times.upload(p * (n - 1) + r, inflight), rnd.send,
                          rnd.scatter_key(k, p, i), rnd.piece(k, p), clock=clock)
                for r, k in enumerate(others)]

    finished = False
    try:
        # uploads run <= 2 rounds ahead of the reduction: B's publish of piece p follows round p+1
        sent = [fut for p in range(min(2, pieces)) for fut in scatter_round(p)]
        arrivals = [[down.submit(not_before, times.arrival(p * (n - 1) + r), rnd.fetch,
                                 rnd.scatter_key(i, p, j), j, f"chunk {i} piece {p}",
                                 clock=clock)
                     for r, j in enumerate(senders)]
                    for p in range(pieces)]
        published: list[cf.Future[None]] = []
        gathers: list[tuple[int, int, cf.Future[np.ndarray]]] = []
        for p in range(pieces):
            total = _accumulator(rnd, p)
            for got in arrivals[p]:
                total += got.result()
            # B: publish the piece's mean; C: gather the other owners' piece p meanwhile.
            mine = _publish_value(rnd, total)
            published.append(up.submit(rnd.send, rnd.reduced_key(i, p), mine))
            if p + 2 < pieces:
                sent += scatter_round(p + 2)
            lo, hi = rnd.bounds[i][p]
            out[lo:hi] = mine
            gathers += [(j, p, gather.submit(rnd.fetch, rnd.reduced_key(j, p), j,
                                             f"reduced chunk {j} piece {p}"))
                        for j in others]
        # what A read goes in one batched DELETE, off the critical path
        received = up.submit(rnd.store.delete_many, [
            rnd.scatter_key(i, p, j) for p in range(pieces) for j in senders])
        for j, p, got in gathers:
            lo, hi = rnd.bounds[j][p]
            out[lo:hi] = got.result()
        for fut in (*sent, *published, received):
            fut.result()
        finished = True
    finally:
        # after success the idle threads exit on their own; after a failure, wait for them
        for pool in (up, down, gather):
            pool.shutdown(wait=not finished, cancel_futures=True)


def _lambdaml(rnd: _Round, inflight: int, out: np.ndarray) -> None:
    del inflight  # one request at a time, as LambdaML does
    i, n = rnd.rank, rnd.world
    others = [j for j in range(n) if j != i]
    for j in others:                         # 1. scatter, sequentially
        rnd.send(rnd.scatter_key(j, 0, i), rnd.piece(j, 0))
    total = _accumulator(rnd, 0)
    for j in others:                         # 2. fetch, reduce and delete each arrival
        total += rnd.fetch(rnd.scatter_key(i, 0, j), j, f"chunk {i}")
        rnd.store.delete(rnd.scatter_key(i, 0, j))
    mine = _publish_value(rnd, total)
    rnd.send(rnd.reduced_key(i, 0), mine)    # 3. publish
    lo, hi = rnd.bounds[i][0]
    out[lo:hi] = mine
    for j in others:                         # 4. gather
        lo, hi = rnd.bounds[j][0]
        out[lo:hi] = rnd.fetch(rnd.reduced_key(j, 0), j, f"reduced chunk {j}")


def _cleanup(rnd: _Round) -> None:
    """D: mark this rank done; if every rank is done, delete what is left of the group.

    The LIST covers the whole group, not only the markers, so one request also finds strays:
    objects re-created by a retried PUT whose first attempt had landed before its reader
    deleted it (see FaultyStore). Every rank's PUTs, retries included, end before its marker,
    so the rank that sees all n markers sweeps them. A rank whose own reduced chunk is already
    gone knows the sweep happened and removes whatever its own retries re-created after it.
    """
    rnd.store.put(rnd.done_key(rnd.rank), b"")
    keys = rnd.store.list(f"{rnd.group}/")
    done = sum(k.startswith(f"{rnd.group}/done/") for k in keys)
    swept = rnd.reduced_key(rnd.rank, 0) not in keys
    if keys and (done >= rnd.world or swept):
        rnd.store.delete_many(keys)

