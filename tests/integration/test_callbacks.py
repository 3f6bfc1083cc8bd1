"""Callbacks to apps against the real stack: an app registers endpoints, ShotScored and CharacterCompleted
reach them signed (checked with the verifier we use on Replicate's webhooks: the same scheme), failures are
retried with the same webhook-id, the delivery log shows every attempt, one tenant's events never reach
another's endpoint, and a URL on a private address is refused.

The gateway runs in-process (its lifespan, then httpx over ASGI); the app is a Starlette receiver on loopback,
allowed by `callback_allow_loopback`. Events are published to the stream as scoring and storage publish them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from faststream.nats import NatsBroker
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from contracts import STREAM_NAME, CharacterCompleted, ClipScore, Event, FaceScore, ShotScore, ShotScored
from infra.bus import publish_event
from infra.fakes.server import LoopbackServer
from infra.stack import StackEndpoints
from infra.webhooks.replicate import WebhookVerificationError, verify_webhook
from services.gateway.app import create_app
from services.gateway.outbound import Callbacks
from services.gateway.settings import GatewaySettings
from tests.integration.test_provider_webhooks import infra_settings

pytestmark = pytest.mark.integration

# Short waits so retries run out within a test.
FAST_RETRIES: dict[str, Any] = {
    "callback_allow_loopback": True,
    "callback_backoff_s": 0.05,
    "callback_backoff_max_s": 0.3,
    "callback_max_attempts": 3,
    "callback_poll_s": 0.1,
    "callback_timeout_s": 5.0,
}


@dataclass
class Received:
    name: str
    headers: dict[str, str]
    body: bytes
    valid: bool

    @property
    def payload(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.body)
        return loaded


@dataclass
class Receiver:
    """An app's webhook endpoint: `/hooks/<name>` verifies each delivery with that endpoint's secret."""

    url: str = ""
    secrets: dict[str, str] = field(default_factory=dict)
    fail_first: dict[str, int] = field(default_factory=dict)  # answer 500 (or `fail_status`) to the first N
    fail_status: dict[str, int] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)

    def app(self) -> Starlette:
        async def hook(request: Request) -> PlainTextResponse:
            name = request.path_params["name"]
            body = await request.body()
            try:
                verify_webhook(self.secrets[name], request.headers, body, now=time.time())
                valid = True
            except (KeyError, WebhookVerificationError):
                valid = False
            self.received.append(Received(name, dict(request.headers), body, valid))
            if len(self.at(name)) <= self.fail_first.get(name, 0):
                return PlainTextResponse("not now", status_code=self.fail_status.get(name, 500))
            return PlainTextResponse("ok")

        return Starlette(routes=[Route("/hooks/{name}", hook, methods=["POST"])])

    def at(self, name: str) -> list[Received]:
        return [item for item in self.received if item.name == name]

    def hook_url(self, name: str) -> str:
        return f"{self.url}/hooks/{name}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    with LoopbackServer(found.app(), name="callback-receiver") as url:
        found.url = url
        yield found


@dataclass
class Running:
    client: httpx.AsyncClient
    callbacks: Callbacks
    broker: NatsBroker
    keys: dict[str, str]  # tenant -> bootstrap key

    async def publish(self, event: Event) -> None:
        """As services publish: Nats-Msg-Id = the event id."""
        await publish_event(self.broker, event)

    async def publish_again(self, event: Event) -> None:
        """The same event without a Nats-Msg-Id, so JetStream stores the copy (as after its duplicate window)."""
        await self.broker.publish(event.model_dump_json().encode(), event.subject, stream=STREAM_NAME, timeout=5.0)

    def auth(self, tenant: str) -> dict[str, str]:
        return {"X-API-Key": self.keys[tenant]}

    @property
    def tenants(self) -> list[str]:
        return list(self.keys)


@asynccontextmanager
async def running_gateway(endpoints: StackEndpoints, **settings: Any) -> AsyncIterator[Running]:
    """A gateway with two fresh tenants (random names, so no other test's events or endpoints meet these)."""
    keys = {f"t-{secrets.token_hex(4)}": secrets.token_hex(12) for _ in range(2)}
    api_keys = ",".join(f"{tenant}:{key}" for tenant, key in keys.items())
    app = create_app(infra_settings(endpoints), GatewaySettings(api_keys=SecretStr(api_keys), **settings))
    async with app.router.lifespan_context(app):
        state = app.state.gateway
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield Running(client, state.callbacks, state.broker, keys)


@pytest.fixture
async def gateway(stack_endpoints: StackEndpoints) -> AsyncIterator[Running]:
    async with running_gateway(stack_endpoints, **FAST_RETRIES) as running:
        yield running


async def register(gateway: Running, tenant: str, url: str, *events: str) -> dict[str, Any]:
    response = await gateway.client.post(
        "/v1/callbacks", json={"url": url, "events": list(events)}, headers=gateway.auth(tenant)
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def hook(gateway: Running, receiver: Receiver, tenant: str, name: str, *events: str) -> dict[str, Any]:
    """Register `/hooks/<name>` on the receiver for `tenant`; the receiver learns its secret."""
    created = await register(gateway, tenant, receiver.hook_url(name), *events)
    receiver.secrets[name] = created["secret"]
    return created


async def deliveries(gateway: Running, tenant: str, endpoint_id: str) -> list[dict[str, Any]]:
    response = await gateway.client.get(f"/v1/callbacks/{endpoint_id}/deliveries", headers=gateway.auth(tenant))
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["deliveries"]
    return found


async def settled_deliveries(gateway: Running, tenant: str, endpoint_id: str, count: int) -> list[dict[str, Any]]:
    """The endpoint's log once it holds `count` deliveries, none pending."""
    deadline = time.monotonic() + 20
    while True:
        found = await deliveries(gateway, tenant, endpoint_id)
        if len(found) >= count and all(item["status"] != "pending" for item in found):
            return found
        assert time.monotonic() < deadline, f"deliveries still pending: {found}"
        await asyncio.sleep(0.05)


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


SCORE = ShotScore(
    verdict="same",
    basis="face",
    reason="a test score",
    face=FaceScore(
        faces_found=1,
        candidates=1,
        references_with_face=1,
        distance=0.31,
        mean_distance=0.33,
        max_distance=0.4,
        centroid_distance=0.3,
        same_below=0.6,
        uncertain_below=0.6,
        model="dlib",
    ),
    clip=ClipScore(image_similarity=0.9, calibrated=False, model="clip"),
    scorer_version="scoring-2",
    scorer_key="scoring-2-aaaaaaaaaaaa",
    calibration_profile=None,
    scoring_ms=1,
)


def shot_scored(tenant: str) -> ShotScored:
    character_id = uuid.uuid4()
    return ShotScored(
        correlation_id=character_id, tenant_id=tenant, shot_id=uuid.uuid4(), character_id=character_id, score=SCORE
    )


def character_completed(tenant: str) -> CharacterCompleted:
    character_id = uuid.uuid4()
    return CharacterCompleted(
        correlation_id=character_id,
        tenant_id=tenant,
        character_id=character_id,
        shots_total=3,
        shots_scored=2,
        shots_failed=1,
        verdicts={"same": 1, "uncertain": 1},
    )


async def test_each_endpoint_gets_the_events_it_asked_for_once_signed(gateway: Running, receiver: Receiver) -> None:
    tenant = gateway.tenants[0]
    both = await hook(gateway, receiver, tenant, "both", "ShotScored", "CharacterCompleted")
    await hook(gateway, receiver, tenant, "scores", "ShotScored")
    await hook(gateway, receiver, tenant, "completions", "CharacterCompleted")
    scored, completed = shot_scored(tenant), character_completed(tenant)

    await gateway.publish(scored)
    await gateway.publish(completed)
    await until(lambda: len(receiver.at("both")) == 2, "both events at the endpoint that asked for both")
    # The same event again, then another: the consumer handles them in order, so once the other has arrived
    # the copy has been seen, and it added nothing.
    later = shot_scored(tenant)
    await gateway.publish_again(scored)
    await gateway.publish(later)
    await until(lambda: len(receiver.at("scores")) >= 2, "the later event")
    await asyncio.sleep(0.3)  # time for a duplicate to show, were there one
    assert [r.payload["event_id"] for r in receiver.at("scores")] == [str(scored.event_id), str(later.event_id)]
    assert [r.payload["event_id"] for r in receiver.at("completions")] == [str(completed.event_id)]
    assert sorted(r.payload["type"] for r in receiver.at("both")) == ["CharacterCompleted", "ShotScored", "ShotScored"]
    assert all(r.valid for r in receiver.received)

    sent = receiver.at("scores")[0]
    assert sent.headers["content-type"] == "application/json"
    assert sent.payload == {
        "type": "ShotScored",
        "event_id": str(scored.event_id),
        "occurred_at": scored.occurred_at.isoformat(),
        "character_id": str(scored.character_id),
        "shot_id": str(scored.shot_id),
        "data": SCORE.model_dump(mode="json"),
    }
    [done] = receiver.at("completions")
    assert done.payload["data"] == {
        "shots_total": 3,
        "shots_scored": 2,
        "shots_failed": 1,
        "verdicts": {"same": 1, "uncertain": 1},
    }
    assert "shot_id" not in done.payload

    log = await settled_deliveries(gateway, tenant, both["id"], 3)
    assert sorted(item["event_id"] for item in log) == sorted(str(e.event_id) for e in (scored, completed, later))
    assert all(item["status"] == "delivered" and item["attempts"] == 1 for item in log)
    assert all(item["last_status_code"] == 200 and item["next_attempt_at"] is None for item in log)
    assert {item["id"] for item in log} == {r.headers["webhook-id"] for r in receiver.at("both")}


async def test_a_failing_endpoint_is_retried_with_the_same_webhook_id_until_delivered(
    gateway: Running, receiver: Receiver
) -> None:
    tenant = gateway.tenants[0]
    flaky = await hook(gateway, receiver, tenant, "flaky", "ShotScored")
    gone = await hook(gateway, receiver, tenant, "gone", "ShotScored")
    receiver.fail_first["flaky"] = 2  # 500, 500, then 200
    receiver.fail_first["gone"] = 99
    receiver.fail_status["gone"] = 410  # recorded; the endpoint stays registered
    scored = shot_scored(tenant)

    await gateway.publish(scored)

    [delivered] = await settled_deliveries(gateway, tenant, flaky["id"], 1)
    attempts = receiver.at("flaky")
    assert len(attempts) == 3
    assert all(r.valid for r in attempts)
    assert {r.headers["webhook-id"] for r in attempts} == {delivered["id"]}
    assert {r.payload["event_id"] for r in attempts} == {str(scored.event_id)}
    assert delivered["status"] == "delivered"
    assert delivered["attempts"] == 3
    assert delivered["last_status_code"] == 200
    assert delivered["last_error"] is None
    assert delivered["delivered_at"] is not None
    assert delivered["next_attempt_at"] is None

    [failed] = await settled_deliveries(gateway, tenant, gone["id"], 1)
    assert len(receiver.at("gone")) == 3  # callback_max_attempts
    assert failed["status"] == "failed"
    assert failed["attempts"] == 3
    assert failed["last_status_code"] == 410
    assert failed["last_error"] == "HTTP 410: not now"
    assert failed["next_attempt_at"] is None
    assert failed["delivered_at"] is None
    listed = (await gateway.client.get("/v1/callbacks", headers=gateway.auth(tenant))).json()["callbacks"]
    assert gone["id"] in {item["id"] for item in listed}


async def test_another_tenants_events_never_reach_an_endpoint(gateway: Running, receiver: Receiver) -> None:
    mine, theirs = gateway.tenants
    endpoint = await hook(gateway, receiver, mine, "mine", "ShotScored", "CharacterCompleted")
    await hook(gateway, receiver, theirs, "theirs", "ShotScored", "CharacterCompleted")
    their_events = [shot_scored(theirs), character_completed(theirs)]
    for event in their_events:
        await gateway.publish(event)
    await until(lambda: len(receiver.at("theirs")) == 2, "the other tenant's deliveries")
    marker = shot_scored(mine)
    await gateway.publish(marker)
    await until(lambda: bool(receiver.at("mine")), "this tenant's delivery")
    await asyncio.sleep(0.3)

    assert [r.payload["event_id"] for r in receiver.at("mine")] == [str(marker.event_id)]
    assert {r.payload["event_id"] for r in receiver.at("theirs")} == {str(e.event_id) for e in their_events}
    # ... and the other tenant cannot see, read or delete this tenant's endpoint.
    other = gateway.auth(theirs)
    listed = (await gateway.client.get("/v1/callbacks", headers=other)).json()["callbacks"]
    assert endpoint["id"] not in {item["id"] for item in listed}
    assert (await gateway.client.get(f"/v1/callbacks/{endpoint['id']}/deliveries", headers=other)).status_code == 404
    assert (await gateway.client.delete(f"/v1/callbacks/{endpoint['id']}", headers=other)).status_code == 404
    assert len(await deliveries(gateway, mine, endpoint["id"])) == 1


class FakeResolver:
    """DNS as a table; records every name asked for."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host not in self.answers:
            raise OSError(f"{host}: no such name")
        return self.answers[host]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("https://hooks.internal.example/hooks", "10.1.2.3"),
        ("https://metadata.example/latest", "169.254.169.254"),
        ("https://half-loopback.example/hooks", "10.0.0.8"),  # loopback is allowed only if every address is
        ("http://[fd00::1]/hooks", "fd00::1"),
        ("https://unknown.example/hooks", "cannot resolve"),
        ("ftp://hooks.internal.example/hooks", "only http and https"),
    ],
)
async def test_a_url_that_is_not_public_is_refused_and_nothing_is_called(
    gateway: Running, receiver: Receiver, url: str, says: str
) -> None:
    tenant = gateway.tenants[0]
    resolver = FakeResolver(
        {
            "hooks.internal.example": ["10.1.2.3"],
            "metadata.example": ["169.254.169.254"],
            "half-loopback.example": ["127.0.0.1", "10.0.0.8"],
        }
    )
    gateway.callbacks.resolve = resolver

    response = await gateway.client.post(
        "/v1/callbacks", json={"url": url, "events": ["ShotScored"]}, headers=gateway.auth(tenant)
    )

    assert response.status_code == 422, response.text
    assert response.json()["detail"]["reason"] == "url_refused"
    assert says in response.json()["detail"]["message"]
    listed = await gateway.client.get("/v1/callbacks", headers=gateway.auth(tenant))
    assert listed.json() == {"callbacks": []}
    await gateway.publish(shot_scored(tenant))
    await asyncio.sleep(0.3)
    assert receiver.received == []


async def test_loopback_urls_need_the_setting(stack_endpoints: StackEndpoints, receiver: Receiver) -> None:
    async with running_gateway(stack_endpoints) as strict:
        tenant = strict.tenants[0]
        response = await strict.client.post(
            "/v1/callbacks",
            json={"url": receiver.hook_url("local"), "events": ["ShotScored"]},
            headers=strict.auth(tenant),
        )
        assert response.status_code == 422, response.text
        assert "127.0.0.1" in response.json()["detail"]["message"]


async def test_every_attempt_checks_the_address_again(gateway: Running, receiver: Receiver) -> None:
    tenant = gateway.tenants[0]
    resolver = FakeResolver({"hooks.app.test": ["127.0.0.1"]})
    gateway.callbacks.resolve = resolver
    endpoint = await register(
        gateway, tenant, f"http://hooks.app.test:{receiver.url.rsplit(':', 1)[1]}/hooks/x", "ShotScored"
    )
    resolver.answers["hooks.app.test"] = ["10.20.30.40"]  # the name now points inside the network

    await gateway.publish(shot_scored(tenant))

    [refused] = await settled_deliveries(gateway, tenant, endpoint["id"], 1)
    assert refused["status"] == "failed"
    assert refused["attempts"] == 3
    assert refused["last_status_code"] is None
    assert "not sent" in refused["last_error"]
    assert "10.20.30.40" in refused["last_error"]
    assert receiver.received == []
    assert resolver.asked.count("hooks.app.test") >= 4  # at registration, then before each attempt


async def test_the_secret_is_shown_once_and_never_logged(
    gateway: Running, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tenant = gateway.tenants[0]
    created = await hook(gateway, receiver, tenant, "quiet", "ShotScored", "CharacterCompleted")
    secret: str = created["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) >= 24
    assert set(created) == {"id", "url", "events", "created_at", "links", "secret"}
    receiver.fail_first["quiet"] = 1  # a failed attempt logs too
    await gateway.publish(shot_scored(tenant))
    await gateway.publish(character_completed(tenant))

    log = await settled_deliveries(gateway, tenant, created["id"], 2)

    assert all(item["status"] == "delivered" for item in log)
    assert all(r.valid for r in receiver.received)
    listed = await gateway.client.get("/v1/callbacks", headers=gateway.auth(tenant))
    logged = await gateway.client.get(f"/v1/callbacks/{created['id']}/deliveries", headers=gateway.auth(tenant))
    for text in (listed.text, logged.text, caplog.text):
        assert secret not in text
        assert secret.removeprefix("whsec_") not in text
    assert "secret" not in listed.json()["callbacks"][0]
    # the attempts happened (any gateway on this stack may make them: replicas share the delivery work,
    # so which process logged them is not asserted; none of them may log the secret)
    assert max(item["attempts"] for item in log) >= 2

    deleted = await gateway.client.delete(f"/v1/callbacks/{created['id']}", headers=gateway.auth(tenant))
    assert deleted.status_code == 204
    listed = await gateway.client.get("/v1/callbacks", headers=gateway.auth(tenant))
    assert listed.json() == {"callbacks": []}
