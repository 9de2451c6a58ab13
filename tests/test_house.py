"""The house rules (docs/design.md): which package may import which, no module shadowed by a
function of its own name, no two public classes sharing a name, modules of a readable size.

Each rule is a small function over source files, tested on a hand-made bad example first, so a
rule that silently stopped finding anything would fail here too.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# package folder -> top-level packages (or dotted prefixes) its modules must never import
FORBIDDEN = {
    "planners": ("jax", "flax", "jaxpipe", "transports", "pickle"),
    "transports": ("jax", "flax", "jaxpipe", "planners", "pickle"),
    "jaxpipe/staging": ("jaxpipe.runtime", "jaxpipe.deploy", "jaxpipe.cli", "jaxpipe.models",
                        "transports", "pickle"),
    "jaxpipe": ("pickle", "cloudpickle", "dill"),
}
PACKAGES = ("jaxpipe", "jaxpipe.staging", "jaxpipe.runtime", "jaxpipe.runtime.platforms",
            "jaxpipe.models", "jaxpipe.deploy", "planners", "transports")
MAX_LINES = 400


def imported_names(path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted module name) of every import in a file, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                raise AssertionError(f"{path}:{node.lineno}: use absolute imports")
            yield node.lineno, module
            for alias in node.names:  # `from jaxpipe import runtime` imports jaxpipe.runtime
                yield node.lineno, f"{module}.{alias.name}"


def import_violations(folder: Path, forbidden: tuple[str, ...]) -> list[str]:
    """Every import under `folder` of a forbidden package or module (prefix match on dots)."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        seen: set[int] = set()
        for line, name in imported_names(path):
            if line not in seen and any(name == bad or name.startswith(bad + ".")
                                        for bad in forbidden):
                seen.add(line)  # one report per import statement
                found.append(f"{path.relative_to(folder.parent)}:{line} imports {name}")
    return found


def shadowed_modules(package: str) -> list[str]:
    """Submodules of `package` hidden by a non-module attribute of the same name."""
    pkg = importlib.import_module(package)
    found = []
    for info in pkgutil.iter_modules(pkg.__path__):
        attr = getattr(pkg, info.name, None)
        if attr is not None and not isinstance(attr, type(sys)):
            found.append(f"{package}.{info.name} is shadowed by {type(attr).__name__} "
                         f"{info.name!r}")
    return found


def public_classes(folders: list[Path], skip: tuple[Path, ...] = ()) -> dict[str, list[str]]:
    """Public top-level class name -> the files defining it (files under `skip` left out)."""
    where: dict[str, list[str]] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            if any(path.is_relative_to(s) for s in skip):
                continue
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                    where.setdefault(node.name, []).append(str(path.relative_to(REPO)))
    return where


# -- the rules work on bad examples --------------------------------------------------------------


def test_the_import_rule_catches_staging_importing_the_runtime(tmp_path: Path) -> None:
    bad = tmp_path / "staging"
    bad.mkdir()
    (bad / "ok.py").write_text("import jax\nfrom jaxpipe.staging import batch\n")
    (bad / "tracing.py").write_text("import os\nfrom jaxpipe.runtime.job import Keys\n")
    (bad / "split.py").write_text("from jaxpipe import runtime\n")
    found = import_violations(bad, FORBIDDEN["jaxpipe/staging"])
    assert found == ["staging/split.py:1 imports jaxpipe.runtime",
                     "staging/tracing.py:2 imports jaxpipe.runtime.job"]


def test_the_import_rule_catches_a_leaf_library_importing_another(tmp_path: Path) -> None:
    bad = tmp_path / "planners"
    bad.mkdir()
    (bad / "cost.py").write_text("import numpy\nimport transports.codec\n")
    assert import_violations(bad, FORBIDDEN["planners"]) == [
        "planners/cost.py:2 imports transports.codec"]


def test_the_shadow_rule_catches_a_function_named_like_its_module(tmp_path: Path,
                                                                   monkeypatch) -> None:
    pkg = tmp_path / "shadowpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from shadowpkg.plan import plan\nfrom shadowpkg import ok\n")
    (pkg / "plan.py").write_text("def plan():\n    return 1\n")
    (pkg / "ok.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert shadowed_modules("shadowpkg") == ["shadowpkg.plan is shadowed by function 'plan'"]


# -- the rules hold in the house -----------------------------------------------------------------


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_imports_point_only_down(folder: str) -> None:
    assert import_violations(REPO / folder, FORBIDDEN[folder]) == []


def test_importing_jaxpipe_loads_neither_the_runtime_nor_flax() -> None:
    """A function that only runs a stage bundle imports jaxpipe; it must not pay for the rest."""
    code = ("import sys, jaxpipe; print([m for m in ('jaxpipe.runtime', 'flax', 'transports')"
            " if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_shadowed_by_a_function_of_its_name(package: str) -> None:
    assert shadowed_modules(package) == []


def test_no_two_public_classes_share_a_name() -> None:
    """Library classes only: the zoo's model files each have their own `Stem` and `Head`
    submodules, whose class names Flax writes into parameter paths."""
    where = public_classes([REPO / "jaxpipe", REPO / "planners", REPO / "transports"],
                           skip=(REPO / "jaxpipe" / "models",))
    assert {name: files for name, files in where.items() if len(files) > 1} == {}


def test_modules_stay_readable() -> None:
    """Every module under MAX_LINES, but `errors.py`: a catalogue of one class per mistake, each
    with the docstring that says its fix, read by looking a class up, not top to bottom."""
    long = [f"{p.relative_to(REPO)}: {n} lines" for folder in ("jaxpipe", "planners", "transports")
            for p in sorted((REPO / folder).rglob("*.py"))
            if p.name != "errors.py" and (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert long == []
