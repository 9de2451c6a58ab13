"""The public surface: every name imports, is documented, and planners never import jax."""

from __future__ import annotations

import subprocess
import sys

import planners


def test_every_public_name_imports_and_has_a_docstring() -> None:
    for name in planners.__all__:
        obj = getattr(planners, name)
        assert obj.__doc__, name


def test_planners_imports_nothing_beyond_what_cvxpy_itself_imports() -> None:
    # cvxpy 1.9 imports jax on its own when jax is installed; planners must add nothing.
    probe = ("import sys, {mods}; print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('jax', 'jaxlib', 'jaxpipe', 'transports', 'flax')))")
    seen = [subprocess.run([sys.executable, "-c", probe.format(mods=mods)], capture_output=True,
                           text=True, check=True, timeout=120).stdout
            for mods in ("numpy, scipy, cvxpy", "planners, planners.cli, planners.api")]
    assert seen[0] == seen[1]
    assert "jaxpipe" not in seen[1] and "transports" not in seen[1]
