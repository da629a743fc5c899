"""The replay fixtures under tests/replays and how their decisions are compared."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.harness.cli import ROLLBACKD
from tests.harness.paths import REPLAYS, ROOT

BUNDLED = "builtin:visionforge"
FIELDS = ("t", "kind", "incident", "scenario", "severity", "action", "requested_action",
          "timeline_s", "mode", "reason")

# Replays that simulate a daemon mode other than auto.
MODES = {"dry_run_mode": "dry-run"}


def fixture_names() -> list[str]:
    return sorted(p.name.removesuffix(".expected.jsonl")
                  for p in REPLAYS.glob("*.expected.jsonl"))


def policy_for(name: str) -> str:
    own = REPLAYS / f"{name}.policy.toml"
    return str(own) if own.exists() else BUNDLED


def decisions(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def mismatches(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    wrong = [f"{key}: expected {expected[key]!r}, got {actual.get(key)!r}"
             for key in FIELDS if key != "reason" and expected[key] != actual.get(key)]
    if expected["reason"] not in actual.get("reason", ""):
        wrong.append(f"reason: {actual.get('reason')!r} does not say {expected['reason']!r}")
    if set(actual) != set(FIELDS):
        wrong.append(f"keys: {sorted(actual)} are not the contract's {sorted(FIELDS)}")
    return wrong


# The child below runs `rollbackd ARGS` once per argv it is given, through the console
# script's own entry point (daemon.cli.main), each with its own stdout, stderr and exit
# status: the interpreter and its imports (most of a short simulate's second) are paid once.
_MANY = """\
import contextlib, io, json, sys
from daemon.cli import main
results = []
for argv in json.load(sys.stdin):
    out, err, code = io.StringIO(), io.StringIO(), 0
    sys.argv = ["rollbackd", *argv]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    results.append([code, out.getvalue(), err.getvalue()])
json.dump(results, sys.stdout)
"""


def rollbackd_many(argvs: list[list[str]], timeout: float = 120
                   ) -> list[tuple[int, str, str]]:
    """``rollbackd ARGV`` for each of ``argvs``, in one child process, in order: each one's
    (exit status, stdout, stderr). Whatever the child writes to its own stderr outside the
    runs (a warning, a log line that escaped) is added to every run's stderr, so that a check
    for an empty stderr still sees it."""
    done = subprocess.run([ROLLBACKD[0], "-c", _MANY],
                          input=json.dumps(argvs), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the simulate batch exited {done.returncode}: {done.stderr[-3000:]}")
    results = json.loads(done.stdout)
    assert len(results) == len(argvs), (len(results), len(argvs))
    return [(int(code), out, err + done.stderr) for code, out, err in results]
