"""Health, readiness and metrics over HTTP for the worker services (the gateway serves its own).

`HealthServer` is a minimal HTTP/1.1 server on asyncio (GET only, one request per connection):

- `GET /healthz`: 200 while the process and its event loop answer.
- `GET /readyz`: 200 when every readiness check passes (the database answers `SELECT 1`, NATS is
  connected, the service is consuming); 503 with a JSON body naming what is not ready, and 503 from
  the moment shutdown begins, so a load balancer or supervisor stops sending work.
- `GET /metrics`: the Prometheus text format (infra/metrics.py), after refreshing the gauges read at
  scrape time (JetStream consumer lag).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final, Protocol

from faststream.nats import NatsBroker
from nats.js.errors import NotFoundError

from infra import metrics

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[bool]]
Refresh = Callable[[], Awaitable[None]]

CHECK_TIMEOUT_S: Final = 2.0
_REQUEST_TIMEOUT_S: Final = 5.0
_MAX_REQUEST_BYTES: Final = 8192


class Readiness:
    """Named checks that must all pass; `begin_shutdown` makes the answer 'not ready' for good."""

    def __init__(self, checks: Mapping[str, Check], *, timeout_s: float = CHECK_TIMEOUT_S) -> None:
        self.checks = dict(checks)
        self.timeout_s = timeout_s
        self.shutting_down = False

    def begin_shutdown(self) -> None:
        self.shutting_down = True

    async def report(self) -> tuple[bool, dict[str, Any]]:
        """(ready, body): body is {"status": "ready" | "not ready" | "shutting down", "checks": {name: state},
        "not_ready": [names]}; a state is "ok", "failed", "timed out" or "error: <exception type>"."""
        if self.shutting_down:
            return False, {"status": "shutting down", "checks": {}, "not_ready": ["shutdown"]}
        names = list(self.checks)
        states = await asyncio.gather(*(self._run(self.checks[name]) for name in names))
        checks = dict(zip(names, states, strict=True))
        failing = [name for name, state in checks.items() if state != "ok"]
        return not failing, {"status": "not ready" if failing else "ready", "checks": checks, "not_ready": failing}

    async def _run(self, check: Check) -> str:
        try:
            passed = await asyncio.wait_for(check(), timeout=self.timeout_s)
        except TimeoutError:
            return "timed out"
        except Exception as error:  # a check that raises is a failing check, with its reason
            return f"error: {type(error).__name__}"
        return "ok" if passed else "failed"


class Database(Protocol):
    """What the database check needs of an asyncpg pool."""

    async def fetchval(self, query: str) -> Any: ...


def database_check(pool: Callable[[], Database | None]) -> Check:
    """Passes when the pool (once open) answers `SELECT 1`."""

    async def check() -> bool:
        current = pool()
        return current is not None and await current.fetchval("SELECT 1") == 1

    return check


def nats_check(broker: NatsBroker) -> Check:
    """Passes while the broker's NATS connection is connected."""

    async def check() -> bool:
        return bool(await broker.ping(timeout=1.0))

    return check


def flag_check(flag: Callable[[], bool]) -> Check:
    async def check() -> bool:
        return flag()

    return check


def durable_consumers(broker: NatsBroker) -> list[tuple[str, str]]:
    """(stream, durable) of every JetStream durable consumer this broker's subscribers use."""
    found: list[tuple[str, str]] = []
    for subscriber in broker.subscribers:
        stream = getattr(getattr(subscriber, "stream", None), "name", None)
        durable = getattr(getattr(subscriber, "config", None), "durable_name", None)
        if isinstance(stream, str) and isinstance(durable, str) and (stream, durable) not in found:
            found.append((stream, durable))
    return found


def consumer_gauges(broker: NatsBroker, consumers: Callable[[], Iterable[tuple[str, str]]]) -> Refresh:
    """Reads num_pending and num_ack_pending of `consumers` from JetStream into the lag gauges."""

    async def refresh() -> None:
        if not await broker.ping(timeout=0.2):
            return  # not connected: leave the last figures rather than wait on a dead connection
        js = broker.config.connection_state.stream
        for stream, durable in consumers():
            try:
                info = await js.consumer_info(stream, durable, timeout=1.0)
            except NotFoundError:
                metrics.forget_consumer(stream, durable)
                continue
            metrics.record_consumer_state(
                stream, durable, pending=int(info.num_pending or 0), ack_pending=int(info.num_ack_pending or 0)
            )

    return refresh


def write_ready_file(path: Path, url: str) -> None:
    """Create the ready file holding `url`, atomically: whoever sees it exist reads the whole URL
    (infra/processes.py `read_ready_file`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(url + "\n")
        os.chmod(temporary, 0o644)  # as a touched file would be: a URL, no secret
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class HealthServer:
    """`/healthz`, `/readyz` and `/metrics` on `host:port` (port 0: a free one; `url` says which)."""

    def __init__(
        self,
        readiness: Readiness,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        before_scrape: Refresh | None = None,
        scrape_timeout_s: float = 3.0,
    ) -> None:
        self.readiness = readiness
        self.host = host
        self.port = port
        self.before_scrape = before_scrape
        self.scrape_timeout_s = scrape_timeout_s
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("health server not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)

    def begin_shutdown(self) -> None:
        self.readiness.begin_shutdown()

    async def stop(self) -> None:
        self.readiness.begin_shutdown()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, content_type, body = await self._answer(reader)
            head = (
                f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                f"Content-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away or sent nothing usable in time
        except Exception:
            log.exception("health endpoint failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes]:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=_REQUEST_TIMEOUT_S)
        if len(head) > _MAX_REQUEST_BYTES:
            return _json(400, {"detail": "request head too large"})
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _json(400, {"detail": "malformed request line"})
        method, target = parts[0], parts[1]
        path = target.split("?", 1)[0]
        if path not in ("/healthz", "/readyz", "/metrics"):
            return _json(404, {"detail": f"no {path} here; try /healthz, /readyz or /metrics"})
        if method != "GET":
            return _json(405, {"detail": "only GET"})
        if path == "/healthz":
            status, content_type, body = _json(200, {"status": "ok"})
        elif path == "/readyz":
            ready, report = await self.readiness.report()
            status, content_type, body = _json(200 if ready else 503, report)
        else:
            await self._refresh()
            body, content_type = metrics.exposition()
            status = 200
        return status, content_type, body

    async def _refresh(self) -> None:
        if self.before_scrape is None:
            return
        try:
            await asyncio.wait_for(self.before_scrape(), timeout=self.scrape_timeout_s)
        except Exception:  # a scrape still answers, with the last figures
            log.warning("refreshing scrape-time metrics failed", exc_info=True)


def _json(status: int, body: Mapping[str, Any]) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(body).encode()
