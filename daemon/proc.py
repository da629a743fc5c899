"""The one way rollbackd runs another program: an argv list (never a shell string), a timeout,
its own session so that it and anything it forks can be killed together, death with rollbackd,
and its output captured (or passed through) and decoded.

Every child command, PostgreSQL client tools, git, systemctl, the app's own commands and a
deploy's migration, goes through here.

Dying with rollbackd: a child runs in a session of its own (so a terminal's Ctrl-C or a kill
of rollbackd's process group does not reach it, and a timeout kills its whole group), which
also means that nothing ended it when rollbackd itself was killed with SIGKILL: a pg_restore
went on and committed a restore nobody was watching any more. On Linux every child therefore
asks the kernel for SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``), set between
fork and exec by a ``preexec_fn``:

* Python warns that ``preexec_fn`` is unsafe with threads (the daemon runs restores in
  ``asyncio.to_thread`` workers): the forked child has only the forking thread, and code that
  needs a lock another thread held at fork time would deadlock. The hook here takes no lock:
  no import, no logging, no I/O; only a ctypes call resolved at import time and
  ``os.getppid``/``os.kill``; CPython takes its import lock around the fork itself.
  (``process_group=``/``start_new_session`` are done in C without Python code, but there is no
  such option for the parent-death signal; a ``setpriv --pdeathsig`` wrapper would depend on
  util-linux's version and hide the real program's name from ``ps`` and tests.)
* The "parent" whose death sends the signal is the forking *thread*: it is the thread that
  waits for the child here, so it lives as long as the child should.
* A parent that died between fork and the ``prctl`` is caught by comparing ``getppid``.
* The setting is not inherited by the child's own forks (pg_dump -j workers), which end when
  their leader does.

Elsewhere (no ``prctl``) children keep their old behaviour: killed on timeout or interruption.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from daemon.fmt import excerpt

TICK = 0.5
"""Seconds between ``on_tick`` calls while a command runs (progress bars poll output sizes)."""


PR_SET_PDEATHSIG = 1


class ProcError(Exception):
    """A command that cannot start or did not finish in time; ``str()`` is for an operator."""


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                      ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _load_prctl()


def _dies_with(parent: int) -> Callable[[], None] | None:
    """The ``preexec_fn`` that makes a child get SIGKILL when ``parent`` dies (Linux)."""
    prctl = _PRCTL
    if prctl is None:
        return None
    kill = int(signal.SIGKILL)

    def preexec() -> None:
        # Runs in the forked child: nothing here may take a lock (see the module docstring).
        if prctl(PR_SET_PDEATHSIG, kill, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before the prctl: nobody would send it
            os.kill(os.getpid(), kill)

    return preexec


def run_process(argv: Sequence[str], *, env: Mapping[str, str], timeout: float,
             stdout: int | IO[bytes] | None = subprocess.PIPE,
             on_tick: Callable[[], None] | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (a list, never a shell string) and wait at most ``timeout`` seconds.

    stderr is always captured (decoded, in the result); stdout too unless ``stdout`` says
    otherwise (``None`` inherits ours, or pass a file). ``on_tick`` is called about every
    half second while it runs. On timeout, or when the wait is interrupted (Ctrl-C), the tool
    and anything it forked (pg_dump -j workers) are killed: the child runs in a session of its
    own, whose id is its pid. If rollbackd dies (even by SIGKILL) the child is killed too.
    Raises ``ProcError`` on timeout or when it cannot start.
    """
    return _run(argv, env=env, timeout=timeout, stdout=stdout, stderr=subprocess.PIPE,
                on_tick=on_tick, cwd=cwd)


def run_passthrough(argv: Sequence[str], *, timeout: float,
                    env: Mapping[str, str] | None = None) -> int:
    """Run ``argv`` with its output streamed to ours; its exit status, or raise on timeout."""
    result = _run(argv, env=dict(os.environ if env is None else env), timeout=timeout,
                  stdout=None, stderr=None, on_tick=None)
    return result.returncode


def _run(argv: Sequence[str], *, env: Mapping[str, str], timeout: float,
         stdout: int | IO[bytes] | None, stderr: int | None,
         on_tick: Callable[[], None] | None,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    args, proc = _start(argv, env=env, stdout=stdout, stderr=stderr, cwd=cwd)
    deadline = time.monotonic() + timeout
    try:
        out, err = _wait(proc, deadline, on_tick)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise ProcError(f"{Path(args[0]).name} did not finish within {timeout:g}s "
                        "and was killed") from None
    except BaseException:
        _kill(proc)
        raise
    return _completed(args, proc, out, err)


def _start(argv: Sequence[str], *, env: Mapping[str, str], stdout: int | IO[bytes] | None,
           stderr: int | None, cwd: Path | None) -> tuple[list[str], subprocess.Popen[bytes]]:
    if isinstance(argv, str):
        raise TypeError("argv must be a list of arguments, not a shell string")
    args = [str(a) for a in argv]
    try:
        return args, subprocess.Popen(args, env=dict(env), stdout=stdout, stderr=stderr,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=cwd,
                                preexec_fn=_dies_with(os.getpid()))
    except OSError as exc:
        raise ProcError(f"cannot run {args[0]}: {exc.strerror or exc}") from None
    except subprocess.SubprocessError as exc:
        raise ProcError(f"cannot run {args[0]}: {exc}") from None


def _completed(args: list[str], proc: subprocess.Popen[bytes], out: bytes | None,
               err: bytes | None) -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(
        args, proc.returncode,
        out.decode(errors="replace") if out is not None else "",
        err.decode(errors="replace") if err is not None else "",
    )


class Running:
    """A child started by :func:`started`, for a caller with work to do while it runs."""

    def __init__(self, args: list[str], proc: subprocess.Popen[bytes]) -> None:
        self._args = args
        self._proc = proc
        self.result: subprocess.CompletedProcess[str] | None = None

    @property
    def pid(self) -> int:
        return self._proc.pid

    def finished(self, within: float) -> subprocess.CompletedProcess[str] | None:
        """The result if the child ends within ``within`` seconds, else None (still running).

        Its output is read meanwhile, so a chatty child never blocks on a full pipe."""
        if self.result is not None:
            return self.result
        try:
            out, err = self._proc.communicate(timeout=max(within, 0.0))
        except subprocess.TimeoutExpired:
            return None
        self.result = _completed(self._args, self._proc, out, err)
        return self.result

    def wait(self, timeout: float) -> subprocess.CompletedProcess[str]:
        """Wait at most ``timeout`` seconds; on timeout kill it and raise ``ProcError``."""
        done = self.finished(timeout)
        if done is None:
            _kill(self._proc)
            raise ProcError(f"{Path(self._args[0]).name} did not finish within {timeout:g}s "
                            "and was killed")
        return done


@contextlib.contextmanager
def started(argv: Sequence[str], *, env: Mapping[str, str]) -> Iterator[Running]:
    """Start ``argv`` (stdout and stderr captured) and yield it while it runs; whatever ends
    the block, a child still running then is killed with everything it forked."""
    args, proc = _start(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=None)
    try:
        yield Running(args, proc)
    finally:
        if proc.poll() is None:
            _kill(proc)


def _wait(proc: subprocess.Popen[bytes], deadline: float,
          on_tick: Callable[[], None] | None) -> tuple[bytes | None, bytes | None]:
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise subprocess.TimeoutExpired(proc.args, 0)
        step = remaining if on_tick is None else min(remaining, TICK)
        try:
            return proc.communicate(timeout=step)
        except subprocess.TimeoutExpired:
            if on_tick is not None:
                on_tick()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the child's own process group (its pid is the group id) and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=10)


def describe_status(returncode: int) -> str:
    """``exit status 3`` or ``killed by SIGKILL``, as a person reads a child's end."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """One command run to its end (``returncode``) or not (``error``: timeout, not startable)."""

    argv: tuple[str, ...]
    returncode: int | None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def output(self) -> str:
        return excerpt(self.stdout, self.stderr)

    def failure(self, what: str) -> str:
        """One line saying how ``what`` failed, with the last line of its output."""
        if self.error is not None:
            return f"{what} failed: {self.error}"
        assert self.returncode is not None
        last = self.output.splitlines()[-1:] or ["no output"]
        return f"{what} failed with {describe_status(self.returncode)}: {last[0]}"


def run_command(argv: Sequence[str], *, timeout: float, cwd: Path | None = None,
                env: Mapping[str, str] | None = None) -> CommandOutcome:
    """Run ``argv`` through :func:`daemon.db.tools.run_tool` (own session, killed on timeout).

    The command is looked up first, so that "not found" is reported as such.
    """
    args = tuple(str(a) for a in argv)
    environ = dict(os.environ if env is None else env)
    if cwd is not None and not cwd.is_dir():
        return CommandOutcome(args, None, error=f"working directory {cwd} does not exist")
    missing = _not_executable(args[0], cwd, environ)
    if missing is not None:
        return CommandOutcome(args, None, error=missing)
    try:
        done = run_process(list(args), env=environ, timeout=max(timeout, 0.001), cwd=cwd)
    except ProcError as exc:
        return CommandOutcome(args, None, error=str(exc))
    return CommandOutcome(args, done.returncode, done.stdout, done.stderr)


def _not_executable(command: str, cwd: Path | None, env: Mapping[str, str]) -> str | None:
    """Why ``command`` cannot be executed, or ``None`` when it can."""
    if "/" in command:
        path = Path(command) if cwd is None else cwd / command
        if path.is_file() and os.access(path, os.X_OK):
            return None
        return f"cannot run {command}: {'not executable' if path.exists() else 'no such file'}"
    if shutil.which(command, path=env.get("PATH", os.defpath)) is None:
        return f"cannot run {command}: not found on PATH"
    return None


class Terminated(BaseException):
    """SIGTERM, raised where it arrives (a BaseException, like KeyboardInterrupt) so that
    cleanup runs: a child killed, a scratch database dropped, a killed migration journaled."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    def _raise(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
