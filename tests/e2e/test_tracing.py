"""One character's path, followed: its spans across gateway, storage, provider_adapter and scoring form one
trace, rooted at the HTTP request, each span under the span that published what it consumed."""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

from infra.cli import app as cli
from infra.cli_trace import SpanLine, character_traces, read_spans
from infra.sample import SAMPLE_NAME, demo_shots, sample_reference_png
from tests.e2e.conftest import RunningSystem

pytestmark = pytest.mark.e2e

FOUR = {"gateway", "storage", "provider_adapter", "scoring"}


def scored(system: RunningSystem, character_id: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        shots = system.client.character(character_id)["shots"]
        if shots and all(shot["status"] == "scored" for shot in shots):
            return
        time.sleep(0.3)
    raise AssertionError(f"shot not scored in {timeout_s} s: {system.client.character(character_id)['shots']}")


def traces_through_all_four(system: RunningSystem, character_id: str, timeout_s: float = 15.0) -> list[SpanLine]:
    """The trace of `character_id` that reached all four services (spans reach the files about 1 s late)."""
    deadline = time.monotonic() + timeout_s
    while True:
        traces = character_traces(read_spans(system.services.data_dir / "traces"), character_id)
        complete = [trace for trace in traces if {span.service for span in trace} >= FOUR]
        if complete or time.monotonic() > deadline:
            assert complete, [sorted({span.service for span in trace}) for trace in traces]
            return complete[0]
        time.sleep(0.5)


def test_a_characters_spans_across_the_four_services_share_one_trace(system: RunningSystem) -> None:
    reference = ("astronaut.png", sample_reference_png(), "image/png")
    character_id = system.client.create_character(SAMPLE_NAME, [reference])
    system.client.wait_for_character(character_id)
    system.client.request_shot(character_id, demo_shots()[0].model_dump(mode="json"))
    scored(system, character_id)

    trace = traces_through_all_four(system, character_id)
    ids = {span.span_id for span in trace}
    (root,) = [span for span in trace if span.parent_span_id not in ids]
    assert root.service == "gateway"
    assert root.name.startswith("POST /v1/characters")
    consumers = [span for span in trace if span is not root]
    assert all(span.attributes.get("messaging.system") == "nats" for span in consumers)
    assert {span.attributes.get("likeness.character_id") for span in consumers} == {character_id}
    assert any(
        span.attributes.get("likeness.event_type") == "ShotStored" for span in consumers if span.service == "scoring"
    )
    assert all(span.start_ns >= root.start_ns for span in trace)

    shown = CliRunner().invoke(cli, ["trace", character_id, "--data-dir", str(system.services.data_dir)])
    assert shown.exit_code == 0, shown.output
    assert f"trace {root.trace_id}" in shown.output
    assert "scoring-shot-stored" in shown.output
