"""The public surface: every name imports and is documented, and planners import neither jax
nor cvxpy (cvxpy is loaded only when the single-MILP solver runs). tests/test_house.py checks
that no module is shadowed and that no class name is used twice in the house."""

from __future__ import annotations

import subprocess
import sys

import planners


def test_every_public_name_imports_and_has_a_docstring() -> None:
    for name in planners.__all__:
        obj = getattr(planners, name)
        assert obj.__doc__, name


def _modules_after(imports: str, roots: tuple[str, ...]) -> list[str]:
    """Top-level packages among ``roots`` in sys.modules after ``imports`` in a fresh process."""
    probe = (f"import sys, {imports}; print(' '.join(sorted({{m.split('.')[0] for m in "
             f"sys.modules}} & {set(roots)!r})))")
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=120).stdout.split()


def test_planners_import_neither_jax_nor_the_runtime() -> None:
    # cvxpy 1.9 imports jax on its own when jax is installed, so cvxpy must not be imported either.
    seen = _modules_after("planners, planners.cli, planners.api, planners.miqp",
                          ("jax", "jaxlib", "jaxpipe", "transports", "flax", "cvxpy"))
    assert seen == []


def test_import_planners_does_not_import_cvxpy() -> None:
    # import cvxpy takes seconds and every JaxPipe worker imports planners (for Plan/schedule);
    # cvxpy is imported only inside planners.miqp's single-MILP build/solve/reduce.
    assert _modules_after("planners", ("cvxpy",)) == []
