"""The Replicate Flux LoRA adapter (training, then predictions) against the loopback fake, over real HTTP."""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from contracts import ShotParams
from infra.fakes.faults import Fault
from infra.fakes.replicate import FILE_PREFIX, ReplicateFake, sign
from infra.fakes.server import LoopbackServer
from infra.sample import sample_reference_png
from infra.webhooks.replicate import WebhookVerificationError, verify_webhook
from services.provider_adapter.ports import (
    IdentityRequest,
    IdentityStatus,
    PermanentProviderError,
    ShotRequest,
    TransientProviderError,
)
from services.provider_adapter.providers.fal_flux_lora import trigger_word
from services.provider_adapter.providers.http import RetryPolicy, http_timeout, new_client
from services.provider_adapter.providers.replicate import (
    ReplicateFluxLora,
    ReplicateSettings,
    Training,
    replicate_provider,
    training_percent,
)
from services.provider_adapter.providers.sim_images import SIMULATED_NOTICE
from tests.fakes import RecordingSleep, reference_image
from tests.provider_shots import generate

pytestmark = pytest.mark.integration


@dataclass
class ReplicateServer:
    fake: ReplicateFake
    url: str
    token: str
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()


@dataclass
class Receiver:
    """A loopback webhook receiver: it records what arrives, raw."""

    url: str
    deliveries: list[tuple[dict[str, str], bytes]]

    async def wait_for(self, count: int, timeout_s: float = 10.0) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout_s
        while len(self.deliveries) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.deliveries)} webhook(s) arrived, not {count}")
            await asyncio.sleep(0.02)
        return self.deliveries


@pytest.fixture
async def replicate() -> AsyncIterator[ReplicateServer]:
    """A fresh fake Replicate server on loopback, with its own token, for one test."""
    token = f"r8_{secrets.token_hex(16)}"
    fake = ReplicateFake(api_token=token)
    with LoopbackServer(fake.app, name="replicate") as url:
        server = ReplicateServer(fake, url, token)
        yield server
        await server.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    deliveries: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: Request) -> Response:
        deliveries.append((dict(request.headers), await request.body()))
        return Response(status_code=204)

    with LoopbackServer(Starlette(routes=[Route("/hook", hook, methods=["POST"])]), name="webhook") as url:
        yield Receiver(f"{url}/hook", deliveries)


def adapter(
    server: ReplicateServer, *, steps: int = 1000, timeout_s: float = 300.0, webhook_url: str | None = None
) -> ReplicateFluxLora:
    """A fresh adapter instance: nothing shared with another but the fake's URL and token."""
    client = new_client(http_timeout(connect_s=2.0, read_s=10.0))
    server.clients.append(client)
    settings = ReplicateSettings(
        token=SecretStr(server.token),
        base_url=server.url,
        destination_owner="likeness",
        destination_model="characters",
        training_steps=steps,
        poll_s=0.02,
        poll_max_s=0.05,
        timeout_s=timeout_s,
        webhook_url=webhook_url,
    )
    return replicate_provider(
        settings,
        client,
        concurrency=2,
        retry=RetryPolicy(retries=3, base_s=0.1, cap_s=1.0),
        sleep=RecordingSleep(pace_s=0.01),
    )


def identity_request(*data: bytes) -> IdentityRequest:
    refs = [
        reference_image(item, key=f"studio/images/ref{i}") for i, item in enumerate(data or [sample_reference_png()])
    ]
    return IdentityRequest(uuid.uuid4(), "studio", "lora", refs)


async def settle(provider: ReplicateFluxLora, job_id: str) -> tuple[IdentityStatus, list[IdentityStatus]]:
    pending: list[IdentityStatus] = []
    for _ in range(50):
        status = await provider.identity_status(job_id)
        if status.state != "pending":
            return status, pending
        pending.append(status)
        await asyncio.sleep(0.02)  # as the service's identity poll would (much faster here)
    raise AssertionError(f"{job_id} still pending after 50 polls")


def shot(identity_ref: str, **params: object) -> ShotRequest:
    values = {"prompt": "close-up portrait of the astronaut, soft light", "seed": 7, **params}
    ref = reference_image(sample_reference_png(), key="studio/images/ref0")
    return ShotRequest(uuid.uuid4(), uuid.uuid4(), identity_ref, ShotParams.model_validate(values), [ref])


async def trained(server: ReplicateServer) -> tuple[ReplicateFluxLora, str]:
    provider = adapter(server)
    status, _ = await settle(provider, await provider.create_identity(identity_request()))
    assert status.identity_ref is not None, status
    return provider, status.identity_ref


async def test_training_then_shots_end_to_end(replicate: ReplicateServer) -> None:
    provider = adapter(replicate, steps=600)
    request = identity_request(sample_reference_png(), sample_reference_png())
    job_id = await provider.create_identity(request)
    trigger = trigger_word(request.character_id)
    assert job_id.startswith(f"replicate-flux-lora:{trigger}:")
    sent = replicate.fake.received_trainings[-1]
    assert sent.destination == "likeness/characters"
    assert (sent.input["trigger_word"], sent.input["steps"]) == (trigger, 600)
    assert sent.input["input_images"].startswith("data:application/zip;base64,")

    status, pending = await settle(provider, job_id)
    percents = [item.percent for item in pending]
    assert percents[0] == 0.0  # starting
    assert any(5.0 <= percent < 100.0 for percent in percents[1:])  # processing, from the logs' tqdm steps
    assert percents == sorted(percents)
    assert status.state == "ready", status
    assert status.identity_ref is not None
    assert status.identity_ref.startswith(f"replicate-flux-lora:{trigger}:likeness/characters:")
    assert status.training_seconds >= 0.0
    assert status.cost_usd == pytest.approx(status.training_seconds * 0.001525, abs=1e-6)

    progress: list[float] = []

    async def on_progress(percent: float, message: str) -> None:
        progress.append(percent)

    image = await generate(provider, shot(status.identity_ref, aspect_ratio="3:4", steps=80, guidance=4.5), on_progress)
    with Image.open(io.BytesIO(image.data)) as decoded:
        assert decoded.size == (896, 1152)
        assert decoded.info["Description"] == SIMULATED_NOTICE
    assert image.content_type == "image/png"
    assert image.latency_ms > 0
    assert image.cost_usd > 0
    assert image.simulation is not None
    assert image.simulation.transform.startswith("fake Replicate server on loopback")
    assert progress[-1] == 100.0
    prediction = replicate.fake.received_predictions[-1]
    assert prediction.version == status.identity_ref.rpartition(":")[2]
    assert prediction.input["prompt"] == f"{trigger} close-up portrait of the astronaut, soft light"
    assert (prediction.input["num_inference_steps"], prediction.input["guidance_scale"]) == (50, 4.5)  # clamped
    assert replicate.fake.training_submits == 1


async def test_a_429_then_success(replicate: ReplicateServer) -> None:
    provider, identity_ref = await trained(replicate)
    replicate.fake.inject("predict", Fault.rate_limited("0"))
    image = await generate(provider, shot(identity_ref))
    assert image.data.startswith(b"\x89PNG")
    assert (replicate.fake.prediction_submits, replicate.fake.predictions_accepted) == (2, 1)


async def test_a_5xx_then_success(replicate: ReplicateServer) -> None:
    replicate.fake.inject("train", Fault.unavailable(503))
    replicate.fake.inject("training", Fault.unavailable(502))
    provider, identity_ref = await trained(replicate)
    replicate.fake.inject("prediction", Fault.unavailable(500))
    replicate.fake.inject("file", Fault.unavailable(503))
    assert (await generate(provider, shot(identity_ref))).data.startswith(b"\x89PNG")
    assert (replicate.fake.training_submits, replicate.fake.training_accepted) == (2, 1)


async def test_a_slow_answer_still_succeeds(replicate: ReplicateServer) -> None:
    provider, identity_ref = await trained(replicate)
    replicate.fake.inject("prediction", Fault.slow(0.3))
    assert (await generate(provider, shot(identity_ref))).data.startswith(b"\x89PNG")


async def test_a_validation_error_is_permanent_not_retried_and_says_what_was_wrong(replicate: ReplicateServer) -> None:
    provider = adapter(replicate, steps=99999)
    with pytest.raises(PermanentProviderError, match=r"422.*input\.steps.*less than or equal to 6000"):
        await provider.create_identity(identity_request())
    assert (replicate.fake.training_submits, replicate.fake.training_accepted) == (1, 0)
    with pytest.raises(PermanentProviderError, match=r"422.*input_images.*holds no image"):
        await adapter(replicate).create_identity(identity_request(b"not an image at all"))
    assert replicate.fake.training_submits == 2


async def test_a_version_replicate_never_trained_is_refused_permanently(replicate: ReplicateServer) -> None:
    forged = f"replicate-flux-lora:lkns0badf00d:likeness/characters:{'ab' * 32}"
    with pytest.raises(PermanentProviderError, match=r"422.*does not exist"):
        await generate(adapter(replicate), shot(forged))
    with pytest.raises(PermanentProviderError, match="not a replicate-flux-lora identity"):
        await generate(adapter(replicate), shot("fal-flux-lora:lkns0badf00d:https://x/y"))
    assert replicate.fake.prediction_submits == 1


async def test_a_missing_destination_model_is_a_clear_permanent_error(replicate: ReplicateServer) -> None:
    replicate.fake.destinations.clear()
    with pytest.raises(PermanentProviderError, match="training destination does not exist"):
        await adapter(replicate).create_identity(identity_request())


async def test_a_restart_mid_training_resumes_by_polling_and_never_resubmits(replicate: ReplicateServer) -> None:
    replicate.fake.training_s = 0.3
    first = adapter(replicate)
    job_id = await first.create_identity(identity_request())
    assert (await first.identity_status(job_id)).state == "pending"
    assert (await first.identity_status(job_id)).state == "pending"
    status, _ = await settle(adapter(replicate), job_id)  # as after a restart: a new instance, a new client
    assert status.state == "ready"
    assert replicate.fake.training_submits == replicate.fake.training_accepted == 1


async def test_a_failed_training_is_reported_with_replicates_error(replicate: ReplicateServer) -> None:
    replicate.fake.fail_next(1, "Training failed: too few faces (fake)")
    provider = adapter(replicate)
    status, _ = await settle(provider, await provider.create_identity(identity_request()))
    assert status.state == "failed"
    assert "too few faces (fake)" in str(status.reason)


async def test_a_failed_prediction_is_transient_with_replicates_error(replicate: ReplicateServer) -> None:
    provider, identity_ref = await trained(replicate)
    replicate.fake.fail_next(1, "CUDA out of memory (fake)")
    with pytest.raises(TransientProviderError, match="failed: CUDA out of memory"):
        await generate(provider, shot(identity_ref))


async def test_a_prediction_past_its_time_out_is_cancelled(replicate: ReplicateServer) -> None:
    _, identity_ref = await trained(replicate)
    replicate.fake.hold_predictions = True
    with pytest.raises(TransientProviderError, match="not done after 0 s; cancelled it"):
        await generate(adapter(replicate, timeout_s=0.1), shot(identity_ref))
    [prediction_id] = replicate.fake.job_ids("prediction")
    assert replicate.fake.cancels == 1
    assert replicate.fake.status_of(prediction_id) == "canceled"


async def test_the_fake_holds_a_create_open_with_prefer_wait(replicate: ReplicateServer) -> None:
    _, identity_ref = await trained(replicate)
    version = identity_ref.rpartition(":")[2]
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.post(
            f"{replicate.url}/v1/predictions",
            json={"version": version, "input": {"prompt": "a portrait"}},
            headers={"Authorization": f"Bearer {replicate.token}", "Prefer": "wait=5"},
        )
    assert response.status_code == 201
    assert response.json()["status"] == "succeeded"
    assert FILE_PREFIX in response.json()["output"][0]


async def test_the_token_is_never_in_errors_reprs_or_logs(
    replicate: ReplicateServer, caplog: pytest.LogCaptureFixture
) -> None:
    provider = adapter(replicate)
    token = replicate.token
    caplog.set_level(logging.DEBUG)
    replicate.fake.inject("train", Fault(500, detail=f"echoed Authorization: Bearer {token}"))
    replicate.fake.inject("train", *[Fault(500, detail=f"still {token}")] * 4)
    with pytest.raises(TransientProviderError) as raised:
        await provider.create_identity(identity_request())
    assert "[redacted]" in str(raised.value)
    texts = [str(raised.value), repr(raised.value), repr(provider), repr(provider.http()), caplog.text]
    texts.append(repr(ReplicateSettings(token=SecretStr(token), destination_owner="a", destination_model="b")))
    wrong = ReplicateServer(replicate.fake, replicate.url, "r8_wrong" + token[8:])
    with pytest.raises(PermanentProviderError, match="rejected the API key") as rejected:
        await adapter(wrong).create_identity(identity_request())
    await wrong.close()
    texts.append(str(rejected.value))
    assert not [text for text in texts if token in text or token[3:] in text]


def test_an_unconfigured_adapter_is_unavailable_and_says_what_to_set() -> None:
    client = new_client(http_timeout(connect_s=1.0, read_s=1.0))
    provider = replicate_provider(ReplicateSettings(token=None), client, concurrency=1)
    assert not provider.available()
    with pytest.raises(PermanentProviderError, match="REPLICATE_API_TOKEN"):
        provider.http()
    no_destination = ReplicateSettings(token=SecretStr("r8_x"))
    assert not replicate_provider(no_destination, client, concurrency=1).available()


def test_progress_is_estimated_from_the_logs_tqdm_steps() -> None:
    assert training_percent(Training(id="t", status="starting")) == 0.0
    assert training_percent(Training(id="t", status="processing")) == 5.0
    logs = "Loading checkpoint shards: 100%|###| 3/3 [00:01<00:00]\ntrain:  50%|##  | 500/1000 [01:00<01:00, 1s/it]\n"
    assert training_percent(Training(id="t", status="processing", logs=logs)) == 50.0


# --- webhooks -----------------------------------------------------------------------------------------


def test_webhook_signature_matches_the_standard_webhooks_test_vector() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    assert verify_webhook(secret, headers, b'{"test": 2432232314}', now=1614265330) == {"test": 2432232314}


def test_webhook_verification_refuses_missing_headers_and_other_keys() -> None:
    secret = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
    body = b'{"id": "p1", "status": "succeeded"}'
    good = {"webhook-id": "msg_1", "webhook-timestamp": "1000", "webhook-signature": sign(secret, "msg_1", 1000, body)}
    assert verify_webhook(SecretStr(secret), good, body, now=1010)["status"] == "succeeded"
    several = {**good, "webhook-signature": "v1,bm90IGl0 " + good["webhook-signature"]}
    assert verify_webhook(secret, several, body, now=1010)["id"] == "p1"
    with pytest.raises(WebhookVerificationError, match="missing webhook-signature"):
        verify_webhook(secret, {k: v for k, v in good.items() if k != "webhook-signature"}, body, now=1010)
    with pytest.raises(WebhookVerificationError, match="does not match"):
        verify_webhook(secret, good, body.replace(b"succeeded", b"failed"), now=1010)
    with pytest.raises(WebhookVerificationError, match="outside the 300 s tolerance"):
        verify_webhook(secret, good, body, now=1000 + 301)


async def test_webhooks_from_the_fake_verify_when_valid_and_fail_when_tampered_or_stale(
    replicate: ReplicateServer, receiver: Receiver
) -> None:
    async with httpx.AsyncClient() as client:
        answer = await client.get(
            f"{replicate.url}/v1/webhooks/default/secret", headers={"Authorization": f"Bearer {replicate.token}"}
        )
    secret = answer.json()["key"]
    assert secret.startswith("whsec_")

    provider = adapter(replicate, webhook_url=receiver.url)
    replicate.fake.tamper_webhooks("bad_signature")
    first = await provider.create_identity(identity_request())
    await settle(provider, first)
    replicate.fake.tamper_webhooks("stale")
    second = await provider.create_identity(identity_request())
    await settle(provider, second)
    deliveries = await receiver.wait_for(2)
    assert replicate.fake.received_trainings[0].webhook_events_filter == ["completed"]

    bad_headers, bad_body = deliveries[0]
    with pytest.raises(WebhookVerificationError, match="does not match"):
        verify_webhook(secret, bad_headers, bad_body, now=time.time())
    stale_headers, stale_body = deliveries[1]
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify_webhook(secret, stale_headers, stale_body, now=time.time())

    third = await provider.create_identity(identity_request())
    await settle(provider, third)
    headers, body = (await receiver.wait_for(3))[2]
    payload = verify_webhook(secret, headers, body, now=time.time())
    assert (payload["id"], payload["status"]) == (third.rpartition(":")[2], "succeeded")
    assert payload["output"]["version"].startswith("likeness/characters:")
