"""``jaxpipe plan`` (and ``python -m planners plan``): plan a JSON profile from the shell."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from planners import platforms
from planners.api import METHODS, plan
from planners.coarsening import coarsen, expand_plan
from planners.errors import PlanError
from planners.plans import Plan
from planners.problem import ANY_SCHEDULE, SCHEDULES, Objective, Problem
from planners.profile import ModelProfile
from planners.report import compare_table, plan_table

__all__ = ["add_plan_arguments", "run_plan"]


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``plan`` options to ``parser``."""
    parser.add_argument("--profile", required=True, help="ModelProfile JSON file")
    parser.add_argument("--platform", default="aws-lambda", choices=platforms.names())
    parser.add_argument("--platform-file", help="TOML/JSON overriding platform fields")
    parser.add_argument("--batch", type=int, required=True, help="global batch B, samples")
    parser.add_argument("--method", default="miqp", choices=METHODS)
    goal = parser.add_mutually_exclusive_group()
    goal.add_argument("--budget", type=float, help="min time s.t. cost/iteration <= BUDGET")
    goal.add_argument("--deadline", type=float, help="min cost s.t. seconds/iteration <= DEADLINE")
    goal.add_argument("--weight", type=float, help="min cost + WEIGHT * seconds (currency/s)")
    parser.add_argument("--micro-batches", type=_ints, default=(1, 2, 4, 8))
    parser.add_argument("--replicas", type=_ints, default=(1, 2, 4, 8))
    parser.add_argument("--max-functions", type=int, default=32)
    parser.add_argument("--groups", type=int, default=30,
                        help="coarsen the profile to at most this many layer groups")
    parser.add_argument("--optimizer-slots", type=int, default=2, help="Adam 2, SGD 0")
    parser.add_argument("--schedule", default=ANY_SCHEDULE, choices=(*SCHEDULES, ANY_SCHEDULE),
                        help="micro-batch order; 'any' (the default) searches FuncPipe-ordered "
                             "plans and one-stage 1F1B plans (data parallelism accumulating "
                             "gradients)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="miqp: s per MILP")
    parser.add_argument("-o", "--output", help="write the plan (original layer indices) here")
    parser.add_argument("--compare", action="store_true",
                        help="run every method except exhaustive and print one row each")


def _problem(args: argparse.Namespace) -> Problem:
    profile = ModelProfile.from_json(Path(args.profile).read_text())
    if args.groups and profile.num_layers > args.groups:
        profile = coarsen(profile, args.groups)
    if args.budget is not None:
        objective = Objective.min_time(args.budget)
    elif args.deadline is not None:
        objective = Objective.min_cost(args.deadline)
    elif args.weight is not None:
        objective = Objective.weighted(args.weight)
    else:
        objective = Objective()
    return Problem(profile, platforms.get(args.platform, args.platform_file), args.batch,
                   micro_batches=args.micro_batches, replica_options=args.replicas,
                   max_functions=args.max_functions, objective=objective,
                   optimizer_slots=args.optimizer_slots,
                   schedule=getattr(args, "schedule", ANY_SCHEDULE))


def _run(problem: Problem, method: str, args: argparse.Namespace) -> Plan:
    options = {"time_limit": args.time_limit} if method == "miqp" else {}
    return plan(problem, method, **options)


def run_plan(args: argparse.Namespace) -> int:
    """Run ``plan`` for parsed ``args``; prints a table, returns the exit status (2: error)."""
    try:
        problem = _problem(args)
        if args.compare:
            results: dict[str, Plan | str] = {}
            for method in METHODS:
                if method == "exhaustive":
                    continue
                try:
                    results[method] = _run(problem, method, args)
                except PlanError as err:
                    results[method] = f"error: {str(err).splitlines()[0]}"
            print(compare_table(results, problem))
            return 0
        result = _run(problem, args.method, args)
    except (PlanError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(plan_table(result, problem))
    if args.output:
        out = expand_plan(result, problem.profile) if "groups" in problem.profile.meta else result
        out = dataclasses.replace(out, meta=dict(out.meta) | {
            "model": problem.profile.model, "platform": problem.platform.name})
        Path(args.output).write_text(out.to_json())
        print(f"wrote {args.output} (cuts at original layers {list(out.cuts)})")
    return 0
