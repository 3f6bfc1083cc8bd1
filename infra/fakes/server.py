"""Serve an ASGI app on 127.0.0.1 (a free port) from a background thread: fakes for tests and the demo."""

from __future__ import annotations

import threading
import time
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp

from infra.stack.ports import LOOPBACK, free_port


class LoopbackServer:
    """uvicorn in a daemon thread, bound to loopback only. `with LoopbackServer(app) as url: ...`."""

    def __init__(self, app: ASGIApp, *, name: str, ws: str = "none") -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        config = uvicorn.Config(
            app, host=LOOPBACK, port=self.port, log_level="warning", access_log=False, lifespan="off", ws=ws
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"fake-{name}", daemon=True)

    def start(self, timeout_s: float = 10.0) -> str:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the fake {self.name} server on {self.url} stopped while starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the fake {self.name} server on {self.url} did not start in {timeout_s:.0f} s")
            time.sleep(0.01)
        return self.url

    def stop(self, timeout_s: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
