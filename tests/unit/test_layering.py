"""Imports go down only (DESIGN.md section 1, Layout), checked on the source with ast.

daemon's rooms, high to low::

    daemon.__main__ > daemon.cli > daemon.service > daemon.ops > daemon.runbooks
        > {daemon.app, daemon.db, daemon.paging} > the base modules

A module may import its own room and any lower layer; rooms on the same layer never import
each other. The base modules (journal, config, locks, durable, logs, proc, fmt and the
``daemon`` package itself) are one room. ``service`` may import ``ops``: ops is what the CLI,
the HTTP API and the executor share.

Between the packages: ``policies`` imports neither ``probes`` nor ``daemon``; ``probes``
imports ``policies`` (samples, units, stats) but never ``daemon``; ``daemon`` imports both.

Every import counts wherever it is: at the top, inside a function (lazy), under
``TYPE_CHECKING``, and ``importlib.import_module("...")`` with a literal name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.paths import ROOT

PACKAGES = ("daemon", "policies", "probes")

# What each package may import of the three (daemon's rooms are checked separately).
PACKAGE_IMPORTS = {
    "daemon": {"daemon", "policies", "probes"},
    "probes": {"probes", "policies"},
    "policies": {"policies"},
}

BASE = "daemon (base modules)"
BASE_MODULES = ("daemon", "daemon.journal", "daemon.config", "daemon.locks", "daemon.durable",
                "daemon.logs", "daemon.proc", "daemon.fmt")

# daemon's rooms by layer, highest first.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("daemon.__main__",),
    ("daemon.cli",),
    ("daemon.service",),
    ("daemon.ops",),
    ("daemon.runbooks",),
    ("daemon.app", "daemon.db", "daemon.paging"),
    (BASE,),
)
LAYER_OF = {room: depth for depth, rooms in enumerate(LAYERS) for room in rooms}
ROOM_PACKAGES = {room.removeprefix("daemon.") for rooms in LAYERS[1:-1] for room in rooms}

# What may sit in daemon/ itself, besides the rooms' directories.
ROOT_FILES = ({f"{m.removeprefix('daemon.')}.py" for m in BASE_MODULES if m != "daemon"}
              | {"__init__.py", "__main__.py", "py.typed"})


def room_of(module: str) -> str | None:
    """The room ``module`` belongs to, or None when it is in no layer."""
    if module in BASE_MODULES:
        return BASE
    for room in LAYER_OF:
        if module == room or module.startswith(room + "."):
            return room
    return None


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules(root: Path) -> dict[str, Path]:
    """Every module of the three packages under ``root``, by dotted name."""
    return {module_name(path, root): path
            for package in PACKAGES for path in sorted((root / package).rglob("*.py"))}


@dataclass(frozen=True)
class Import:
    line: int
    target: str  # the module imported, resolved to its dotted name
    text: str  # the import as written


def imports_of(module: str, source: str, known: Iterable[str], is_package: bool = False
               ) -> Iterator[Import]:
    """Every import in ``source`` (of ``module``), at any depth, with its resolved target.

    ``from a import b`` targets ``a.b`` when that is a module in ``known``, else ``a``.
    """
    known = set(known)
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(node.lineno, alias.name, _text(source, node))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base_parts = parts[:len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield Import(node.lineno, candidate if candidate in known else base,
                             _text(source, node))
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and (
                  (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                  or (isinstance(node.func, ast.Name)
                      and node.func.id in ("import_module", "__import__")))):
            yield Import(node.lineno, node.args[0].value, _text(source, node))


def _text(source: str, node: ast.AST) -> str:
    """The statement as written, on one line."""
    return " ".join((ast.get_source_segment(source, node) or "").split())


def why_not(importer: str, target: str) -> str | None:
    """Why ``importer`` may not import ``target``; None when it may."""
    mine, theirs = importer.split(".")[0], target.split(".")[0]
    if theirs not in PACKAGES or mine not in PACKAGES:
        return None
    if theirs not in PACKAGE_IMPORTS[mine]:
        return f"{mine} never imports {theirs}"
    if mine != "daemon" or theirs != "daemon":
        return None
    my_room, their_room = room_of(importer), room_of(target)
    if their_room is None:
        return f"{target} is in no layer"
    if my_room is None:
        return f"{importer} is in no layer"
    if my_room == their_room or LAYER_OF[their_room] > LAYER_OF[my_room]:
        return None
    if LAYER_OF[their_room] == LAYER_OF[my_room]:
        return f"{my_room} and {their_room} are on the same layer and never import each other"
    return f"{their_room} is above {my_room}"


def violations(module: str, source: str, known: Iterable[str], where: str = "",
               is_package: bool = False) -> list[str]:
    """One line per forbidden import: file:line, the module, the import as written, and why."""
    found = []
    for imp in imports_of(module, source, known, is_package):
        reason = why_not(module, imp.target)
        if reason is not None:
            found.append(f"{where or module}:{imp.line}: {module} imports {imp.target} "
                         f"({imp.text!r}): {reason}")
    return found


def tree_violations(root: Path) -> list[str]:
    modules = source_modules(root)
    found = []
    for module, path in modules.items():
        found += violations(module, path.read_text(), modules, str(path.relative_to(root)),
                            is_package=path.name == "__init__.py")
    return found


def stray_in_daemon(root: Path) -> list[str]:
    """What sits in daemon/ that is neither a base module, __init__/__main__/py.typed, nor a
    room's directory."""
    found = []
    for entry in sorted((root / "daemon").iterdir()):
        if entry.name == "__pycache__":
            continue
        if entry.is_dir():
            if entry.name not in ROOM_PACKAGES:
                rooms = ", ".join(sorted(ROOM_PACKAGES))
                found.append(f"daemon/{entry.name}/ is not a room ({rooms})")
        elif entry.name not in ROOT_FILES:
            found.append(f"daemon/{entry.name} lives in daemon/ itself but is not a base module "
                         f"({', '.join(sorted(ROOT_FILES))})")
    return found


# -- the source as it is ------------------------------------------------------------------


def test_every_import_in_daemon_policies_and_probes_goes_down() -> None:
    found = tree_violations(ROOT)
    assert found == [], "imports against the layers:\n" + "\n".join(found)


def test_daemon_itself_holds_only_the_base_modules_and_the_rooms() -> None:
    found = stray_in_daemon(ROOT)
    assert found == [], "\n".join(found)


def test_the_checker_sees_the_whole_tree() -> None:
    modules = source_modules(ROOT)
    assert {"daemon", "daemon.__main__", "daemon.cli", "daemon.service.api", "daemon.db.backups",
            "policies.engine", "probes.base"} <= set(modules)
    # The lazy imports it must see are there: cli.run imports the service inside a function.
    lazy = [i for i in imports_of("daemon.cli.run", modules["daemon.cli.run"].read_text(),
                                  modules) if i.target == "daemon.service.loop"]
    assert lazy, "daemon.cli.run's function-level import of daemon.service.loop was not seen"


# -- the checker on imports that break the rules ------------------------------------------

KNOWN = set(source_modules(ROOT)) | {"daemon.runbooks", "daemon.paging"}


@pytest.mark.parametrize(("module", "source", "line", "reason"), [
    pytest.param("daemon.db.backups",
                 "import json\n\n\ndef f():\n    from daemon.ops.common import OpsError\n",
                 5, "daemon.ops is above daemon.db", id="a lazy import of a higher room"),
    pytest.param("daemon.ops.common", "import daemon.service.api\n",
                 1, "daemon.service is above daemon.ops", id="ops importing service"),
    pytest.param("daemon.journal", "from daemon import cli\n",
                 1, "daemon.cli is above daemon (base modules)", id="base importing cli"),
    pytest.param("daemon.app.code", "from daemon.db.admin import connect\n",
                 1, "daemon.app and daemon.db are on the same layer", id="sibling rooms"),
    pytest.param("daemon.paging.outbox", "from daemon.runbooks import executor\n",
                 1, "daemon.runbooks is above daemon.paging", id="paging importing runbooks"),
    pytest.param("daemon.runbooks.executor", "from daemon.ops import deploys\n",
                 1, "daemon.ops is above daemon.runbooks", id="runbooks importing ops"),
    pytest.param("daemon.cli.check", "import daemon.__main__\n",
                 1, "daemon.__main__ is above daemon.cli", id="cli importing __main__"),
    pytest.param("daemon.fmt", "import importlib\n\nimportlib.import_module('daemon.ops.common')\n",
                 3, "daemon.ops is above daemon (base modules)", id="importlib"),
    pytest.param("daemon.config", "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                 "    from daemon.db.backups import Manifest\n",
                 4, "daemon.db is above daemon (base modules)", id="a TYPE_CHECKING import"),
    pytest.param("daemon.db.restore.swap", "from ...ops import common\n",
                 1, "daemon.ops is above daemon.db", id="a relative import"),
    pytest.param("policies.engine", "from probes.base import one_line\n",
                 1, "policies never imports probes", id="policies importing probes"),
    pytest.param("probes.http", "def f():\n    import daemon.config\n",
                 2, "probes never imports daemon", id="probes importing daemon"),
    pytest.param("policies.replay", "from daemon.journal import Journal\n",
                 1, "policies never imports daemon", id="policies importing daemon"),
    pytest.param("daemon.cli.run", "import daemon.webhooks\n",
                 1, "daemon.webhooks is in no layer", id="a module in no layer"),
])
def test_an_import_against_the_layers_is_named_with_its_module_line_and_text(
        module: str, source: str, line: int, reason: str) -> None:
    [found] = violations(module, source, KNOWN)

    statement = source.splitlines()[line - 1].strip()
    assert found.startswith(f"{module}:{line}: {module} imports "), found
    assert f"({statement!r})" in found, found
    assert found.endswith(reason) or f": {reason}" in found, found


@pytest.mark.parametrize(("module", "source"), [
    pytest.param("daemon.service.api", "from daemon.ops.operator import gather_status\n",
                 id="service uses ops"),
    pytest.param("daemon.cli.backup", "from daemon.db.backups import Kind\n",
                 id="cli skips layers down"),
    pytest.param("daemon.ops.deploys", "from daemon.app.snapshot import code_version\n",
                 id="ops uses app"),
    pytest.param("daemon.runbooks.executor", "from daemon.paging import outbox\n",
                 id="runbooks uses paging"),
    pytest.param("daemon.db.restore.swap", "from daemon.db.admin import session\n"
                 "from ..backups import BackupStore\n", id="its own room, relative too"),
    pytest.param("daemon.proc", "from daemon.fmt import excerpt\nfrom daemon import __version__\n",
                 id="base modules among themselves"),
    pytest.param("daemon.__main__", "from daemon.cli import main\n", id="__main__ runs cli"),
    pytest.param("daemon.app.control", "from probes.process import observe\n"
                 "from policies.units import Duration\n", id="daemon uses probes and policies"),
    pytest.param("probes.base", "from policies.samples import Reading\n",
                 id="probes use policies"),
    pytest.param("daemon.db.admin", "import psycopg\nfrom pathlib import Path\n",
                 id="third-party and standard library"),
])
def test_imports_that_go_down_or_stay_in_their_room_pass(module: str, source: str) -> None:
    assert violations(module, source, KNOWN) == []


def test_a_stray_module_or_directory_in_daemon_is_named(tmp_path: Path) -> None:
    (tmp_path / "daemon" / "db").mkdir(parents=True)
    for name in ("__init__.py", "__main__.py", "py.typed", "journal.py", "fmt.py",
                 "helpers.py", "db/__init__.py"):
        (tmp_path / "daemon" / name).write_text("")
    (tmp_path / "daemon" / "webhooks").mkdir()
    (tmp_path / "daemon" / "__pycache__").mkdir()

    found = stray_in_daemon(tmp_path)

    assert len(found) == 2, found
    assert found[0].startswith("daemon/helpers.py lives in daemon/ itself")
    assert found[1].startswith("daemon/webhooks/ is not a room")


def test_a_whole_tree_is_checked_file_by_file(tmp_path: Path) -> None:
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "daemon" / "ops").mkdir()
    (tmp_path / "daemon" / "ops" / "__init__.py").write_text("")
    (tmp_path / "daemon" / "ops" / "common.py").write_text("X = 1\n")
    (tmp_path / "daemon" / "fmt.py").write_text(
        '"""Times."""\n\n\ndef when() -> str:\n    from daemon.ops.common import X\n'
        "    return str(X)\n")

    assert tree_violations(tmp_path) == [
        "daemon/fmt.py:5: daemon.fmt imports daemon.ops.common "
        "('from daemon.ops.common import X'): daemon.ops is above daemon (base modules)"]
