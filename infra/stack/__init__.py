"""The infrastructure Likeness runs on: NATS JetStream, PostgreSQL and an S3-compatible object store.

`EmbeddedStack` runs all three as local child processes from PyPI packages (no Docker);
`infra.stack.containers.ContainerStack` runs the same on real images through testcontainers; compose.yaml
runs them for deployment. All three hand services the same `StackEndpoints`.
"""

from infra.stack.embedded import (
    EmbeddedStack,
    recorded_endpoints,
    stack_running,
    stop_by_pidfiles,
    stop_recorded_stack,
)
from infra.stack.endpoints import StackEndpoints
from infra.stack.process import StackError

__all__ = [
    "EmbeddedStack",
    "StackEndpoints",
    "StackError",
    "recorded_endpoints",
    "stack_running",
    "stop_by_pidfiles",
    "stop_recorded_stack",
]
