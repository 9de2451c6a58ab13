"""The public surface: every name imports, is documented, shadows no module, and planners import
neither jax nor cvxpy (cvxpy is loaded only when the single-MILP solver runs)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
import types

import planners
import transports


def test_every_public_name_imports_and_has_a_docstring() -> None:
    for name in planners.__all__:
        obj = getattr(planners, name)
        assert obj.__doc__, name


def test_no_public_name_shadows_a_module_of_the_package() -> None:
    # `from planners.api import plan` once made `planners.plan` the function, not the module
    # holding Plan; modules are now plans.py and coarsening.py.
    for info in pkgutil.iter_modules(planners.__path__):
        module = importlib.import_module(f"planners.{info.name}")
        assert getattr(planners, info.name) is module, info.name


def _classes(package: types.ModuleType) -> set[str]:
    """Names of the classes defined in every module of ``package`` (subpackages included)."""
    names: set[str] = set()
    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        module = importlib.import_module(info.name)
        names |= {n for n, obj in vars(module).items()
                  if inspect.isclass(obj) and obj.__module__ == module.__name__}
    return names


def test_no_planners_class_shares_a_name_with_a_transports_class() -> None:
    assert _classes(planners) & _classes(transports) == set()


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
