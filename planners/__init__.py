"""planners: model profiles -> pipeline plans for serverless training (numpy, scipy, cvxpy only;
cvxpy is imported lazily, by the single-MILP solver in ``planners.miqp``).

A planner turns a ``Problem`` (profile, platform, batch, options, objective) into a ``Plan``;
every plan is scored by one cost model (``planners.cost``) and can be replayed by the simulator
(``planners.simulate``) on its schedule (``planners.schedule``).
"""

from planners import cost, platforms, schedule, simulate, synthetic
from planners.api import METHODS, pareto, plan
from planners.coarsening import coarsen, expand_plan, groups_of
from planners.errors import InfeasibleError, PlanError, TimeLimitError
from planners.plans import Plan, StagePlan
from planners.platforms import Platform
from planners.problem import Objective, Problem
from planners.profile import LayerProfile, ModelProfile
from planners.schedule import Kind, Schedule, Task
from planners.simulate import SimResult

__all__ = [
    "METHODS", "InfeasibleError", "Kind", "LayerProfile", "ModelProfile", "Objective", "Plan",
    "PlanError", "Platform", "Problem", "Schedule", "SimResult", "StagePlan", "Task", "coarsen",
    "TimeLimitError", "cost", "expand_plan", "groups_of", "pareto", "plan", "platforms",
    "schedule", "simulate", "synthetic",
]
