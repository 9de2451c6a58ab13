"""``python -m planners plan ...``: the planner CLI without JAX."""

from __future__ import annotations

import argparse
import sys

from planners.cli import add_plan_arguments, run_plan


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the ``plan`` sub-command."""
    parser = argparse.ArgumentParser(prog="python -m planners")
    sub = parser.add_subparsers(dest="command", required=True)
    add_plan_arguments(sub.add_parser("plan", help="plan a profile"))
    return run_plan(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
