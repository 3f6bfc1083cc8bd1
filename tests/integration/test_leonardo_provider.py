"""The Leonardo Character Reference adapter against the loopback fake of Leonardo's API, over real HTTP."""

from __future__ import annotations

import io
import logging
import secrets
import time
import traceback
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

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
from infra.fakes.leonardo import API_PREFIX, CREDITS_PER_IMAGE, FILE_PREFIX, Endpoint, LeonardoFake
from infra.fakes.server import LoopbackServer
from infra.sample import sample_reference_png
from infra.webhooks.leonardo import verify_webhook
from services.provider_adapter.ports import (
    IdentityRequest,
    PermanentProviderError,
    ReferenceImage,
    ShotRequest,
    TransientProviderError,
)
from services.provider_adapter.providers.http import RetryPolicy, http_timeout, new_client
from services.provider_adapter.providers.leonardo import (
    LeonardoCharacterReference,
    LeonardoSettings,
    identity_for,
    leonardo_provider,
)
from services.provider_adapter.providers.sim_images import SIMULATED_NOTICE
from tests.fakes import RecordingSleep, reference_image
from tests.provider_shots import generate

pytestmark = pytest.mark.integration

USD_PER_CREDIT = 0.002


@dataclass
class LeonardoServer:
    fake: LeonardoFake
    url: str
    key: str
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"{self.url}{API_PREFIX}"

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()


@pytest.fixture
async def leonardo() -> AsyncIterator[LeonardoServer]:
    """A fresh fake Leonardo server on loopback, with its own key, for one test."""
    key = str(uuid.uuid4())  # Leonardo keys are UUIDs
    fake = LeonardoFake(api_key=key)
    with LoopbackServer(fake.app, name="leonardo") as url:
        server = LeonardoServer(fake, url, key)
        yield server
        await server.close()


class RecordingProgress:
    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []

    async def __call__(self, percent: float, message: str) -> None:
        self.calls.append((percent, message))


def reference(data: bytes | None = None) -> ReferenceImage:
    return reference_image(sample_reference_png() if data is None else data, key="studio/images/ref")


def provider(
    server: LeonardoServer, *, sleep: RecordingSleep | None = None, key: str | None = None, read_s: float = 10.0
) -> LeonardoCharacterReference:
    settings = LeonardoSettings(
        api_key=SecretStr(server.key if key is None else key),
        base_url=server.base_url,
        usd_per_api_credit=USD_PER_CREDIT,
        poll_s=0.02,
        poll_max_s=0.05,
    )
    client = new_client(http_timeout(connect_s=2.0, read_s=read_s))
    server.clients.append(client)
    return leonardo_provider(
        settings,
        client,
        concurrency=2,
        retry=RetryPolicy(retries=3, base_s=0.1, cap_s=1.0),
        sleep=sleep or RecordingSleep(pace_s=0.01),
    )


async def identity(adapter: LeonardoCharacterReference, ref: ReferenceImage | None = None) -> str:
    job = await adapter.create_identity(
        IdentityRequest(uuid.uuid4(), "studio", "instant_reference", [ref or reference()])
    )
    status = await adapter.identity_status(job)
    assert status.state == "ready"
    assert status.identity_ref is not None
    return status.identity_ref


def shot_request(identity_ref: str, **params: object) -> ShotRequest:
    values = {"prompt": "close-up portrait of the astronaut, soft light", "seed": 7, **params}
    return ShotRequest(uuid.uuid4(), uuid.uuid4(), identity_ref, ShotParams.model_validate(values), [reference()])


def all_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)) + repr(error)


async def test_an_identity_uploads_once_and_shots_come_back_as_real_images_with_cost_and_a_simulated_label(
    leonardo: LeonardoServer,
) -> None:
    adapter = provider(leonardo)
    identity_ref = await identity(adapter)
    assert (leonardo.fake.presigns, leonardo.fake.uploads) == (1, 1)
    progress = RecordingProgress()
    started = time.monotonic()
    image = await generate(adapter, shot_request(identity_ref, aspect_ratio="3:4", negative_prompt="blurry"), progress)
    elapsed_ms = (time.monotonic() - started) * 1000
    with Image.open(io.BytesIO(image.data)) as decoded:
        assert decoded.size == (768, 1024)
        assert decoded.info["Description"] == SIMULATED_NOTICE
    assert image.content_type == "image/png"
    assert image.cost_usd == pytest.approx(CREDITS_PER_IMAGE * USD_PER_CREDIT)
    assert 0 < image.latency_ms <= elapsed_ms
    assert image.simulation is not None
    assert image.simulation.transform.startswith("fake Leonardo server on loopback, not Leonardo.ai: close-up")
    assert progress.calls[0] == (10.0, "submitted to Leonardo")
    assert (50.0, "generating on Leonardo (pending)") in progress.calls
    assert progress.calls[-2:] == [(90.0, "completed on Leonardo; fetching the image"), (100.0, "done")]
    sent = leonardo.fake.received[-1]
    controlnet = sent.controlnets[0]
    assert identity_ref == identity_for(controlnet.initImageId)
    assert (controlnet.initImageType, controlnet.preprocessorId, controlnet.strengthType) == ("UPLOADED", 133, "High")
    assert (sent.prompt, sent.negative_prompt, sent.seed, sent.num_images) == (
        "close-up portrait of the astronaut, soft light",
        "blurry",
        7,
        1,
    )
    second = await generate(adapter, shot_request(identity_ref, prompt="wide shot of her on a beach"))
    assert second.data != image.data
    assert leonardo.fake.uploads == 1  # shots reuse the uploaded reference
    assert leonardo.fake.upload_authorizations == []  # the key never went to the upload URL


async def test_a_restart_after_the_upload_makes_shots_without_uploading_again(leonardo: LeonardoServer) -> None:
    saved = await identity(provider(leonardo))
    restarted = provider(leonardo)  # a new process: only the saved identity survives
    status = await restarted.identity_status(saved)
    assert (status.state, status.identity_ref) == ("ready", saved)
    image = await generate(restarted, shot_request(saved))
    assert image.data
    assert (leonardo.fake.presigns, leonardo.fake.uploads) == (1, 1)


async def test_a_429_is_waited_out_for_its_retry_after_then_the_shot_succeeds(leonardo: LeonardoServer) -> None:
    sleep = RecordingSleep(pace_s=0.01)
    adapter = provider(leonardo, sleep=sleep)
    identity_ref = await identity(adapter)
    leonardo.fake.inject("generate", Fault.rate_limited("2"))
    assert (await generate(adapter, shot_request(identity_ref))).data
    assert (leonardo.fake.submits, leonardo.fake.accepted) == (2, 1)
    assert sleep.calls[0] >= 2.0


@pytest.mark.parametrize("endpoint", ["init-image", "upload", "generate", "status", "file"])
async def test_a_503_anywhere_is_retried_and_the_identity_and_shot_succeed(
    leonardo: LeonardoServer, endpoint: Endpoint
) -> None:
    leonardo.fake.inject(endpoint, Fault.unavailable())
    adapter = provider(leonardo)
    image = await generate(adapter, shot_request(await identity(adapter)))
    assert image.data
    assert (leonardo.fake.uploads, leonardo.fake.accepted) == (1, 1)
    assert leonardo.fake.upload_attempts == (2 if endpoint == "upload" else 1)


async def test_a_status_poll_that_times_out_is_retried(leonardo: LeonardoServer) -> None:
    adapter = provider(leonardo, read_s=0.3)
    identity_ref = await identity(adapter)
    leonardo.fake.inject("status", Fault.slow(1.0))
    assert (await generate(adapter, shot_request(identity_ref))).data
    assert leonardo.fake.accepted == 1


async def test_a_validation_error_fails_for_good_after_one_submit_with_leonardos_message(
    leonardo: LeonardoServer,
) -> None:
    sleep = RecordingSleep(pace_s=0.01)
    adapter = provider(leonardo, sleep=sleep)
    request = shot_request(await identity(adapter))
    broken = ShotParams.model_construct(**{**request.params.model_dump(), "prompt": ""})  # slipped past our checks
    with pytest.raises(PermanentProviderError) as raised:
        await generate(adapter, replace(request, params=broken))
    assert "refused generation (HTTP 400: prompt: String should have at least 1 character)" in str(raised.value)
    assert leonardo.fake.submits == 1
    assert sleep.calls == []


async def test_an_identity_of_an_init_image_leonardo_does_not_have_is_refused_for_good(
    leonardo: LeonardoServer,
) -> None:
    adapter = provider(leonardo)
    with pytest.raises(PermanentProviderError, match="initImageId: no uploaded init image"):
        await generate(adapter, shot_request(identity_for(str(uuid.uuid4()))))
    with pytest.raises(PermanentProviderError, match="is not a leonardo-character-reference identity"):
        await generate(adapter, shot_request("fal-instant-character:" + "0" * 64))


async def test_a_failed_generation_is_a_transient_failure_the_job_retries(leonardo: LeonardoServer) -> None:
    adapter = provider(leonardo)
    identity_ref = await identity(adapter)
    leonardo.fake.fail_next()
    with pytest.raises(TransientProviderError, match="FAILED"):
        await generate(adapter, shot_request(identity_ref))
    assert (await generate(adapter, shot_request(identity_ref))).data


async def test_an_upload_that_is_not_an_image_is_refused_for_good(leonardo: LeonardoServer) -> None:
    adapter = provider(leonardo)
    with pytest.raises(PermanentProviderError, match=r"refused reference upload .*HTTP 400.*not an image"):
        await identity(adapter, reference(b"\x89PNG\r\n\x1a\n not really a png"))
    assert leonardo.fake.uploads == 0


async def test_without_a_key_leonardo_is_not_available() -> None:
    for key in (None, SecretStr("  ")):
        unconfigured = LeonardoCharacterReference(LeonardoSettings(api_key=key), None)
        assert not unconfigured.available()
        with pytest.raises(PermanentProviderError, match="set LEONARDO_API_KEY"):
            await unconfigured.create_identity(IdentityRequest(uuid.uuid4(), "studio", "instant_reference", []))


async def test_the_key_appears_in_no_error_log_or_repr_and_never_reaches_the_upload_url(
    leonardo: LeonardoServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong_key = str(uuid.uuid4())
    rejected = provider(leonardo, key=wrong_key)
    with pytest.raises(PermanentProviderError, match=r"rejected the API key.*LEONARDO_API_KEY") as refused:
        await identity(rejected)
    accepted = provider(leonardo)
    identity_ref = await identity(accepted)
    leonardo.fake.inject("generate", *[Fault.unavailable()] * 4)
    with pytest.raises(TransientProviderError, match="gave up after 4 tries") as gave_up:
        await generate(accepted, shot_request(identity_ref))
    assert "retry 3 of 3" in caplog.text
    settings = LeonardoSettings(api_key=SecretStr(leonardo.key), base_url=leonardo.base_url)
    for key in (wrong_key, leonardo.key):
        for text in (all_text(refused.value), all_text(gave_up.value), caplog.text):
            assert key not in text
        for thing in (rejected, accepted, settings, leonardo.fake):
            assert key not in repr(thing)
    assert leonardo.fake.upload_attempts == 1
    assert leonardo.fake.upload_authorizations == []


def webhook_receiver(callback_key: SecretStr) -> Starlette:
    """What the gateway's webhook endpoint will do: accept Leonardo's callback only with the right key."""
    received: list[bytes] = []

    async def on_webhook(request: Request) -> Response:
        if not verify_webhook(request.headers.get("authorization"), callback_key):
            return Response(status_code=401)
        received.append(await request.body())
        return Response(status_code=204)

    app = Starlette(routes=[Route("/webhooks/leonardo", on_webhook, methods=["POST"])])
    app.state.received = received
    return app


async def test_a_webhook_callback_is_accepted_with_the_right_key_and_refused_otherwise(
    leonardo: LeonardoServer,
) -> None:
    adapter = provider(leonardo)
    await generate(adapter, shot_request(await identity(adapter)))
    generation_id = next(iter(leonardo.fake._generations))
    callback_key = secrets.token_urlsafe(24)
    receiver = webhook_receiver(SecretStr(callback_key))
    with LoopbackServer(receiver, name="webhook-receiver") as url:
        hook = f"{url}/webhooks/leonardo"
        right = await leonardo.fake.deliver_webhook(generation_id, hook, callback_key)
        other_last = "y" if callback_key.endswith("x") else "x"  # a random key may already end in "x"
        wrong = await leonardo.fake.deliver_webhook(generation_id, hook, callback_key[:-1] + other_last)
        missing = await leonardo.fake.deliver_webhook(generation_id, hook, None)
    assert (right.status_code, wrong.status_code, missing.status_code) == (204, 401, 401)
    assert len(receiver.state.received) == 1
    assert b'"type":"image_generation.complete"' in receiver.state.received[0]
    assert FILE_PREFIX.encode() in receiver.state.received[0]


def test_verify_webhook_needs_a_configured_key_and_a_bearer_header() -> None:
    key = SecretStr("callback-secret")
    assert verify_webhook("Bearer callback-secret", key)
    assert verify_webhook("bearer callback-secret", "callback-secret")
    assert not verify_webhook("Bearer callback-secreT", key)
    assert not verify_webhook("Basic callback-secret", key)
    assert not verify_webhook("callback-secret", key)
    assert not verify_webhook(None, key)
    assert not verify_webhook("Bearer ", SecretStr(""))
    assert not verify_webhook("Bearer anything", None)
