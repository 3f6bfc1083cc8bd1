"""The four services as separate OS processes: start, wait until ready, stop (or kill, for fault tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SERVICES = ("storage", "provider_adapter", "scoring", "gateway")


class ServiceFailed(RuntimeError):
    pass


@dataclass
class ServiceProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    ready_file: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log yet)"


class ServiceSet:
    """Runs `python -m services.<name>` children with the stack's environment plus `env`.

    Each writes its log to `<data dir>/logs/<name>.log` and its trace spans to `<data dir>/traces/<name>.jsonl`
    (`likeness trace` reads them; `env` may name another LIKENESS_TRACE_FILE).
    """

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.env = env
        self.running: dict[str, ServiceProcess] = {}
        (data_dir / "logs").mkdir(parents=True, exist_ok=True)
        (data_dir / "run").mkdir(parents=True, exist_ok=True)

    def start(self, name: str) -> ServiceProcess:
        ready_file = self.data_dir / "run" / f"{name}.ready"
        ready_file.unlink(missing_ok=True)
        log_path = self.data_dir / "logs" / f"{name}.log"
        trace_file = self.data_dir / "traces" / f"{name}.jsonl"
        env = {
            **os.environ,
            "LIKENESS_TRACE_FILE": str(trace_file),
            **self.env,
            "LIKENESS_READY_FILE": str(ready_file),
            "PYTHONUNBUFFERED": "1",
        }
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C in the terminal reaches the CLI, which stops us in order
            )
        service = ServiceProcess(name, process, log_path, ready_file)
        self.running[name] = service
        self._write_pids()
        return service

    def wait_ready(self, names: tuple[str, ...] | list[str], timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        pending = list(names)
        while pending:
            for name in list(pending):
                service = self.running[name]
                if service.ready_file.exists():
                    pending.remove(name)
                elif service.process.poll() is not None:
                    raise ServiceFailed(
                        f"{name} exited with code {service.process.returncode} while starting; "
                        f"its log ({service.log_path}) ends with:\n{service.log_tail()}"
                    )
            if pending and time.monotonic() > deadline:
                raise ServiceFailed(f"{', '.join(pending)} not ready after {timeout_s:.0f} s; see {self.data_dir}/logs")
            time.sleep(0.05)

    def start_all(self, names: tuple[str, ...] = SERVICES, timeout_s: float = 120.0) -> None:
        """Storage first (it owns the schema the gateway reads), then the rest together."""
        self.start(names[0])
        self.wait_ready([names[0]], timeout_s)
        for name in names[1:]:
            self.start(name)
        self.wait_ready(list(names[1:]), timeout_s)

    def kill(self, name: str) -> None:
        """SIGKILL: no shutdown handlers run (fault tests)."""
        service = self.running.pop(name)
        service.process.kill()
        service.process.wait()
        self._write_pids()

    def stop(self, name: str, timeout_s: float = 20.0) -> int | None:
        service = self.running.pop(name, None)
        if service is None:
            return None
        if service.process.poll() is None:
            service.process.send_signal(signal.SIGTERM)
            try:
                service.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()
        self._write_pids()
        return service.process.returncode

    def stop_all(self) -> dict[str, int | None]:
        # the gateway first (no new work), storage last (it records what the others finish)
        return {name: self.stop(name) for name in reversed(SERVICES) if name in self.running}

    def pids(self) -> dict[str, int]:
        return {name: service.process.pid for name, service in self.running.items()}

    def urls(self) -> dict[str, str]:
        """Each running, ready service's base URL (/healthz, /readyz, /metrics; the gateway's API)."""
        return {
            name: url
            for name, service in self.running.items()
            if service.process.poll() is None and (url := read_ready_file(service.ready_file)) is not None
        }

    def _write_pids(self) -> None:
        path = self.data_dir / "run" / "services.json"
        path.write_text(json.dumps(self.pids()))


def read_ready_file(path: Path) -> str | None:
    """The base URL a ready file holds (infra/observability.py `write_ready_file`); None when the file is
    absent or holds no URL."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return text if text.startswith(("http://", "https://")) else None


def service_urls(data_dir: Path) -> dict[str, str]:
    """The base URLs in the ready files of services started from `data_dir` (by this process or an earlier
    `likeness up`), by service name; a service without a ready file holding a URL is left out."""
    found = {name: read_ready_file(data_dir / "run" / f"{name}.ready") for name in SERVICES}
    return {name: url for name, url in found.items() if url is not None}


def stop_recorded_services(data_dir: Path, timeout_s: float = 20.0) -> list[str]:
    """Stop services started by an earlier `likeness up` (from their recorded pids)."""
    path = data_dir / "run" / "services.json"
    if not path.exists():
        return []
    pids: dict[str, int] = json.loads(path.read_text())
    stopped = []
    for name in reversed(SERVICES):
        pid = pids.get(name)
        if pid is None or not _alive(pid):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        stopped.append(name)
    path.unlink(missing_ok=True)
    return stopped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return True
    return status != "Z"
