"""When the pipelined all-reduce sends its requests: pieces per chunk, requests in flight, and
the earliest start of each request.

All three follow from the link a rank expects: bandwidth B and round trip `latency`. Timing
matters because a link that concurrent transfers share fairly makes requests started together
finish together. Two uploads started at once both land after two piece-times, both restart a
round trip later, and the uplink idles for that round trip every pair. A GET sent before its
object exists comes back empty a round trip later, and the object is then noticed up to a
round trip late. `RequestTimes` therefore starts the first `pipeline_depth` uploads one
piece-time apart, and each upload after them starts when an earlier one returns, which keeps
the spacing. It sends the GET of the k-th piece to arrive so that it reaches the store when
that piece should have landed. A late peer only turns these GETs back into polls.

The times are readings of a `Clock` (`transports.clock`; real time by default), and
`not_before` waits on the same clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, TypeVarTuple

from transports.clock import MONOTONIC, Clock

__all__ = ["RequestTimes", "not_before", "pipeline_depth", "pipeline_pieces"]

_MAX_PIECES = 4
_MAX_DEPTH = 8
_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")


def pipeline_depth(piece_bytes: int, bandwidth_bps: float, latency_s: float) -> int:
    """Returns how many uploads to keep in flight: 1 + ceil(latency * bandwidth / piece), <= 8.

    A request leaves its link idle for a round trip; enough other requests in flight to fill
    that round trip keep the link busy. More would only make the pieces in flight share the
    link and land together, later than the first of them could have.

    Example:
      >>> pipeline_depth(16_000_000, 70e6, 0.02), pipeline_depth(1_000_000, 70e6, 0.02)
      (2, 3)
    """
    if piece_bytes <= 0:
        return 1
    if math.isinf(bandwidth_bps):
        return _MAX_DEPTH
    return int(min(_MAX_DEPTH, 1 + math.ceil(latency_s * bandwidth_bps / piece_bytes)))


def pipeline_pieces(chunk_bytes: int, bandwidth_bps: float, latency_s: float) -> int:
    """Returns how many pieces to cut each chunk into: 1, 2, or one per round trip of bytes (<= 4).

    With whole chunks every downlink waits twice for a whole chunk: for the first one to be
    uploaded, and for its own reduced chunk to be published (2W/B in all). With p pieces both
    waits shrink p-fold, towards 2(n-1)W/(nB), for p times the requests. Two pieces pay once
    each still holds half a round trip of bytes (0.7 MB at 70 MB/s and 20 ms); more pieces
    only once each holds a whole round trip, or latency would outweigh the overlap.

    Example:
      >>> [pipeline_pieces(mb * 1_000_000, 70e6, 0.02) for mb in (1, 2, 4, 64)]
      [2, 2, 2, 4]
      >>> pipeline_pieces(500_000, 70e6, 0.02)
      1
    """
    if latency_s <= 0:
        return _MAX_PIECES
    round_trip_bytes = bandwidth_bps * latency_s
    if chunk_bytes < round_trip_bytes:
        return 1 if 2 * chunk_bytes < round_trip_bytes else 2
    return int(min(_MAX_PIECES, max(2, chunk_bytes // round_trip_bytes)))


@dataclass(frozen=True)
class RequestTimes:
    """The earliest start of each scatter request of one rank, from its expected link.

    Args:
      start: the clock reading at which the all-reduce began.
      piece_s: seconds one piece takes on the link at the expected bandwidth (0: no timing).
      until: no request is held past this time (the all-reduce's deadline).

    Example:
      >>> times = RequestTimes(start=100.0, piece_s=0.5)
      >>> [times.upload(step, depth=2) for step in range(3)], times.arrival(0)
      ([100.0, 100.5, 0.0], 100.5)
    """

    start: float
    piece_s: float
    until: float = math.inf

    @staticmethod
    def for_link(piece_bytes: int, bandwidth_bps: float, until: float = math.inf,
                 clock: Clock = MONOTONIC) -> RequestTimes:
        """Times pieces of `piece_bytes` on a link of `bandwidth_bps` (inf: send at once),
        from now on `clock`."""
        return RequestTimes(clock.now(), piece_bytes / bandwidth_bps, until)

    def upload(self, step: int, depth: int) -> float:
        """Upload number `step` (0-based): the first `depth` go one piece-time apart."""
        return min(self.until, self.start + step * self.piece_s) if step < depth else 0.0

    def arrival(self, k: int) -> float:
        """GET of the k-th piece (0-based) to arrive: sent when that piece should have landed.

        A peer's k-th upload starts after k piece-times; its bytes take one more, and the GET
        reaches the store half a round trip after it is sent, as the upload's first byte did.
        """
        return min(self.until, self.start + (k + 1) * self.piece_s)


def not_before(when: float, fn: Callable[[*_Ts], _T], *args: *_Ts,
               clock: Clock = MONOTONIC) -> _T:
    """Calls `fn(*args)` no earlier than `when`, a reading of `clock`.

    Example:
      >>> not_before(0.0, max, 3, 4)  # long past on the monotonic clock: no wait
      4
    """
    wait = when - clock.now()
    if wait > 0:
        clock.sleep(wait)
    return fn(*args)
