"""Providers' webhooks at the gateway (real NATS JetStream, PostgreSQL, object store) and what the adapter does.

The gateway runs in-process (its lifespan, then httpx over ASGI); what it published is read back from the
stream. The adapter's webhook work runs on a real Runtime against the loopback Replicate fake.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

import httpx
import pytest
from Crypto.PublicKey import ECC
from Crypto.PublicKey.ECC import EccKey
from faststream.nats import NatsBroker, NatsMessage
from pydantic import SecretStr

from contracts import STREAM_NAME, ProviderWebhookReceived, ReferencesStored
from infra.fakes.fal import JWKS_PATH, FalFake
from infra.fakes.replicate import ReplicateFake, sign
from infra.fakes.server import LoopbackServer
from infra.runtime import Runtime
from infra.sample import sample_reference_png
from infra.settings import InfraSettings
from infra.stack import StackEndpoints
from infra.webhooks import astria
from infra.webhooks.fal import FalKeys, sign_fal_webhook
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from services.provider_adapter import handlers
from services.provider_adapter.adapters.identities import PostgresIdentities
from services.provider_adapter.app import MIGRATIONS
from services.provider_adapter.jobs import ProviderWork, weights_copier
from services.provider_adapter.ports import IdentityRequest, Provider
from services.provider_adapter.providers.http import RetryPolicy, http_timeout, new_client
from services.provider_adapter.providers.replicate import ReplicateSettings, replicate_provider
from services.provider_adapter.settings import ProviderAdapterSettings
from services.provider_adapter.webhooks import WebhookWork
from tests.fakes import RecordingSleep, reference_image

pytestmark = pytest.mark.integration

REPLICATE = "/v1/webhooks/replicate-flux-lora"
FAL = "/v1/webhooks/fal-flux-lora"


def infra_settings(endpoints: StackEndpoints) -> InfraSettings:
    return InfraSettings(
        nats_url=endpoints.nats_url,
        database_url=SecretStr(endpoints.database_url),
        s3_endpoint=endpoints.s3_endpoint,
        s3_access_key=SecretStr(endpoints.s3_access_key),
        s3_secret_key=SecretStr(endpoints.s3_secret_key),
        s3_bucket=endpoints.s3_bucket,
    )


@dataclass
class Gateway:
    client: httpx.AsyncClient
    broker: NatsBroker
    replicate_secret: str
    astria_secret: str
    leonardo_key: str
    fal: FalFake  # its JWKS is the gateway's source of fal's keys
    fal_keys: FalKeys


@pytest.fixture
async def gateway(stack_endpoints: StackEndpoints) -> AsyncIterator[Gateway]:
    replicate_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    astria_secret, leonardo_key = secrets.token_hex(16), secrets.token_hex(16)
    fal = FalFake(api_key=f"fal-test:{secrets.token_hex(8)}")
    with LoopbackServer(fal.app, name="fal") as fal_url:
        settings = GatewaySettings(
            api_keys=SecretStr(f"studio:{secrets.token_hex(8)}"),
            replicate_webhook_secret=SecretStr(replicate_secret),
            astria_callback_secret=SecretStr(astria_secret),
            leonardo_webhook_key=SecretStr(leonardo_key),
            fal_jwks_url=fal_url + JWKS_PATH,
        )
        app = create_app(infra_settings(stack_endpoints), settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                state = app.state.gateway
                yield Gateway(client, state.broker, replicate_secret, astria_secret, leonardo_key, fal, state.fal_keys)


async def published(broker: NatsBroker, job_id: str) -> list[ProviderWebhookReceived]:
    """The webhook events in the stream that name `job_id`."""
    js = broker.config.connection_state.stream
    sub = await js.pull_subscribe(ProviderWebhookReceived.subject, stream=STREAM_NAME)
    found = []
    try:
        while True:
            try:
                messages = await sub.fetch(100, timeout=0.5)
            except TimeoutError:
                break
            for message in messages:
                event = ProviderWebhookReceived.model_validate_json(message.data)
                if event.job_id == job_id:
                    found.append(event)
                await message.ack()
    finally:
        await sub.unsubscribe()
    return found


def replicate_delivery(
    secret: str, job_id: str, *, webhook_id: str | None = None, sent_at: int | None = None, body: bytes | None = None
) -> tuple[dict[str, str], bytes]:
    body = body or json.dumps({"id": job_id, "status": "succeeded", "logs": "x" * 40_000}).encode()
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if sent_at is None else sent_at
    headers = {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, webhook_id, timestamp, body),
    }
    return headers, body


async def test_a_signed_replicate_delivery_publishes_one_event_and_a_redelivery_none(gateway: Gateway) -> None:
    job_id = f"tr{uuid.uuid4().hex[:12]}"
    headers, body = replicate_delivery(gateway.replicate_secret, job_id)

    first = await gateway.client.post(REPLICATE, content=body, headers=headers)
    again = await gateway.client.post(REPLICATE, content=body, headers=headers)  # Replicate retries: same id

    assert first.status_code == 202, first.text
    assert again.status_code == 202
    events = await published(gateway.broker, job_id)
    assert len(events) == 1
    event = events[0]
    assert (event.provider, event.delivery_id, event.status) == (
        "replicate-flux-lora",
        headers["webhook-id"],
        "succeeded",
    )
    assert "logs" not in event.payload
    assert event.payload["_dropped"] == ["logs"]
    assert gateway.replicate_secret not in event.model_dump_json()


@pytest.mark.parametrize("tamper", ["bad_signature", "stale", "unsigned"])
async def test_a_bad_replicate_delivery_is_401_logged_and_publishes_nothing(
    gateway: Gateway, tamper: str, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = f"tr{uuid.uuid4().hex[:12]}"
    other = "whsec_" + base64.b64encode(b"y" * 24).decode()
    secret = other if tamper == "bad_signature" else gateway.replicate_secret
    sent_at = int(time.time()) - 3600 if tamper == "stale" else None
    headers, body = replicate_delivery(secret, job_id, sent_at=sent_at)
    if tamper == "unsigned":
        del headers["webhook-signature"]

    with caplog.at_level(logging.WARNING, logger="services.gateway.webhooks"):
        response = await gateway.client.post(REPLICATE, content=body, headers=headers)

    assert response.status_code == 401
    expected = {"bad_signature": "does not match", "stale": "tolerance", "unsigned": "webhook-signature"}[tamper]
    assert expected in response.json()["detail"]
    assert any("webhook refused" in r.getMessage() and expected in r.getMessage() for r in caplog.records)
    assert gateway.replicate_secret not in caplog.text
    assert await published(gateway.broker, job_id) == []


async def test_astria_callbacks_need_the_token_we_put_in_their_url(gateway: Gateway) -> None:
    tune_id = int(uuid.uuid4().int % 10**12)
    body = json.dumps({"tune": {"id": tune_id, "trained_at": "2026-11-24T10:00:00Z"}}).encode()
    url = astria.callback_url("http://gateway/v1/webhooks/astria-tune", SecretStr(gateway.astria_secret), "tune", "c1")
    forged = url.replace("token=", "token=0")

    refused = await gateway.client.post(forged, content=body)
    accepted = await gateway.client.post(url, content=body)

    assert refused.status_code == 401
    assert accepted.status_code == 202, accepted.text
    events = await published(gateway.broker, str(tune_id))
    assert [(e.provider, e.job_kind, e.status) for e in events] == [("astria-tune", "tune", "trained")]


async def test_leonardo_webhooks_need_the_callback_key(gateway: Gateway) -> None:
    generation_id = str(uuid.uuid4())
    body = {"type": "image_generation.complete", "object": "generation", "data": {"object": {"id": generation_id}}}
    wrong = await gateway.client.post(
        "/v1/webhooks/leonardo-character-reference", json=body, headers={"authorization": "Bearer wrong-key-123"}
    )
    missing = await gateway.client.post("/v1/webhooks/leonardo-character-reference", json=body)
    right = await gateway.client.post(
        "/v1/webhooks/leonardo-character-reference",
        json={**body, "data": {"object": {"id": generation_id, "status": "COMPLETE"}}},
        headers={"authorization": f"Bearer {gateway.leonardo_key}"},
    )

    assert (wrong.status_code, missing.status_code, right.status_code) == (401, 401, 202)
    events = await published(gateway.broker, generation_id)
    assert [(e.status, len(e.delivery_id)) for e in events] == [("COMPLETE", 64)]  # sha256 of the body


async def test_fal_webhooks_pass_only_with_a_signature_from_fals_published_keys(gateway: Gateway) -> None:
    request_id = str(uuid.uuid4())
    body = json.dumps(
        {"request_id": request_id, "gateway_request_id": request_id, "status": "OK", "payload": {"images": []}}
    ).encode()
    now = int(time.time())

    def delivery(key: EccKey, at: int = now) -> dict[str, str]:
        return sign_fal_webhook(key, request_id=request_id, user_id="user-1", timestamp=at, body=body)

    unsigned = await gateway.client.post(FAL, content=body, headers={"content-type": "application/json"})
    assert gateway.fal_keys.fetches == 0  # nothing that cannot be fal's makes us fetch fal's keys
    forged = await gateway.client.post(FAL, content=body, headers=delivery(ECC.generate(curve="Ed25519")))
    stale = await gateway.client.post(FAL, content=body, headers=delivery(gateway.fal.webhook_key, at=now - 900))
    tampered = await gateway.client.post(
        FAL, content=body.replace(b'"OK"', b'"ERROR"'), headers=delivery(gateway.fal.webhook_key)
    )
    right = await gateway.client.post(FAL, content=body, headers=delivery(gateway.fal.webhook_key))
    again = await gateway.client.post(FAL, content=body, headers=delivery(gateway.fal.webhook_key))  # fal retries

    statuses = [r.status_code for r in (unsigned, forged, stale, tampered, right, again)]
    assert statuses == [401, 401, 401, 401, 202, 202]
    assert "missing" in unsigned.json()["detail"]
    assert right.json()["job_id"] == request_id
    events = await published(gateway.broker, request_id)
    assert [(e.provider, e.status, e.delivery_id) for e in events] == [("fal-flux-lora", "OK", request_id)]


async def test_oversize_and_unknown_webhooks_are_refused(gateway: Gateway) -> None:
    job_id = f"tr{uuid.uuid4().hex[:12]}"
    headers, body = replicate_delivery(
        gateway.replicate_secret, job_id, body=b'{"id": "x", "pad": "' + b"x" * 1_100_000 + b'"}'
    )

    oversize = await gateway.client.post(REPLICATE, content=body, headers=headers)
    unknown = await gateway.client.post("/v1/webhooks/nobody", json={})

    assert oversize.status_code == 413
    assert unknown.status_code == 404
    assert "fal-flux-lora" in unknown.json()["detail"]


async def test_an_unconfigured_check_names_the_setting_that_enables_it(stack_endpoints: StackEndpoints) -> None:
    app = create_app(infra_settings(stack_endpoints), GatewaySettings(api_keys=SecretStr("studio:k12345678")))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://g") as client:
        response = await client.post(REPLICATE, json={"id": "x"})
    assert response.status_code == 503
    assert "REPLICATE_WEBHOOK_SECRET" in response.json()["detail"]


def test_the_webhook_route_is_in_the_openapi_document() -> None:
    from services.gateway.app import create_app as build

    infra = InfraSettings(
        nats_url="nats://x:4222",
        database_url=SecretStr("postgresql://x"),
        s3_endpoint="x:9000",
        s3_access_key=SecretStr("x"),
        s3_secret_key=SecretStr("x"),
    )
    document = build(infra, GatewaySettings(api_keys=SecretStr("studio:k12345678"))).openapi()
    operation = document["paths"]["/v1/webhooks/{provider}"]["post"]
    assert "REPLICATE_WEBHOOK_SECRET" in operation["description"]
    assert {"401", "404", "413", "503"} <= set(operation["responses"])
    assert "fal's JWKS" in operation["description"]


# --- the provider adapter -----------------------------------------------------------------------


@pytest.fixture
async def runtime(stack_endpoints: StackEndpoints) -> AsyncIterator[Runtime]:
    runtime = Runtime("provider_adapter", infra_settings(stack_endpoints), migrations=MIGRATIONS)
    await runtime.open()
    yield runtime
    await runtime.close()


async def test_a_webhook_settles_a_pending_replicate_training_once(runtime: Runtime) -> None:
    token = f"r8_{secrets.token_hex(16)}"
    fake = ReplicateFake(api_token=token, starting_polls=0, training_polls=0)
    with LoopbackServer(fake.app, name="replicate") as url:
        client = new_client(http_timeout(connect_s=2.0, read_s=10.0))
        settings = ReplicateSettings(
            token=SecretStr(token),
            base_url=url,
            destination_owner="likeness",
            destination_model="characters",
            training_steps=10,
            poll_s=0.02,
            poll_max_s=0.05,
            timeout_s=60.0,
        )
        provider = replicate_provider(
            settings, client, concurrency=2, retry=RetryPolicy(retries=1, base_s=0.1, cap_s=0.2), sleep=RecordingSleep()
        )
        try:
            reference = reference_image(sample_reference_png(), key="studio/images/ref0")
            stored = ReferencesStored(
                correlation_id=uuid.uuid4(),
                tenant_id="studio",
                character_id=uuid.uuid4(),
                strategy="lora",
                provider=provider.name,
                references=[reference.ref],
            )
            character_id = stored.character_id
            job_id = await provider.create_identity(IdentityRequest(character_id, "studio", "lora", [reference]))
            async with runtime.pool.acquire() as conn:  # what build_identity saved before it began to poll
                identities = PostgresIdentities(conn)
                await identities.lock(character_id, "studio")
                await identities.begin(character_id, provider.name, "lora", [reference.ref])
                await identities.set_job_id(character_id, job_id)
            training_id = job_id.rsplit(":", 1)[1]
            for _ in range(5):  # Replicate's side: the training runs to its end (the fake moves on GETs)
                if fake.status_of(training_id) == "succeeded":
                    break
                await provider.identity_status(job_id)
            work = webhook_work(runtime, {provider.name: provider})

            def webhook(delivery_id: str) -> ProviderWebhookReceived:
                return ProviderWebhookReceived(
                    correlation_id=uuid.uuid4(),
                    tenant_id="provider-webhook",
                    provider=provider.name,
                    delivery_id=delivery_id,
                    job_id=training_id,
                    status="succeeded",
                )

            await work.act_on(webhook("msg_1"))
            await work.act_on(webhook("msg_1"))  # a redelivery
            await work.act_on(webhook("msg_2"))  # a late second delivery
            async with runtime.pool.acquire() as conn:
                record = await PostgresIdentities(conn).lock(character_id, "studio")
                outbox = await conn.fetch(
                    "SELECT subject, payload FROM messaging.outbox WHERE payload->>'character_id' = $1",
                    str(character_id),
                )
                # the poll that finds the training finished afterwards says nothing more
                async with conn.transaction():
                    late = await handlers.identity_settled(
                        stored,
                        await provider.identity_status(job_id),
                        identities=PostgresIdentities(conn),
                        simulated=False,
                    )
        finally:
            await client.aclose()

    assert record.status == "ready"
    assert record.identity_ref is not None
    assert record.identity_ref.startswith("replicate-flux-lora:")
    assert [row["subject"] for row in outbox] == ["likeness.identity.ready.v1"]
    assert late == []
    # the trained weights Replicate handed out were copied into our storage, named in IdentityReady
    weights = outbox[0]["payload"]["weights"]
    assert weights["file_name"].endswith("trained_model.tar")
    copied = await runtime.store.get(weights["key"])
    assert weights["key"] == f"studio/artifacts/{hashlib.sha256(copied).hexdigest()}"
    assert copied.startswith(b"fake LoRA weights")
    assert len(copied) == weights["size_bytes"]


def webhook_work(runtime: Runtime, providers: dict[str, Provider]) -> WebhookWork:
    return WebhookWork(runtime, providers, weights_copier(runtime, ProviderAdapterSettings()))


class HeartbeatOnly:
    """What build_identity needs of a NatsMessage while it polls: `in_progress`."""

    def __init__(self) -> None:
        self.polled = asyncio.Event()

    async def in_progress(self) -> None:
        self.polled.set()


async def test_a_webhook_finishes_a_training_before_the_next_poll_and_the_poll_then_says_nothing(
    runtime: Runtime,
) -> None:
    await runtime.declare_stream()  # build_identity publishes progress
    token = f"r8_{secrets.token_hex(16)}"
    fake = ReplicateFake(api_token=token, starting_polls=0, training_polls=0)
    with LoopbackServer(fake.app, name="replicate") as url:
        client = new_client(http_timeout(connect_s=2.0, read_s=10.0))
        settings = ReplicateSettings(
            token=SecretStr(token),
            base_url=url,
            destination_owner="likeness",
            destination_model="characters",
            training_steps=10,
            timeout_s=60.0,
        )
        provider = replicate_provider(
            settings, client, concurrency=2, retry=RetryPolicy(retries=1, base_s=0.1, cap_s=0.2), sleep=RecordingSleep()
        )
        providers: dict[str, Provider] = {provider.name: provider}
        poll_s = 4.0
        adapter = ProviderWork(runtime, providers, ProviderAdapterSettings(identity_poll_s=poll_s))
        reference = sample_reference_png()
        stored_ref = await runtime.store.put_image("studio", reference, "image/png")
        image = reference_image(reference, key=stored_ref.key).ref
        character_id = uuid.uuid4()
        stored = ReferencesStored(
            correlation_id=character_id,
            tenant_id="studio",
            character_id=character_id,
            strategy="lora",
            provider=provider.name,
            references=[image],
        )
        msg = HeartbeatOnly()
        started = time.monotonic()
        polling = asyncio.create_task(adapter.build_identity(stored, cast(NatsMessage, msg)))
        try:
            await asyncio.wait_for(msg.polled.wait(), timeout=10)  # submitted, polled once, now asleep
            training_id = fake.job_ids("training")[0]
            while fake.status_of(training_id) != "succeeded":  # Replicate's side: the training ends
                async with runtime.pool.acquire() as conn:
                    job_id = (await PostgresIdentities(conn).lock(character_id, "studio")).job_id
                assert job_id is not None
                await provider.identity_status(job_id)
            webhook = ProviderWebhookReceived(
                correlation_id=uuid.uuid4(),
                tenant_id="provider-webhook",
                provider=provider.name,
                delivery_id=f"msg_{uuid.uuid4().hex}",
                job_id=training_id,
                status="succeeded",
            )
            await webhook_work(runtime, providers).act_on(webhook)
            settled_after = time.monotonic() - started
            async with runtime.pool.acquire() as conn:
                status_after_webhook = (await PostgresIdentities(conn).lock(character_id, "studio")).status
            await asyncio.wait_for(polling, timeout=poll_s + 10)  # the next poll finds it done
            async with runtime.pool.acquire() as conn:
                ready_events = await conn.fetchval(
                    """SELECT count(*) FROM messaging.outbox
                       WHERE payload->>'character_id' = $1 AND subject = 'likeness.identity.ready.v1'""",
                    str(character_id),
                )
        finally:
            polling.cancel()
            await client.aclose()

    assert status_after_webhook == "ready"
    assert settled_after < poll_s  # before the poll would have looked again
    assert ready_events == 1
    assert await runtime.delivery.is_processed(stored, runtime.delivery.consumer("references-stored"))


async def test_a_webhook_for_no_identity_of_ours_changes_nothing(runtime: Runtime) -> None:
    work = webhook_work(runtime, {})
    event = ProviderWebhookReceived(
        correlation_id=uuid.uuid4(),
        tenant_id="provider-webhook",
        provider="replicate-flux-lora",
        delivery_id="msg_x",
        job_id="nosuchjob",
    )
    await work.act_on(event)  # logged, nothing raised
    assert not await runtime.delivery.is_processed(event, runtime.delivery.consumer("provider-webhook"))
