"""Fixtures all test tiers share: the infrastructure stack the services run on.

`stack_endpoints` is the embedded stack (NATS, PostgreSQL and nanio as local processes) unless
LIKENESS_TEST_BACKEND=docker, which runs nats:2.10, postgres:16 and minio/minio through testcontainers
instead (skipped, with the reason, where no Docker engine answers).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests.integration.stack_checks")

from infra.stack import EmbeddedStack, StackEndpoints  # noqa: E402
from infra.stack.containers import ContainerStack, docker_engine_problem  # noqa: E402

BACKENDS = ("embedded", "docker")


def running_stack(folder: Path) -> Iterator[EmbeddedStack]:
    """Start a stack in `folder`, yield it, then stop it and remove what it kept outside the folder."""
    stack = EmbeddedStack(folder)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
        stack.postgres.remove_external_cluster()  # a cluster kept under /var/lib/likeness when run as root


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """One embedded stack for the whole session (started on first use), in a fresh temporary folder."""
    yield from running_stack(tmp_path_factory.mktemp("stack"))


@pytest.fixture(scope="session")
def stack_endpoints(request: pytest.FixtureRequest) -> Iterator[StackEndpoints]:
    backend = os.environ.get("LIKENESS_TEST_BACKEND", "embedded")
    if backend not in BACKENDS:
        raise pytest.UsageError(f"LIKENESS_TEST_BACKEND={backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "embedded":
        stack: EmbeddedStack = request.getfixturevalue("embedded_stack")
        yield stack.endpoints
        return
    problem = docker_engine_problem()
    if problem is not None:
        pytest.skip(f"LIKENESS_TEST_BACKEND=docker, but {problem}")
    with ContainerStack() as containers:
        yield containers.endpoints
