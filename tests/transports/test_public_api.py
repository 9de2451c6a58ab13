"""The public surface: every exported name imports and is documented; the import rules hold."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import transports
from tests.transports.conftest import REPO

PACKAGE = Path(transports.__file__).parent
ALLOWED_THIRD_PARTY = {"numpy", "boto3", "botocore", "ml_dtypes"}  # ml_dtypes: optional, lazy


@pytest.mark.parametrize("name", transports.__all__)
def test_every_public_name_exists_and_has_a_docstring(name: str) -> None:
    obj = getattr(transports, name)
    if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj):
        assert inspect.getdoc(obj), f"transports.{name} has no docstring"


def test_importing_transports_pulls_in_no_jax_jaxpipe_or_planners() -> None:
    code = ("import sys, transports; bad = [m for m in ('jax', 'jaxpipe', 'planners', 'pickle')"
            " if m in sys.modules and m != 'pickle']; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_modules_import_only_stdlib_numpy_and_boto3_and_never_pickle() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                assert top not in {"pickle", "cloudpickle", "dill", "jax", "jaxpipe", "planners"}
                assert (top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY
                        or top == "transports"), f"{path.name} imports {name}"


def test_modules_stay_within_the_size_budget() -> None:
    for path in PACKAGE.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path.name
