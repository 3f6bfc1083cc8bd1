"""Free TCP ports on the loopback interface."""

from __future__ import annotations

import socket
from collections import deque

LOOPBACK = "127.0.0.1"

# The machines this project runs on also run a system NATS (4222) and PostgreSQL (5432); a user's
# machine may too. The embedded stack never takes those ports, whatever the kernel hands out.
RESERVED_PORTS = frozenset({4222, 5432})

# Ports handed out recently in this process: a server may not have bound the previous one yet.
_recent: deque[int] = deque(maxlen=64)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (never 4222 or 5432)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((LOOPBACK, 0))
            port: int = probe.getsockname()[1]
        if port not in RESERVED_PORTS and port not in _recent:
            _recent.append(port)
            return port
    raise RuntimeError("no free TCP port on 127.0.0.1 after 100 tries")


def port_accepts(port: int, *, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on host:port now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
