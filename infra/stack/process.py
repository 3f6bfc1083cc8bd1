"""What the three embedded servers share: child processes with a log file, readiness polling, secrets."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

# Readiness is polled this often at first, backing off to _POLL_MAX: NATS is ready in ~20 ms.
_POLL_MIN = 0.005
_POLL_MAX = 0.05


class StackError(RuntimeError):
    """A server of the embedded stack failed to start or stop; the message says which log to read."""


@dataclass(frozen=True)
class RunAs:
    """An unprivileged account a child runs under (PostgreSQL refuses to run as root)."""

    name: str
    uid: int
    gid: int


def log_tail(log_path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log (read from its last 16 KiB: logs only grow)."""
    try:
        with log_path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 16384))
            text = log.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:])


def _identity(run_as: RunAs | None) -> dict[str, Any]:
    """Popen arguments that run a child as `run_as` (no extra groups, private files), or as ourselves."""
    if run_as is None:
        return {}
    return {"user": run_as.uid, "group": run_as.gid, "extra_groups": [], "umask": 0o077}


def spawn(
    argv: Sequence[str | Path],
    *,
    log_path: Path,
    env: Mapping[str, str],
    cwd: Path | None = None,
    run_as: RunAs | None = None,
) -> subprocess.Popen[bytes]:
    """Start a server in its own session, so a Ctrl-C in the parent's terminal does not reach it.

    stdout and stderr are appended to `log_path`; the owner stops the server explicitly, in order.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        log.write(f"--- {stamp} likeness starts: {' '.join(str(a) for a in argv)}\n".encode())
        log.flush()
        return subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            **_identity(run_as),
        )


def run_tool(
    argv: Sequence[str | Path],
    *,
    what: str,
    log_path: Path,
    env: Mapping[str, str],
    run_as: RunAs | None = None,
    cwd: Path | None = None,
    stdin_text: str | None = None,
    timeout: float = 60.0,
) -> None:
    """Run a short-lived helper (initdb, pg_ctl, psql) to completion; its output goes to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"--- likeness runs: {' '.join(str(a) for a in argv)}\n".encode())
        log.flush()
        try:
            done = subprocess.run(
                [str(a) for a in argv],
                input=stdin_text.encode() if stdin_text is not None else None,
                stdin=None if stdin_text is not None else subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
                timeout=timeout,
                check=False,
                **_identity(run_as),
            )
        except subprocess.TimeoutExpired as exc:
            raise StackError(f"{what} did not finish in {timeout:.0f} s; see {log_path}") from exc
    if done.returncode != 0:
        raise StackError(f"{what} failed with exit code {done.returncode}; {log_path} ends with:\n{log_tail(log_path)}")


def wait_until(
    ready: Callable[[], bool],
    *,
    process: subprocess.Popen[bytes],
    what: str,
    log_path: Path,
    timeout: float,
) -> None:
    """Poll `ready` until it holds; fail fast if the process exits, clearly if time runs out."""
    deadline = time.monotonic() + timeout
    pause = _POLL_MIN
    while True:
        if ready():
            return
        code = process.poll()
        if code is not None:
            raise StackError(
                f"{what} exited with code {code} while starting; {log_path} ends with:\n{log_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            raise StackError(
                f"{what} was not ready after {timeout:.0f} s (pid {process.pid}); "
                f"{log_path} ends with:\n{log_tail(log_path)}"
            )
        time.sleep(pause)
        pause = min(pause * 2, _POLL_MAX)


def stop_child(process: subprocess.Popen[bytes], *, sig: signal.Signals, timeout: float) -> None:
    """Send `sig`, wait up to `timeout` for a clean exit, then SIGKILL."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def create_time(pid: int) -> float:
    """When `pid` started (with the pid, it names one process even after pids are reused)."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


def is_recorded_process(pid: int, started: float) -> bool:
    """Whether `pid` is still the live process that started at `started` (pids get reused)."""
    try:
        process = psutil.Process(pid)
        return bool(abs(process.create_time() - started) < 0.5 and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def stop_recorded_process(pid: int, started: float, *, sig: signal.Signals, timeout: float) -> bool:
    """Stop a server that another process started, if `pid` is still that server. True if it was."""
    if not is_recorded_process(pid, started):
        return False
    terminate_pids([pid], sig=sig, timeout=timeout)
    return True


def processes_working_in(folder: Path, *, name: str, cmdline_contains: str | None = None) -> list[int]:
    """Pids of live processes called `name` (a prefix) whose working directory is `folder`.

    Each server starts in a folder of its own, so this finds it even when no pid was recorded.
    """
    try:
        folder = folder.resolve(strict=True)
    except OSError:
        return []
    found = []
    for process in psutil.process_iter(["name"]):
        try:
            if not str(process.info["name"] or "").startswith(name) or Path(process.cwd()) != folder:
                continue
            if cmdline_contains is None or cmdline_contains in process.cmdline():
                found.append(int(process.pid))
        except psutil.Error:
            continue
    return found


def terminate_pids(pids: list[int], *, sig: signal.Signals, timeout: float) -> None:
    """Send `sig` to each process, wait up to `timeout` for all of them to exit, SIGKILL the rest.

    A process that exited but was not reaped yet (a zombie: its parent is still running) counts as gone.
    """
    targets = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            process.send_signal(sig)
            targets.append(process)
        except psutil.Error:
            continue
    if _wait_gone(targets, timeout):
        return
    for process in targets:
        with contextlib.suppress(psutil.Error):
            process.kill()
    _wait_gone(targets, 5.0)


def _gone(process: psutil.Process) -> bool:
    try:
        return bool(process.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def _wait_gone(processes: list[psutil.Process], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    pause = _POLL_MIN
    while not all(_gone(p) for p in processes):
        if time.monotonic() > deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, _POLL_MAX)
    return True


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (0600): secrets, or files that name them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def read_or_create_secret(path: Path, make: Callable[[], str]) -> str:
    """The secret stored in `path` (0600), generated by `make` the first time."""
    if not path.exists():
        write_private(path, make() + "\n")
    return path.read_text().strip()


def clean_env(drop_prefixes: tuple[str, ...] = ()) -> dict[str, str]:
    """This process's environment without variables that would reconfigure a server behind our back."""
    return {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes)}


class ChildServer:
    """One server run as a child process: the stopping and killing every kind shares."""

    shutdown_timeout: float = 15.0
    _process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def request_stop(self) -> None:
        """SIGTERM without waiting, so several servers can shut down at once."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float | None = None) -> None:
        if self._process is not None:
            stop_child(self._process, sig=signal.SIGTERM, timeout=timeout or self.shutdown_timeout)
            self._process = None

    def stop(self, timeout: float | None = None) -> None:
        self.request_stop()
        self.wait_stopped(timeout)

    def kill(self) -> None:
        """SIGKILL, no shutdown at all (fault tests)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None
