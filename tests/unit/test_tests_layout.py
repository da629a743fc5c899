"""The tests' own layout: helpers come from tests.harness only, e2e modules are marked e2e, and
unit modules start no servers."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.harness.paths import ROOT

TESTS = ROOT / "tests"
# Harness modules that start servers or real processes, or need them.
SERVER_HARNESS = {"tests.harness.processes", "tests.harness.prometheus_server",
                  "tests.harness.alertmanager_server", "tests.harness.data",
                  "tests.harness.drill", "tests.harness.restores",
                  "tests.harness.incidents", "tests.harness.rollbacks"}
SERVER_FIXTURES = {"pg_cluster", "pg_db", "pg_private"}


def python_files() -> list[Path]:
    return sorted(TESTS.rglob("*.py"))


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def test_modules_under_tests_import_helpers_from_tests_harness_only() -> None:
    found = [f"{where(path, line)}: imports {module}"
             for path in python_files()
             for line, module in imported_modules(ast.parse(path.read_text()))
             if module.startswith("tests.") and not module.startswith("tests.harness")]
    assert found == [], "import test helpers from tests.harness, not from a test module:\n" \
        + "\n".join(found)


def test_every_e2e_module_is_marked_e2e() -> None:
    unmarked = []
    for path in sorted((TESTS / "e2e").glob("test_*.py")):
        marks = [ast.unparse(node.value) for node in ast.parse(path.read_text()).body
                 if isinstance(node, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)]
        if not any("pytest.mark.e2e" in mark for mark in marks):
            unmarked.append(str(path.relative_to(ROOT)))
    assert unmarked == [], "add `pytestmark = pytest.mark.e2e` to:\n" + "\n".join(unmarked)


def test_unit_modules_use_no_server_fixtures_or_server_harness() -> None:
    found = []
    for path in sorted((TESTS / "unit").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        found += [f"{where(path, line)}: imports {module}"
                  for line, module in imported_modules(tree) if module in SERVER_HARNESS]
        found += [f"{where(path, node.lineno)}: {node.name} asks for the fixture {arg.arg}"
                  for node in ast.walk(tree)
                  if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                  for arg in node.args.args if arg.arg in SERVER_FIXTURES]
    assert found == [], "tests/unit/ is for tests without servers; move these to " \
        "tests/integration/ or tests/e2e/:\n" + "\n".join(found)
