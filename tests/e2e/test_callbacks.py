"""Callbacks end to end: an app registers a URL and gets every shot's score and the completion, signed."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import pytest
from PIL import Image

from infra.fakes.server import LoopbackServer
from infra.sample import demo_shots, sample_reference_png
from tests.e2e.conftest import RunningSystem
from tests.e2e.test_sample_character import submit_sample, wait_completed
from tests.integration.test_callbacks import Receiver

pytestmark = pytest.mark.e2e


def own_copy(png: bytes) -> bytes:
    """The same picture in other bytes: this tenant's upload must not share a sha256 with the main tenant's,
    whose isolation test checks that the other tenant has no such image."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).save(buffer, format="PNG", compress_level=1)
    assert buffer.getvalue() != png
    return buffer.getvalue()


def test_an_app_gets_each_score_and_the_completion_signed_once_each(system: RunningSystem) -> None:
    app = system.other_tenant  # a tenant of its own: no other test's events
    receiver = Receiver()
    with LoopbackServer(receiver.app(), name="app") as url:
        receiver.url = url
        events = ["ShotScored", "CharacterCompleted"]
        registered = app.http.post("/v1/callbacks", json={"url": receiver.hook_url("studio"), "events": events})
        assert registered.status_code == 201, registered.text
        endpoint = registered.json()
        receiver.secrets["studio"] = endpoint["secret"]
        receiver.fail_first["studio"] = 2  # the app is down for its first two deliveries: they come again

        main = submit_sample(system)  # the other tenant's character: it must never reach this app
        character_id = app.create_character(
            "Callback", [("astronaut.png", own_copy(sample_reference_png()), "image/png")]
        )
        app.wait_for_character(character_id)
        for params in demo_shots():
            app.request_shot(character_id, params.model_dump(mode="json"))

        def bodies() -> list[dict[str, Any]]:
            return [json.loads(item.body) for item in receiver.at("studio")]

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            delivered = {body["event_id"] for body, item in zip(bodies(), receiver.at("studio"), strict=True)}
            if len(delivered) >= 16 and any(body["type"] == "CharacterCompleted" for body in bodies()):
                break
            time.sleep(0.3)
        wait_completed(system, main)
        time.sleep(1.0)
        received = list(zip(receiver.at("studio"), bodies(), strict=True))

    assert all(item.valid for item, _ in received)  # every delivery verifies with the endpoint's secret
    assert {body["character_id"] for _, body in received} == {character_id}
    webhook_ids: dict[str, set[str]] = {}
    for item, body in received:
        webhook_ids.setdefault(body["event_id"], set()).add(item.headers["webhook-id"])
    assert len(webhook_ids) == 16  # 15 scores and the completion
    assert all(len(ids) == 1 for ids in webhook_ids.values())  # a retry keeps its webhook-id
    assert [body["type"] for _, body in received].count("ShotScored") >= 15
    log = app.http.get(f"/v1/callbacks/{endpoint['id']}/deliveries").json()
    rows = log if isinstance(log, list) else log["deliveries"]
    assert len(rows) == 16
    assert {row["status"] for row in rows} == {"delivered"}
    assert max(row["attempts"] for row in rows) >= 2  # the two refused deliveries were tried again
    gateway_log = system.services.running["gateway"].log_path.read_text(errors="replace")
    assert "callbacks: delivered" in gateway_log
    assert endpoint["secret"] not in gateway_log
    assert endpoint["secret"].removeprefix("whsec_") not in gateway_log
