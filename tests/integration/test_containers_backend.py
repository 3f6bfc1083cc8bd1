"""The testcontainers backend (nats:2.10 -js, postgres:16, minio/minio) passes the embedded stack's checks.

Skipped, with the reason, where no Docker engine answers a ping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from infra.stack import StackEndpoints
from infra.stack.containers import ContainerStack, docker_engine_problem
from tests.integration.stack_checks import (
    check_jetstream_deduplicates,
    check_object_store_roundtrip,
    check_postgres_requires_password,
)

pytestmark = [pytest.mark.integration, pytest.mark.docker]


@pytest.fixture(scope="module")
def container_endpoints(request: pytest.FixtureRequest) -> Iterator[StackEndpoints]:
    problem = docker_engine_problem()
    if problem is not None:
        pytest.skip(f"containers backend not tested: {problem}")
    if os.environ.get("LIKENESS_TEST_BACKEND") == "docker":  # the session's stack already is containers
        endpoints: StackEndpoints = request.getfixturevalue("stack_endpoints")
        yield endpoints
        return
    with ContainerStack() as stack:
        yield stack.endpoints


async def test_jetstream_deduplicates_by_msg_id(container_endpoints: StackEndpoints) -> None:
    await check_jetstream_deduplicates(container_endpoints)


async def test_postgres_requires_the_password(container_endpoints: StackEndpoints) -> None:
    await check_postgres_requires_password(container_endpoints)


def test_object_store_put_get_stat_list(container_endpoints: StackEndpoints) -> None:
    check_object_store_roundtrip(container_endpoints)


def test_endpoints_have_the_embedded_shape(container_endpoints: StackEndpoints) -> None:
    assert urlsplit(container_endpoints.nats_url).scheme == "nats"
    assert urlsplit(container_endpoints.database_url).path == "/likeness"
    assert container_endpoints.s3_bucket == "likeness"
    assert len(container_endpoints.env()) == 7
