"""The layout keeps its shape: arrows point one way, no import circles, no borrowed private names.

The contracts are in pyproject.toml (``[tool.importlinter]``); docs/architecture.md says what
each package owns and may import. Needs no database (the unit tier runs it).
"""

from __future__ import annotations

import ast
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("roastq", "actors", "middleware", "observability")


def _lint_imports() -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(pathlib.Path(sys.executable).parent))
    assert exe, "lint-imports (import-linter) is not installed: `pip install -e '.[test]'`"
    return subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_import_contracts_are_kept():
    done = _lint_imports()
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "BROKEN" not in done.stdout


def _modules():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            yield ".".join(parts), path


def test_no_module_imports_a_private_name_of_another():
    """``from roastq.x import _helper`` couples a module to another's insides: make it public
    (a name without the underscore, documented) or move it where both can reach it."""
    borrowed = []
    for name, path in _modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.level == 0
                and node.module.split(".")[0] in PACKAGES
            ):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        borrowed.append(f"{name}: from {node.module} import {alias.name}")
    assert borrowed == []


def test_the_core_never_reaches_the_worker_module():
    """Sending a message must not import ``actors`` (which builds the worker's broker): the
    core's source names none of the entry point or process packages, even in a late import."""
    found = []
    for name, path in _modules():
        if not name.startswith("roastq"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module]
            found += [
                f"{name} imports {t}" for t in targets if t.split(".")[0] in ("actors", "middleware", "observability")
            ]
    assert found == []
