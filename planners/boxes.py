"""Bottleneck boxes: the part of an iteration-time band a search entry covers.

A ``Box`` holds a ``Range`` lo <= P_k <= hi for every bottleneck term (P^F, P^B, Y; ``Term``
order) and the candidates reduced-cost fixing has fixed to 0. ``boxed`` restricts a band's
candidates to a box (terms raised to the box's lower ends, exact inside it); ``split`` halves
a band whose MILP did not finish, in T while it is wide, then in its widest bottleneck range.
The band search (``planners.bands``) keeps one box per heap entry. Why raising is exact is in
planners/README.md.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from planners.bounds import Band, CandidateArrays, IntArray, Term

__all__: list[str] = []  # internal to planners.bands

SPLIT = 0.004  # bands narrower than this (relative) get more time instead of a split


class Range(NamedTuple):
    """lo <= P_k <= hi for one bottleneck term, in seconds."""

    lo: float
    hi: float


_UNBOUNDED = (Range(0.0, math.inf), Range(0.0, math.inf), Range(0.0, math.inf))


@dataclass(frozen=True, order=True)
class Box:
    """The part of a band a heap entry covers: a range of every bottleneck term, plus the
    candidates reduced-cost fixing has fixed to 0 there.

    Ordered as the flat tuple (PF_lo, PF_hi, PB_lo, PB_hi, Y_lo, Y_hi, fixed), so heap ties
    break as before.

    Attributes:
      ranges: one ``Range`` per ``Term``, in ``Term`` order.
      fixed: candidate indices (into the micro-batch's candidate list) fixed to 0.
    """

    ranges: tuple[Range, Range, Range] = _UNBOUNDED
    fixed: frozenset[int] = field(default_factory=frozenset[int])

    def fixing(self, more: frozenset[int]) -> Box:
        """This box with the candidates ``more`` fixed to 0 as well."""
        return dataclasses.replace(self, fixed=more | self.fixed)

    def halves(self, k: Term, mid: float) -> tuple[Box, Box]:
        """The halves P_k <= mid and P_k >= mid of this box; neither keeps its fixings
        (reduced costs held for this box's LP only)."""
        below, above = list(self.ranges), list(self.ranges)
        below[k] = Range(self.ranges[k].lo, mid)
        above[k] = Range(mid, self.ranges[k].hi)
        return Box((below[0], below[1], below[2])), Box((above[0], above[1], above[2]))


def boxed(c: CandidateArrays, box: Box) -> tuple[IntArray, CandidateArrays]:
    """Candidates allowed in a bottleneck box (indices into ``c``, then their data), with each
    term raised to the box's lower end: a plan's P^F is max(PF_lo, max_v aF_v) inside the box,
    so aF_v -> max(aF_v, PF_lo) is exact there (likewise P^B, Y); candidates above a box's upper
    end are removed."""
    keep = np.ones(len(c), bool)
    for k in Term:
        keep &= c.term(k) <= box.ranges[k].hi
    idx = np.flatnonzero(keep)
    sub = c.take(idx)
    raised = [np.maximum(sub.term(k), box.ranges[k].lo) for k in Term]
    return idx, sub.with_terms(*raised)


def split(band: Band, box: Box, sub: CandidateArrays) -> list[tuple[Band, Box]]:
    """Children covering a band whose MILP did not finish: halve T if the band is wide, else
    halve the widest bottleneck range [lo_k, max_v term_v] of the box (P^F, P^B or Y); none
    when every range is already narrow."""
    lo, hi = band
    if hi - lo > SPLIT * hi:
        mid = 0.5 * (lo + hi)
        return [(Band(lo, mid), box), (Band(mid, hi), box)]
    widths = [float(sub.term(k).max()) - box.ranges[k].lo for k in Term]
    k = Term(int(np.argmax(widths)))
    if widths[k] <= 1e-6 * max(hi, 1e-9):
        return []
    below, above = box.halves(k, box.ranges[k].lo + 0.5 * widths[k])
    return [(band, below), (band, above)]
