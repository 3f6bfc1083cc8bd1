"""fal's signed webhooks, over real HTTP on 127.0.0.1: the fake calls back, FalKeys checks with the fake's JWKS."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from urllib.parse import quote

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from contracts import ShotParams
from infra.fakes.fal import JWKS_PATH, Failure, FalFake
from infra.fakes.faults import Fault
from infra.fakes.server import LoopbackServer
from infra.sample import sample_reference_png
from infra.webhooks.fal import FalDelivery, FalKeys, FalKeysUnavailable, FalWebhookRejected
from services.provider_adapter.ports import IdentityRequest, ShotRequest
from services.provider_adapter.providers.fal import FalInstantCharacter, FalSettings, fal_provider
from services.provider_adapter.providers.fal_flux_lora import FalFluxLora, FluxLoraSettings, flux_lora_provider
from services.provider_adapter.providers.fal_queue import data_uri
from services.provider_adapter.providers.http import RetryPolicy, http_timeout, new_client
from tests.fakes import RecordingSleep, reference_image
from tests.integration.conftest import FalServer
from tests.provider_shots import generate

pytestmark = pytest.mark.integration

Delivered = tuple[dict[str, str], bytes]


@dataclass
class Receiver:
    """A loopback webhook receiver: it records what arrives, raw, and answers `statuses` in turn (then 204)."""

    url: str
    deliveries: list[Delivered]
    statuses: list[int] = field(default_factory=list)

    async def wait_for(self, count: int, timeout_s: float = 15.0) -> list[Delivered]:
        deadline = time.monotonic() + timeout_s
        while len(self.deliveries) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.deliveries)} webhook(s) arrived, not {count}")
            await asyncio.sleep(0.02)
        return self.deliveries


@pytest.fixture
async def fal_server() -> AsyncIterator[FalServer]:
    """A fresh fake fal server on loopback; its background deliveries are awaited before it stops."""
    key = f"fal-test-{secrets.token_hex(4)}:{secrets.token_hex(16)}"
    fake = FalFake(api_key=key, queue_position=1, training_polls=1, webhook_tick_s=0.02)
    with LoopbackServer(fake.app, name="fal") as url:
        server = FalServer(fake, url, key)
        yield server
        await server.close()
        fake.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    deliveries: list[Delivered] = []
    statuses: list[int] = []

    async def hook(request: Request) -> Response:
        deliveries.append((dict(request.headers), await request.body()))
        return Response(status_code=statuses.pop(0) if statuses else 204)

    with LoopbackServer(Starlette(routes=[Route("/hook", hook, methods=["POST"])]), name="webhook") as url:
        yield Receiver(f"{url}/hook?likeness=1", deliveries, statuses)


@pytest.fixture
async def keys(fal_server: FalServer) -> AsyncIterator[FalKeys]:
    """fal's keys as the gateway would hold them, fetched from the fake's JWKS."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield FalKeys(client, url=f"{fal_server.url}{JWKS_PATH}")


async def submit(server: FalServer, model: str, arguments: dict[str, object], webhook: str) -> str:
    """A queue submit with `?fal_webhook=`, as fal documents it; never polled: fal calls back by itself."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        answer = await client.post(
            f"{server.url}/{model}?fal_webhook={quote(webhook, safe='')}",
            json=arguments,
            headers={"Authorization": f"Key {server.key}"},
        )
    assert answer.status_code == 200, answer.text
    request_id: str = answer.json()["request_id"]
    return request_id


def image_arguments() -> dict[str, object]:
    return {
        "prompt": "close-up portrait of the astronaut, soft light",
        "image_url": data_uri(sample_reference_png(), "image/png"),
        "seed": 7,
    }


async def verified(keys: FalKeys, delivery: Delivered) -> FalDelivery:
    headers, body = delivery
    return await keys.verify(headers, body, now=time.time())


async def test_a_finished_request_calls_back_signed_with_a_key_the_jwks_serves(
    fal_server: FalServer, receiver: Receiver, keys: FalKeys
) -> None:
    request_id = await submit(fal_server, "fal-ai/instant-character", image_arguments(), receiver.url)
    (delivery,) = await receiver.wait_for(1)
    headers, body = delivery
    assert headers["content-type"] == "application/json"
    checked = await verified(keys, delivery)
    assert (checked.request_id, checked.status, checked.error) == (request_id, "OK", None)
    assert checked.user_id == fal_server.fake.webhook_user_id
    assert checked.payload is not None
    image = checked.payload["images"][0]
    assert image["url"].startswith(f"{fal_server.url}/files/{request_id}/")
    assert (image["width"], image["height"]) == (1024, 1024)
    assert json.loads(body)["gateway_request_id"] == request_id
    assert fal_server.fake.webhook_urls == [receiver.url]
    assert fal_server.fake.webhooks_sent == [(receiver.url, request_id, 204)]
    assert keys.fetches == 1


async def test_a_failed_request_and_a_training_call_back_too(
    fal_server: FalServer, receiver: Receiver, keys: FalKeys
) -> None:
    detail = [{"loc": ["body", "prompt"], "msg": "prompt is blocked (fake)", "type": "value_error"}]
    fal_server.fake.fail_next(
        failure=Failure(error="Invalid", error_type="validation", result_status=422, detail=detail)
    )
    failed = await submit(fal_server, "fal-ai/instant-character", image_arguments(), receiver.url)
    first = await verified(keys, (await receiver.wait_for(1))[0])
    assert (first.request_id, first.status, first.error) == (failed, "ERROR", "Invalid status code: 422")
    assert first.payload == {"detail": detail}

    archive = data_uri(_zip(sample_reference_png()), "application/zip")
    arguments = {"images_data_url": archive, "trigger_word": "lkns0000abcd", "steps": 10}
    training = await submit(fal_server, "fal-ai/flux-lora-fast-training", arguments, receiver.url)
    second = await verified(keys, (await receiver.wait_for(2))[1])
    assert (second.request_id, second.status) == (training, "OK")
    assert second.payload is not None
    assert second.payload["diffusers_lora_file"]["url"].endswith("-lora.safetensors")
    assert keys.fetches == 1


async def test_tampered_deliveries_fail_verification(fal_server: FalServer, receiver: Receiver, keys: FalKeys) -> None:
    fal_server.fake.tamper_webhooks("bad_signature", "stale_timestamp")
    await submit(fal_server, "fal-ai/instant-character", image_arguments(), receiver.url)
    bad = (await receiver.wait_for(1))[0]
    await submit(fal_server, "fal-ai/instant-character", image_arguments(), receiver.url)
    stale = (await receiver.wait_for(2))[1]
    with pytest.raises(FalWebhookRejected, match="matches none of fal's 1 public key") as refused:
        await verified(keys, bad)
    assert refused.value.reason == "no_key_matched"
    assert keys.fetches == 1  # fetched just now: an unknown signer is no rotated key of fal's
    with pytest.raises(FalWebhookRejected, match="outside the 300 s tolerance"):
        await verified(keys, stale)
    replayed = {**stale[0], "x-fal-webhook-timestamp": str(int(time.time()))}  # a stale one, its time refreshed
    with pytest.raises(FalWebhookRejected, match="matches none"):
        await keys.verify(replayed, stale[1], now=time.time())
    assert keys.fetches == 1
    assert json.loads(bad[1])["status"] == json.loads(stale[1])["status"] == "OK"  # otherwise good deliveries


async def test_a_delivery_not_answered_2xx_is_tried_again(fal_server: FalServer, receiver: Receiver) -> None:
    fal_server.fake.webhook_retries, fal_server.fake.webhook_retry_s = 2, 0.05
    receiver.statuses.extend([503, 500])
    request_id = await submit(fal_server, "fal-ai/instant-character", image_arguments(), receiver.url)
    deliveries = await receiver.wait_for(3)
    for _ in range(250):  # the fake records a delivery once its answer is back: up to 5 s more
        if len(fal_server.fake.webhooks_sent) >= 3:
            break
        await asyncio.sleep(0.02)
    assert [status for _, _, status in fal_server.fake.webhooks_sent] == [503, 500, 204]
    assert len({headers["x-fal-webhook-request-id"] for headers, _ in deliveries}) == 1
    assert {request for _, request, _ in fal_server.fake.webhooks_sent} == {request_id}


@pytest.mark.parametrize(
    "url",
    ["http://203.0.113.5/hook", "http://localhost.example.com/hook", "https://example.com/hook", "ftp://127.0.0.1/x"],
)
async def test_the_fake_never_calls_back_anywhere_but_loopback(fal_server: FalServer, url: str) -> None:
    request_id = await submit(fal_server, "fal-ai/instant-character", image_arguments(), url)
    deadline = time.monotonic() + 15.0
    while not fal_server.fake.webhooks_sent:
        assert time.monotonic() < deadline, "the request never finished"
        await asyncio.sleep(0.02)
    assert fal_server.fake.webhooks_sent == [(url, request_id, None)]


async def test_a_jwks_that_cannot_be_had_is_unavailable_not_a_refusal(
    fal_server: FalServer, receiver: Receiver, keys: FalKeys
) -> None:
    await submit(fal_server, "fal-ai/instant-character", image_arguments(), receiver.url)
    delivery = (await receiver.wait_for(1))[0]
    fal_server.fake.inject("jwks", Fault.unavailable())
    with pytest.raises(FalKeysUnavailable, match="answered HTTP 503"):
        await verified(keys, delivery)
    assert (await verified(keys, delivery)).status == "OK"  # fal's retry, once its keys answer again


async def test_close_awaits_the_deliveries_under_way_then_cancels_what_is_left(
    fal_server: FalServer, receiver: Receiver
) -> None:
    request_id = await submit(fal_server, "fal-ai/instant-character", image_arguments(), receiver.url)
    await asyncio.to_thread(fal_server.fake.close, 15.0)  # from another thread than the fake's, as a test does
    assert fal_server.fake.webhooks_sent == [(receiver.url, request_id, 204)]  # finished, then delivered

    fal_server.fake.training_s = 60.0
    archive = data_uri(_zip(sample_reference_png()), "application/zip")
    await submit(fal_server, "fal-ai/flux-lora-fast-training", {"images_data_url": archive}, receiver.url)
    started = time.monotonic()
    await asyncio.to_thread(fal_server.fake.close, 0.3)
    assert time.monotonic() - started < 5.0  # a training that would run a minute is cancelled, not awaited
    assert len(fal_server.fake.webhooks_sent) == 1


# --- the adapters ask for the webhook ------------------------------------------------------------------


def instant_character(server: FalServer, webhook_url: str | None) -> FalInstantCharacter:
    client = new_client(http_timeout(connect_s=2.0, read_s=10.0))
    server.clients.append(client)
    settings = FalSettings(key=SecretStr(server.key), queue_url=server.url, poll_s=0.02, webhook_url=webhook_url)
    return fal_provider(
        settings, client, concurrency=2, retry=RetryPolicy(retries=3, base_s=0.1, cap_s=1.0), sleep=RecordingSleep()
    )


def flux_lora(server: FalServer, webhook_url: str) -> FalFluxLora:
    client = new_client(http_timeout(connect_s=2.0, read_s=10.0))
    server.clients.append(client)
    settings = FluxLoraSettings(
        key=SecretStr(server.key), queue_url=server.url, poll_s=0.02, training_steps=10, webhook_url=webhook_url
    )
    return flux_lora_provider(
        settings, client, concurrency=2, retry=RetryPolicy(retries=3, base_s=0.1, cap_s=1.0), sleep=RecordingSleep()
    )


async def test_the_adapter_asks_for_the_webhook_when_set_and_still_finishes_by_polling(
    fal_server: FalServer, receiver: Receiver, keys: FalKeys
) -> None:
    adapter = instant_character(fal_server, receiver.url)
    ref = reference_image(sample_reference_png(), key="studio/images/ref")
    identity = await adapter.create_identity(IdentityRequest(uuid.uuid4(), "studio", "instant_reference", [ref]))
    params = ShotParams.model_validate({"prompt": "close-up portrait of the astronaut", "seed": 7})
    image = await generate(adapter, ShotRequest(uuid.uuid4(), uuid.uuid4(), identity, params, [ref]), None)
    assert image.simulation is not None
    assert fal_server.fake.webhook_urls == [receiver.url]  # the query survived URL-encoding intact
    checked = await verified(keys, (await receiver.wait_for(1))[0])
    assert checked.status == "OK"
    assert checked.payload is not None
    assert checked.payload["images"][0]["url"] in {output["images"][0]["url"] for output in fal_server.fake.outputs}

    quiet = instant_character(fal_server, None)
    await generate(quiet, ShotRequest(uuid.uuid4(), uuid.uuid4(), identity, params, [ref]), None)
    assert fal_server.fake.webhook_urls == [receiver.url]  # no webhook_url: no fal_webhook


async def test_a_training_webhook_names_the_request_the_identity_job_ends_with(
    fal_server: FalServer, receiver: Receiver, keys: FalKeys
) -> None:
    adapter = flux_lora(fal_server, receiver.url)
    ref = reference_image(sample_reference_png(), key="studio/images/ref")
    job_id = await adapter.create_identity(IdentityRequest(uuid.uuid4(), "studio", "lora", [ref]))
    checked = await verified(keys, (await receiver.wait_for(1))[0])
    assert job_id.endswith(f":{checked.request_id}")  # what the gateway publishes as the job id
    assert checked.status == "OK"


def _zip(*images: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, data in enumerate(images):
            archive.writestr(f"ref{index}.png", data)
    return buffer.getvalue()
