"""``rollbackd demo``: the example app's bad release, caught and rolled back, end to end.

The machinery is not part of the installed package: it lives in the checkout's
``examples/demo.py`` (with the example app it deploys and breaks), imported when the verb
runs. Exit codes: 0 every check verified, 1 a step that did not happen or a check not met,
2 the demo cannot run here (no checkout, no PostgreSQL server binaries), 130 interrupted.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import click

from daemon.cli.common import EXIT_USAGE, fail
from daemon.cli.deploy import duration_param

SCENARIOS = ("bad-migration", "error-spike", "slow-release", "data-corruption", "fleet")
"""As examples/demo.py defines them (a unit test keeps the two in step)."""

NEEDS_CHECKOUT = ("the demo needs a checkout of rollbackd (its examples/ directory is not "
                  "importable here): run scripts/demo in the repository")


def checkout_root() -> Path | None:
    """The checkout this rollbackd runs from, when it is one (``examples/demo.py`` beside
    the ``daemon`` package)."""
    root = Path(__file__).resolve().parent.parent.parent
    return root if (root / "examples" / "demo.py").is_file() else None


def load_demo() -> ModuleType | None:
    """``examples.demo`` of this checkout, or None when there is none."""
    root = checkout_root()
    if root is None:
        return None
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module("examples.demo")
    except ImportError as exc:
        if exc.name in ("examples", "examples.demo"):
            return None
        raise
    return module if hasattr(module, "run_demo") else None


@click.command()
@click.option("--scenario", type=click.Choice(SCENARIOS), default="bad-migration",
              show_default=True, help="Which bad release to ship.")
@click.option("--keep", is_flag=True,
              help="Leave everything running at the end and print how to reach it.")
@click.option("--timeout", default="90s", show_default=True, callback=duration_param,
              help="How long rollbackd gets from the deploy to the resolved incident.")
@click.option("--record", type=click.Path(dir_okay=False, path_type=Path),
              help="Run rollbackd with --record FILE; at the end write its decisions to "
                   "FILE.decisions.jsonl and its policy to FILE.policy.toml, for simulate.")
def demo(scenario: str, keep: bool, timeout: float, record: Path | None) -> None:
    """Ship a bad release of the example app and watch rollbackd roll it back.

    Starts a throwaway PostgreSQL, the example app v1 with data and live traffic, and
    `rollbackd run` in auto mode; ships v2 with `rollbackd deploy run`; follows rollbackd as
    it detects, decides, runs the runbook, validates and resolves; then verifies v1 serves,
    every row written before the deploy is there and those after it are kept, and prints the
    incident report. Everything it started is stopped at the end (unless --keep) and on
    Ctrl-C.

    --scenario fleet runs three app hosts on the one database, each with its own rollbackd in
    one [fleet]: the database is restored once and every host rolls back.

    With --record FILE, `rollbackd simulate --policy FILE.policy.toml --replay FILE` takes
    the decisions FILE.decisions.jsonl lists (one host: not with --scenario fleet).
    """
    module = load_demo()
    if module is None:
        fail(NEEDS_CHECKOUT, EXIT_USAGE)
    extra = {} if record is None else {"record": record}
    code: int = module.run_demo(scenario, keep=keep, timeout=timeout, **extra)
    sys.exit(code)
