"""The embedded stack: NATS JetStream, PostgreSQL and an S3-compatible store as local child processes.

`likeness up` starts one and exits, leaving the servers running; `likeness down`, in another process,
stops them from what `<data_dir>/run/stack.json` records (pids and endpoints; 0600, it holds secrets).
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from infra.stack.endpoints import StackEndpoints
from infra.stack.nats import SYNC_ALWAYS_DEFAULT, NatsServer
from infra.stack.objectstore import BUCKET, ObjectStoreServer
from infra.stack.postgres import PostgresServer
from infra.stack.process import create_time, is_recorded_process, stop_recorded_process, write_private

log = logging.getLogger(__name__)

ServerName = Literal["nats", "postgres", "objectstore"]
SERVER_NAMES: tuple[ServerName, ...] = ("nats", "postgres", "objectstore")

# What stops each server cleanly: SIGINT is PostgreSQL's fast shutdown (what `pg_ctl stop -m fast` sends).
_STOP_SIGNALS = {"nats": signal.SIGTERM, "postgres": signal.SIGINT, "objectstore": signal.SIGTERM}
_STATE_FORMAT = 1


def state_path(data_dir: Path) -> Path:
    return data_dir / "run" / "stack.json"


class EmbeddedStack:
    """NATS, PostgreSQL and the object store for one data folder; data survives stop and start.

    `start()` returns the endpoints (fresh free ports each start); `restart_*()` keep a server's port,
    so running services reconnect to the same URL. Use as `with EmbeddedStack(path) as stack: ...`.
    """

    def __init__(
        self, data_dir: Path, *, nats_sync_always: bool = SYNC_ALWAYS_DEFAULT, start_timeout: float = 60.0
    ) -> None:
        self.data_dir = data_dir.absolute()
        self.start_timeout = start_timeout
        self.nats = NatsServer(self.data_dir, sync_always=nats_sync_always)
        self.postgres = PostgresServer(self.data_dir)
        self.objectstore = ObjectStoreServer(self.data_dir)
        self._endpoints: StackEndpoints | None = None

    @property
    def endpoints(self) -> StackEndpoints:
        self._require_started()
        assert self._endpoints is not None
        return self._endpoints

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    def start(self) -> StackEndpoints:
        """Start the three servers (in parallel where they allow it) and wait until each one answers."""
        if self._endpoints is not None:
            return self._endpoints
        self.data_dir.mkdir(parents=True, exist_ok=True)
        leftovers = stop_recorded_stack(self.data_dir)
        if leftovers:
            log.warning("stopped %s left running from %s", ", ".join(leftovers), self.data_dir)
        try:
            self.nats.launch()
            self.objectstore.launch()  # nanio's imports take a few hundred ms: overlap them with initdb
            self.postgres.start(timeout=self.start_timeout)
            self.nats.wait_ready(self.start_timeout)
            self.objectstore.wait_ready(self.start_timeout)
        except BaseException:
            self._stop_servers()
            raise
        access_key, secret_key = self.objectstore.credentials()
        self._endpoints = StackEndpoints(
            nats_url=self.nats.url,
            database_url=self.postgres.url,
            s3_endpoint=self.objectstore.endpoint,
            s3_access_key=access_key,
            s3_secret_key=secret_key,
            s3_bucket=BUCKET,
        )
        self._write_state()
        return self._endpoints

    def stop(self) -> None:
        """Stop all three cleanly (SIGKILL only after a timeout). Data stays in the data folder."""
        self._stop_servers()
        self._endpoints = None
        state_path(self.data_dir).unlink(missing_ok=True)

    def destroy(self) -> None:
        """Stop, then delete the servers' data (and a cluster kept under /var/lib/likeness); logs stay."""
        self.stop()
        self.postgres.remove_external_cluster()
        for folder in (self.nats.root, self.postgres.root, self.objectstore.root):
            shutil.rmtree(folder, ignore_errors=True)

    def restart_nats(self, *, hard: bool = False) -> None:
        """Stop (SIGKILL if `hard`) and start NATS again on the same port; its streams persist."""
        self._require_started()
        self._halt("nats", hard)
        self.nats.launch(port=self.nats.port)
        self.nats.wait_ready(self.start_timeout)
        self._write_state()

    def restart_postgres(self, *, hard: bool = False) -> None:
        """Stop (SIGKILL if `hard`) and start PostgreSQL again on the same port."""
        self._require_started()
        self._halt("postgres", hard)
        self.postgres.start(port=self.postgres.port, timeout=self.start_timeout)
        self._write_state()

    def restart_objectstore(self, *, hard: bool = False) -> None:
        """Stop (SIGKILL if `hard`) and start the object store again on the same port."""
        self._require_started()
        self._halt("objectstore", hard)
        self.objectstore.launch(port=self.objectstore.port)
        self.objectstore.wait_ready(self.start_timeout)
        self._write_state()

    def kill(self, name: ServerName) -> None:
        """SIGKILL one server and leave it down (fault tests); `restart_<name>()` brings it back."""
        self._halt(name, hard=True)
        self._write_state()

    def pids(self) -> dict[str, int]:
        """Process ids of the servers running now, by name (nats, postgres, objectstore)."""
        running = {name: self._server(name).pid for name in SERVER_NAMES}
        return {name: pid for name, pid in running.items() if pid is not None}

    def __enter__(self) -> EmbeddedStack:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _server(self, name: ServerName) -> NatsServer | PostgresServer | ObjectStoreServer:
        servers: dict[str, NatsServer | PostgresServer | ObjectStoreServer] = {
            "nats": self.nats,
            "postgres": self.postgres,
            "objectstore": self.objectstore,
        }
        return servers[name]

    def _halt(self, name: ServerName, hard: bool) -> None:
        server = self._server(name)
        if hard:
            server.kill()
        else:
            server.stop()

    def _require_started(self) -> None:
        if self._endpoints is None:
            raise RuntimeError("the embedded stack is not running; call start() first")

    def _stop_servers(self) -> None:
        for server in (self.nats, self.objectstore, self.postgres):
            server.request_stop()
        for server in (self.nats, self.objectstore, self.postgres):
            server.wait_stopped()

    def _write_state(self) -> None:
        servers = {}
        for name in SERVER_NAMES:
            server = self._server(name)
            if server.pid is not None:
                servers[name] = {"pid": server.pid, "create_time": create_time(server.pid), "port": server.port}
        state = {
            "format": _STATE_FORMAT,
            "data_dir": str(self.data_dir),
            "endpoints": asdict(self.endpoints),
            "servers": servers,
        }
        write_private(state_path(self.data_dir), json.dumps(state, indent=2) + "\n")


def _read_state(data_dir: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(state_path(data_dir).read_text())
    except (OSError, ValueError):
        return None
    return state if state.get("format") == _STATE_FORMAT else None


def recorded_endpoints(data_dir: Path) -> StackEndpoints | None:
    """The endpoints of a stack an earlier process started from `data_dir`, if it is still running."""
    state = _read_state(data_dir)
    if state is None or not stack_running(data_dir):
        return None
    return StackEndpoints(**state["endpoints"])


def stack_running(data_dir: Path) -> bool:
    """Whether any server recorded in `<data_dir>/run/stack.json` is still the process it was."""
    state = _read_state(data_dir)
    if state is None:
        return False
    return any(is_recorded_process(r["pid"], r["create_time"]) for r in state["servers"].values())


def stop_recorded_stack(data_dir: Path, timeout: float = 30.0) -> list[str]:
    """Stop the servers a stack from `data_dir` left running (e.g. `likeness up` in another process).

    Returns the names of the servers it stopped. Recorded pids are checked against their start times, so
    a pid the system has since given to another process is left alone; a server whose pid was never
    recorded (its parent died mid-start) is found by its working directory, which is its own folder.
    """
    stopped: list[str] = []
    state = _read_state(data_dir)
    if state is not None:
        for name in ("nats", "objectstore", "postgres"):
            record = state["servers"].get(name)
            if record is None:
                continue
            sig = _STOP_SIGNALS[name]
            if stop_recorded_process(record["pid"], record["create_time"], sig=sig, timeout=timeout):
                stopped.append(name)
    unrecorded = (NatsServer(data_dir), ObjectStoreServer(data_dir), PostgresServer(data_dir))
    for server in unrecorded:
        if server.stop_leftovers(timeout) and server.name not in stopped:
            stopped.append(server.name)
    state_path(data_dir).unlink(missing_ok=True)
    return stopped


stop_by_pidfiles = stop_recorded_stack
