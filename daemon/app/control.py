"""Stopping and starting the application: the side effects behind the ``stop_app`` and
``start_app`` runbook steps.

Three adapters, chosen by ``[app].control``:

* ``systemd``: ``systemctl`` on the app's unit (see :class:`SystemdController` for the polkit
  rule it needs);
* ``command``: the configured ``start`` / ``stop`` argv, run in ``cwd``;
* ``process``: a pidfile and signals; rollbackd spawns ``start`` itself.

Every operation returns a :class:`StepResult` and never raises for a failure it can expect
(a command failing, timing out or missing; a signal not permitted); exceptions are left for
programming errors. Everything is synchronous with every wait bounded; async callers run it
through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from daemon.app.result import StepResult
from daemon.config import CommandControl, Control, ProcessControl, SystemdControl
from daemon.fmt import excerpt
from daemon.proc import CommandOutcome, describe_status, run_command
from probes.process import (
    Identity,
    ProcessQueryError,
    find_by_cmdline,
    observe,
    pidfile_target,
)
from probes.settings import ProcessProbeSettings

POLL = 0.05
KILL_WAIT = 5.0
"""How long a process may take to disappear after SIGKILL (it cannot ignore it, but an
uninterruptible sleep in the kernel delays it)."""
QUERY_TIMEOUT = 10.0
PROCESS_LOG = "app-process.log"
"""The process adapter's start command writes its output here, under the state directory."""
RUNNING_STATES = frozenset({"active", "activating", "deactivating", "reloading", "refreshing"})


class AppController(ABC):
    """Stops and starts the application; :meth:`build` picks the adapter from the config."""

    adapter: str

    @staticmethod
    def build(control: Control, *, state_dir: Path,
              finder: ProcessProbeSettings | None = None) -> AppController:
        """The controller for ``[app].control``.

        ``state_dir``: where the process adapter keeps the start command's log. ``finder``:
        ``[probes.process]``, which lets the command adapter tell whether the app runs.
        """
        if isinstance(control, SystemdControl):
            return SystemdController(control)
        if isinstance(control, CommandControl):
            return CommandController(control, finder=finder)
        if isinstance(control, ProcessControl):
            return ProcessController(control, state_dir=state_dir)
        raise TypeError(f"unknown control adapter {control!r}")

    @abstractmethod
    def stop(self, force: bool, timeout: float) -> StepResult:
        """Stop the app. ``force``: as fast as possible (no grace period where the adapter
        offers one). Stopping an app that is not running succeeds."""

    @abstractmethod
    def start(self, timeout: float) -> StepResult:
        """Start the app and wait, at most ``timeout`` seconds, until it runs."""

    @abstractmethod
    def is_running(self) -> bool | None:
        """Whether the app runs; ``None`` when this cannot be told (the query failed, or the
        adapter has no way to find the process), never a guess."""


class SystemdController(AppController):
    """``systemctl`` on ``[app].control.unit``, without prompts (``--no-ask-password``).

    In production rollbackd is an unprivileged user, and systemd asks polkit whether it may
    act on the unit; the shipped rule (``systemd/rollbackd.polkit.rules.in``) allows the verbs
    start, stop, restart and kill on exactly the app's unit.

    Decision on the forced stop: it is ``systemctl stop --no-block`` (the unit is now being
    stopped, so ``Restart=`` will not bring it back), then ``systemctl kill
    --signal=SIGKILL`` (no grace period), then a blocking ``systemctl stop`` that waits for
    the stop job to finish. ``kill`` is its own polkit verb, which the shipped rule allows; a
    rule without it gets "Access denied" for the kill, reported in the output but not fatal:
    the blocking stop still ends the unit,
    only with the unit's own grace period (``TimeoutStopSec``, then systemd's SIGKILL).
    A graceful stop is one blocking ``systemctl stop``: SIGTERM and the grace period are
    systemd's, as the unit defines them.
    """

    adapter = "systemd"

    def __init__(self, control: SystemdControl) -> None:
        self.unit = control.unit

    def argv(self, *verb: str) -> list[str]:
        """The exact ``systemctl`` command line for ``verb`` (e.g. ``"stop"``)."""
        return ["systemctl", "--no-ask-password", *verb, self.unit]

    def stop(self, force: bool, timeout: float) -> StepResult:
        started = time.monotonic()
        deadline = started + timeout
        notes: list[str] = []
        outputs: list[str] = []
        if force:
            # Queue the stop job first: from then on Restart= cannot revive what SIGKILL ends.
            queued = self._systemctl(("stop", "--no-block"), deadline)
            if not queued.ok:
                return StepResult(False, f"stopping {self.unit}: "
                                  f"{queued.failure('systemctl stop --no-block')}",
                                  queued.output, time.monotonic() - started)
            killed = self._systemctl(("kill", "--signal=SIGKILL"), deadline)
            outputs += [queued.output, killed.output]
            if not killed.ok:
                notes.append(killed.failure("systemctl kill"))
        done = self._systemctl(("stop",), deadline)
        outputs.append(done.output)
        output = excerpt(*outputs)
        if not done.ok:
            return StepResult(False, f"stopping {self.unit}: {done.failure('systemctl stop')}",
                              output, time.monotonic() - started)
        how = "killed (SIGKILL) and stopped" if force else "stopped"
        if notes:
            how = f"stopped, without the immediate SIGKILL ({'; '.join(notes)})"
        return StepResult(True, f"{self.unit} {how}", output, time.monotonic() - started,
                          {"unit": self.unit, "force": force})

    def start(self, timeout: float) -> StepResult:
        started = time.monotonic()
        done = self._systemctl(("start",), started + timeout)
        if not done.ok:
            return StepResult(False, f"starting {self.unit}: {done.failure('systemctl start')}",
                              done.output, time.monotonic() - started)
        return StepResult(True, f"{self.unit} started", done.output, time.monotonic() - started,
                          {"unit": self.unit})

    def is_running(self) -> bool | None:
        done = self._systemctl(("show", "--property=ActiveState"),
                               time.monotonic() + QUERY_TIMEOUT)
        if not done.ok:
            return None
        state = _property(done.stdout, "ActiveState")
        return None if state is None else state in RUNNING_STATES

    def _systemctl(self, verb: Sequence[str], deadline: float) -> CommandOutcome:
        return run_command(self.argv(*verb), timeout=deadline - time.monotonic())


def _property(text: str, name: str) -> str | None:
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == name:
            return value.strip()
    return None


class CommandController(AppController):
    """The configured ``start`` and ``stop`` argv (e.g. ``npm run stop``), run in ``cwd``.

    The config knows no forced variant of the stop command, so ``force`` changes nothing
    here: the command is the operator's contract for stopping the app. Whether the app runs
    is told by ``[probes.process]`` when it is configured (unit, pidfile or command line).
    """

    adapter = "command"

    def __init__(self, control: CommandControl,
                 finder: ProcessProbeSettings | None = None) -> None:
        self.control = control
        self.finder = finder

    def stop(self, force: bool, timeout: float) -> StepResult:
        return self._run("stop", self.control.stop, timeout)

    def start(self, timeout: float) -> StepResult:
        return self._run("start", self.control.start, timeout)

    def _run(self, what: str, argv: list[str], timeout: float) -> StepResult:
        started = time.monotonic()
        done = run_command(argv, timeout=timeout, cwd=self.control.cwd)
        duration = time.monotonic() - started
        name = Path(argv[0]).name
        if not done.ok:
            return StepResult(False, done.failure(f"{what} command ({name})"), done.output,
                              duration, {"argv": list(done.argv)})
        return StepResult(True, f"{what} command ({name}) succeeded", done.output, duration,
                          {"argv": list(done.argv)})

    def is_running(self) -> bool | None:
        finder = self.finder
        if finder is None:
            return None
        if finder.unit is not None:
            return SystemdController(SystemdControl(unit=finder.unit)).is_running()
        if finder.pidfile is not None:
            try:
                return _pidfile_process(finder.pidfile) is not None
            except ProcessQueryError:
                return None
        assert finder.cmdline is not None  # the settings require exactly one finder
        return find_by_cmdline(finder.cmdline) is not None


def _pidfile_process(pidfile: Path) -> Identity | None:
    """The live process the pidfile names, or ``None`` (no pidfile, dead or reused pid).

    A process that started after the pidfile was written is a stranger that reused a stale
    pid: :func:`probes.process.observe` treats it as absent. Raises ``ProcessQueryError``
    for a pidfile that cannot be read or holds no pid.
    """
    pid, written = pidfile_target(pidfile)
    if pid is None:
        return None
    snapshot = observe(pid, not_before=written)
    return None if snapshot is None else snapshot.identity


class ProcessController(AppController):
    """The app as a process named by ``pidfile``; rollbackd starts it and signals it.

    Stop: only the pid the pidfile names, and only while that pid is still the process the
    pidfile was written for (same start time; a process younger than the pidfile reused a
    stale pid and is left alone). Graceful: SIGTERM, up to ``stop_timeout`` for it to exit,
    then SIGKILL. Forced: SIGKILL at once. Start: ``start`` is spawned detached (a session of
    its own, stdin from /dev/null, output appended to ``<state_dir>/app-process.log``) and
    the start succeeds once the pidfile names a live process.

    Under systemd the spawned app is in rollbackd's own control group: a restart of rollbackd
    with the default ``KillMode=control-group`` would end it too. The process adapter suits
    hosts without a service manager for the app; otherwise use ``systemd``.
    """

    adapter = "process"

    def __init__(self, control: ProcessControl, *, state_dir: Path) -> None:
        self.control = control
        self.pidfile = control.pidfile
        self.log_path = state_dir / PROCESS_LOG
        self._children: list[subprocess.Popen[bytes]] = []

    # -- stop ----------------------------------------------------------------------------

    def stop(self, force: bool, timeout: float) -> StepResult:
        started = time.monotonic()
        self._reap()
        try:
            target = _pidfile_process(self.pidfile)
        except ProcessQueryError as exc:
            return StepResult(False, f"cannot tell which process to stop: {exc}",
                              duration=time.monotonic() - started)
        if target is None:
            return StepResult(True, f"not running (no live process named by {self.pidfile})",
                              duration=time.monotonic() - started)
        result = self._kill(target, force, timeout)
        return StepResult(result.ok, result.message, duration=time.monotonic() - started,
                          details={"pid": target.pid, **result.details})

    def _kill(self, target: Identity, force: bool, timeout: float) -> StepResult:
        pid = target.pid
        grace = min(self.control.stop_timeout, timeout)
        if not force:
            error = _send(target, signal.SIGTERM)
            if error is not None:
                return StepResult(False, error)
            waited = time.monotonic()
            if self._wait_gone(target, grace):
                return StepResult(True, f"stopped pid {pid} with SIGTERM in "
                                  f"{time.monotonic() - waited:.1f}s", details={"signal": "TERM"})
        error = _send(target, signal.SIGKILL)
        if error is not None:
            return StepResult(False, error)
        if not self._wait_gone(target, KILL_WAIT):
            return StepResult(False, f"pid {pid} is still there {KILL_WAIT:g}s after SIGKILL "
                              f"(stuck in the kernel? see `ps -o pid,stat,wchan -p {pid}`)")
        if force:
            return StepResult(True, f"killed pid {pid} with SIGKILL (forced stop)",
                              details={"signal": "KILL"})
        return StepResult(True, f"pid {pid} did not exit within {grace:g}s of SIGTERM; "
                          "killed it with SIGKILL", details={"signal": "KILL"})

    def _wait_gone(self, target: Identity, within: float) -> bool:
        deadline = time.monotonic() + within
        while True:
            self._reap()
            if not _alive(target):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL)

    # -- start ---------------------------------------------------------------------------

    def start(self, timeout: float) -> StepResult:
        started = time.monotonic()
        self._reap()
        try:
            running = _pidfile_process(self.pidfile)
        except ProcessQueryError:
            running = None  # a garbled pidfile is rewritten by the start
        if running is not None:
            return StepResult(True, f"already running (pid {running.pid}); not started twice",
                              duration=time.monotonic() - started,
                              details={"pid": running.pid})
        try:
            child, offset = self._spawn()
        except OSError as exc:
            return StepResult(False, f"cannot start {self.control.start[0]}: "
                              f"{exc.strerror or exc}", duration=time.monotonic() - started)
        result = self._wait_started(child, started + timeout)
        return StepResult(result.ok, result.message, self._log_since(offset),
                          time.monotonic() - started, result.details)

    def _spawn(self) -> tuple[subprocess.Popen[bytes], int]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            offset = log.tell()
            child = subprocess.Popen([str(a) for a in self.control.start],
                                     stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._children.append(child)
        return child, offset

    def _wait_started(self, child: subprocess.Popen[bytes], deadline: float) -> StepResult:
        last_error: str | None = None
        while True:
            try:
                found = _pidfile_process(self.pidfile)
            except ProcessQueryError as exc:
                found, last_error = None, str(exc)  # possibly half-written: look again
            if found is not None:
                return StepResult(True, f"started; pid {found.pid} is running",
                                  details={"pid": found.pid})
            status = child.poll()
            if status is not None and status != 0:
                return StepResult(False, f"start command {Path(self.control.start[0]).name} "
                                  f"ended with {describe_status(status)} before "
                                  f"{self.pidfile} named a live process")
            if time.monotonic() >= deadline:
                return self._start_timed_out(child, last_error)
            time.sleep(POLL)

    def _start_timed_out(self, child: subprocess.Popen[bytes],
                         last_error: str | None) -> StepResult:
        why = f" ({last_error})" if last_error else ""
        message = f"{self.pidfile} named no live process in time{why}"
        if child.poll() is None:
            # Ours, by pid: leaving it would make a retry start a second instance.
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(KILL_WAIT)
            message += f"; killed the start command (pid {child.pid})"
        return StepResult(False, message)

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                data = log.read()
        except OSError:
            return ""
        return excerpt(data.decode(errors="replace"))

    def _reap(self) -> None:
        """Collect children of ours that ended, so they do not linger as zombies."""
        self._children = [child for child in self._children if child.poll() is None]

    # -- state ---------------------------------------------------------------------------

    def is_running(self) -> bool | None:
        self._reap()
        try:
            return _pidfile_process(self.pidfile) is not None
        except ProcessQueryError:
            return None


def _alive(target: Identity) -> bool:
    """Whether that very process (pid and start time) is still there and not a zombie."""
    import psutil  # here: only a restart looks at processes (see probes/process.py)

    try:
        proc = psutil.Process(target.pid)
        return proc.create_time() == target.started and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _send(target: Identity, sig: signal.Signals) -> str | None:
    """Send ``sig`` to exactly that process; an error line, or ``None`` (sent, or gone)."""
    import psutil

    try:
        proc = psutil.Process(target.pid)
        if proc.create_time() != target.started:
            return None  # it ended and the pid was reused meanwhile: nothing of ours to stop
        proc.send_signal(sig)
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        return (f"not permitted to send {sig.name} to pid {target.pid} "
                "(it belongs to another user)")
    return None
