"""Property-based API test: schemathesis generates requests from the OpenAPI document; none may get a 5xx.

Runs against the e2e system (every service as a process, real HTTP), with a valid key, so requests get
past authentication into every route's own validation. The server-sent events feed is left out: it streams
until the client leaves.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Err, Ok

from tests.e2e.conftest import RunningSystem

pytestmark = pytest.mark.e2e

EXAMPLES_PER_OPERATION = 25


def no_server_error(operation: Any, label: str, base_url: str, key: str, found: list[str]) -> Any:
    """A hypothesis test of one operation that records every generated request answered with a 5xx."""

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def check(case: Any) -> None:
        response = case.call(base_url=base_url, headers={"X-API-Key": key}, timeout=30)
        if response.status_code >= 500:
            found.append(f"{label} -> {response.status_code}: {case.as_curl_command()}")

    return check


def test_no_generated_request_gets_a_server_error(system: RunningSystem) -> None:
    schema = schemathesis.openapi.from_url(f"{system.base_url}/openapi.json")
    key = system.client.http.headers["X-API-Key"]
    server_errors: list[str] = []
    results = list(schema.get_all_operations())
    broken = [str(result.err()) for result in results if isinstance(result, Err)]
    assert broken == [], f"the OpenAPI document has operations schemathesis cannot read: {broken}"
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    tested = []
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        if operation.path.endswith("/events"):
            continue
        tested.append(label)

        no_server_error(operation, label, system.base_url, key, server_errors)()
    assert len(tested) >= 12  # the document lists every route
    assert server_errors == [], "\n".join(server_errors[:10])
