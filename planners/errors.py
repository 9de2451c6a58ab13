"""Errors raised by the planners library.

Every message states the rule that was broken, the values that broke it and a fix, e.g.
``layer 'conv5' needs 3900 MB with 8 replicas and micro-batch 1 in recompute mode; the largest
memory option is 3072 MB; add a larger memory option or coarsen less``.
"""

from __future__ import annotations

__all__ = ["InfeasibleError", "PlanError", "TimeLimitError"]


class PlanError(ValueError):
    """A plan, problem or profile is malformed, or a method cannot handle the request.

    Fix: read the message; it names the offending field, its value and the accepted range.
    """


class InfeasibleError(PlanError):
    """No plan satisfies the problem's constraints (memory, functions, budget or deadline).

    Fix: the message names the binding constraint and the closest value that would be feasible
    (for instance the smallest memory the largest layer needs, or the fastest achievable time).
    """


class TimeLimitError(PlanError):
    """An exact planner's time limit expired before it found any plan meeting the problem's
    constraints, or before it could prove that none exists. Nothing is known to be infeasible.

    Fix: raise ``time_limit`` (``plan(problem, "miqp", time_limit=...)``), coarsen the profile,
    or relax the budget or deadline; the message says how long the search ran.
    """
