"""The Astria fine-tune adapter (a tune, then prompts) against the loopback fake, over real HTTP."""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from contracts import ShotParams
from infra.fakes.astria import AstriaFake
from infra.fakes.faults import Fault
from infra.fakes.server import LoopbackServer
from infra.sample import sample_reference_png
from infra.webhooks.astria import AstriaCallback, CallbackRejected, callback_token, verify_callback
from services.provider_adapter.ports import (
    IdentityRequest,
    IdentityStatus,
    PermanentProviderError,
    ReferenceImage,
    ShotRequest,
)
from services.provider_adapter.providers.astria import FLUX1_DEV, AstriaSettings, AstriaTune, astria_provider
from services.provider_adapter.providers.http import RetryPolicy, http_timeout, new_client
from services.provider_adapter.providers.sim_images import SIMULATED_NOTICE
from tests.fakes import RecordingSleep, reference_image
from tests.provider_shots import generate

pytestmark = pytest.mark.integration


@dataclass
class CallbackSink:
    """Our side of the callbacks: checks each with `verify_callback`, answers 200 or the rejection's status."""

    secret: str
    accepted: list[AstriaCallback] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)

    async def receive(self, request: Request) -> Response:
        try:
            self.accepted.append(verify_callback(self.secret, str(request.url), await request.body()))
        except CallbackRejected as error:
            self.rejected.append(str(error))
            return JSONResponse({"error": str(error)}, status_code=error.status)
        return JSONResponse({"ok": True})

    async def wait(self, count: int, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.accepted) + len(self.rejected) < count:
            assert time.monotonic() < deadline, f"{count} callbacks expected, {self.accepted} {self.rejected}"
            await asyncio.sleep(0.02)


@dataclass
class AstriaServer:
    fake: AstriaFake
    url: str
    key: str
    sink: CallbackSink
    sink_url: str
    clients: list[httpx.AsyncClient] = field(default_factory=list)


@pytest.fixture
def callback_sink() -> Iterator[tuple[CallbackSink, str]]:
    sink = CallbackSink(secret=secrets.token_hex(16))
    app = Starlette(routes=[Route("/hooks/astria", sink.receive, methods=["POST"])])
    with LoopbackServer(app, name="astria-callbacks") as url:
        yield sink, f"{url}/hooks/astria"


@pytest.fixture
async def astria(callback_sink: tuple[CallbackSink, str]) -> AsyncIterator[AstriaServer]:
    """A fresh fake Astria server on loopback, with its own key, and a callback sink, for one test."""
    key = f"sd_{secrets.token_hex(16)}"
    fake = AstriaFake(api_key=key)
    sink, sink_url = callback_sink
    with LoopbackServer(fake.app, name="astria") as url:
        server = AstriaServer(fake, url, key, sink, sink_url)
        yield server
        for client in server.clients:
            await client.aclose()


def settings(server: AstriaServer, **overrides: Any) -> AstriaSettings:
    return replace(AstriaSettings(api_key=SecretStr(server.key), base_url=server.url, poll_s=0.02), **overrides)


def adapter(server: AstriaServer, config: AstriaSettings | None = None, *, read_s: float = 10.0) -> AstriaTune:
    """A fresh adapter instance: nothing shared with another but the fake's URL and key."""
    client = new_client(http_timeout(connect_s=2.0, read_s=read_s))
    server.clients.append(client)
    return astria_provider(
        config or settings(server),
        client,
        concurrency=2,
        retry=RetryPolicy(retries=3, base_s=0.05, cap_s=0.5),
        sleep=RecordingSleep(pace_s=0.01),
    )


def identity_request(*data: bytes) -> IdentityRequest:
    refs = [
        reference_image(item, key=f"studio/images/ref{i}") for i, item in enumerate(data or [sample_reference_png()])
    ]
    return IdentityRequest(uuid.uuid4(), "studio", "lora", refs)


def shot(identity_ref: str, ref: ReferenceImage, **params: object) -> ShotRequest:
    values = {"prompt": "close-up portrait of the astronaut, soft light", "seed": 7, **params}
    return ShotRequest(uuid.uuid4(), uuid.uuid4(), identity_ref, ShotParams.model_validate(values), [ref])


async def settle(provider: AstriaTune, job_id: str) -> tuple[IdentityStatus, list[IdentityStatus]]:
    pending: list[IdentityStatus] = []
    for _ in range(50):
        status = await provider.identity_status(job_id)
        if status.state != "pending":
            return status, pending
        pending.append(status)
    raise AssertionError(f"{job_id} still pending after 50 polls")


async def trained(server: AstriaServer, provider: AstriaTune | None = None) -> tuple[str, ReferenceImage]:
    provider = provider or adapter(server)
    ref = reference_image(sample_reference_png(), key="studio/images/ref0")
    status, _ = await settle(
        provider, await provider.create_identity(IdentityRequest(uuid.uuid4(), "s", "lora", [ref]))
    )
    assert status.identity_ref is not None
    return status.identity_ref, ref


async def test_a_tune_then_a_shot_end_to_end_is_a_priced_simulated_real_image(astria: AstriaServer) -> None:
    provider = adapter(astria, settings(astria, class_name="woman"))
    request = identity_request(sample_reference_png(), sample_reference_png())
    job_id = await provider.create_identity(request)
    tune_id = int(job_id.removeprefix("astria-tune:"))
    sent = astria.fake.received_tunes[-1]
    assert (sent["tune[name]"], sent["tune[base_tune_id]"], sent["tune[model_type]"]) == ("woman", "1504944", "lora")
    assert sent["tune[title]"].startswith(f"likeness-{request.character_id}-")
    assert sent["images"] == 2

    status, pending = await settle(provider, job_id)
    percents = [item.percent for item in pending]
    assert percents[0] == 0.0  # queued, before training starts
    assert any(5.0 <= percent < 100.0 for percent in percents[1:])  # training, toward Astria's eta
    assert percents == sorted(percents)
    assert status.state == "ready"
    assert status.identity_ref == f"astria-tune:{tune_id}:lora:{FLUX1_DEV}:ohwx:woman"
    assert (status.cost_usd, status.percent) == (1.5, 100.0)  # the (stale, unverified) $1.5 a tune
    assert status.training_seconds >= 0.0

    progress: list[tuple[float, str]] = []

    async def on_progress(percent: float, message: str) -> None:
        progress.append((percent, message))

    image = await generate(provider, shot(status.identity_ref, request.references[0], aspect_ratio="3:4"), on_progress)
    assert image.content_type == "image/png"
    with Image.open(io.BytesIO(image.data)) as decoded:
        assert decoded.size == (768, 1024)
        assert decoded.info["Description"] == SIMULATED_NOTICE
    assert image.cost_usd == pytest.approx(0.10)
    assert image.latency_ms > 0
    assert image.simulation is not None
    assert image.simulation.transform.startswith("fake Astria server on loopback")
    prompt = astria.fake.received_prompts[-1]
    assert prompt["text"] == f"<lora:{tune_id}:1> ohwx woman, close-up portrait of the astronaut, soft light"
    assert (prompt["w"], prompt["h"], prompt["seed"], prompt["num_images"]) == (768, 1024, 7, 1)
    assert [percent for percent, _ in progress][-1] == 100.0
    assert astria.fake.tunes_created == 1


async def test_a_429_is_waited_out_and_the_tune_made_once(astria: AstriaServer) -> None:
    astria.fake.inject("create_tune", Fault.rate_limited("0.2"))
    astria.fake.inject("prompt_status", Fault.rate_limited("0.1"))
    provider = adapter(astria)
    identity_ref, ref = await trained(astria, provider)
    await generate(provider, shot(identity_ref, ref))
    assert (astria.fake.tune_posts, astria.fake.tunes_created) == (2, 1)
    assert astria.fake.prompts_created == 1


async def test_5xx_and_slow_answers_are_retried_then_succeed(astria: AstriaServer) -> None:
    astria.fake.inject("create_tune", Fault.server_error(500))
    astria.fake.inject("tune", Fault.server_error(502))
    astria.fake.inject("prompt", Fault.server_error(503))
    astria.fake.inject("prompt_status", Fault.slow(1.0))  # past the client's read time-out
    provider = adapter(astria, read_s=0.3)
    identity_ref, ref = await trained(astria, provider)
    image = await generate(provider, shot(identity_ref, ref))
    assert image.data.startswith(b"\x89PNG")
    assert (astria.fake.tune_posts, astria.fake.tunes_created) == (2, 1)
    assert (astria.fake.prompt_posts, astria.fake.prompts_created) == (2, 1)


async def test_a_504_after_the_tune_was_made_finds_that_tune_instead_of_paying_twice(astria: AstriaServer) -> None:
    astria.fake.inject("create_tune", Fault.timed_out_after_processing())
    provider = adapter(astria)
    job_id = await provider.create_identity(identity_request())
    assert (astria.fake.tune_posts, astria.fake.tunes_created) == (1, 1)
    assert (await settle(provider, job_id))[0].state == "ready"


async def test_validation_errors_are_permanent_not_retried_and_say_what_is_wrong(astria: AstriaServer) -> None:
    with pytest.raises(PermanentProviderError, match=r"refused the tune \(HTTP 422: name: is not included in the list"):
        await adapter(astria, settings(astria, class_name="alien")).create_identity(identity_request())
    assert (astria.fake.tune_posts, astria.fake.tunes_created) == (1, 0)
    with pytest.raises(PermanentProviderError, match="images: could not be processed: not an image"):
        await adapter(astria).create_identity(identity_request(b"not an image at all"))
    assert (astria.fake.tune_posts, astria.fake.tunes_created) == (2, 0)

    ref = reference_image(sample_reference_png())
    forged = f"astria-tune:999:lora:{FLUX1_DEV}:ohwx:person"
    with pytest.raises(PermanentProviderError, match=r"HTTP 422.*lora 999 is not a trained tune"):
        await generate(adapter(astria), shot(forged, ref))
    assert (astria.fake.prompt_posts, astria.fake.prompts_created) == (1, 0)
    with pytest.raises(PermanentProviderError, match="not an astria-tune identity"):
        await generate(adapter(astria), shot("fal-flux-lora:lkns0badf00d:https://x/y", ref))


async def test_a_new_adapter_given_only_the_job_id_resumes_and_no_second_tune_is_made(astria: AstriaServer) -> None:
    astria.fake.training_polls = 4
    request = identity_request()
    first = adapter(astria)
    job_id = await first.create_identity(request)
    assert (await first.identity_status(job_id)).state == "pending"
    restarted = adapter(astria)  # as after a restart: a new instance, a new client, only the saved job id
    status, _ = await settle(restarted, job_id)
    assert status.state == "ready"
    assert await adapter(astria).create_identity(request) == job_id  # a job-level retry finds it by title
    assert astria.fake.tunes_created == 1


async def test_a_deleted_tune_is_reported_failed(astria: AstriaServer) -> None:
    provider = adapter(astria)
    job_id = await provider.create_identity(identity_request())
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {astria.key}"}) as client:
        deleted = await client.delete(f"{astria.url}/tunes/{job_id.removeprefix('astria-tune:')}")
    assert deleted.status_code == 204
    status = await provider.identity_status(job_id)
    assert status.state == "failed"
    assert "gone" in str(status.reason)


async def test_callbacks_carry_a_token_that_verifies_and_a_wrong_one_is_refused(astria: AstriaServer) -> None:
    secret = SecretStr(astria.sink.secret)
    config = settings(astria, callback_base_url=astria.sink_url, callback_secret=secret)
    provider = adapter(astria, config)
    request = identity_request()
    status, _ = await settle(provider, await provider.create_identity(request))
    assert status.identity_ref is not None
    await astria.sink.wait(1)
    [tune_callback] = astria.sink.accepted
    assert (tune_callback.kind, tune_callback.ref) == ("tune", str(request.character_id))
    assert tune_callback.tune is not None
    assert tune_callback.tune.trained_at is not None
    assert astria.sink.secret not in astria.fake.received_tunes[-1]["tune[callback]"]  # a derived token only

    astria.fake.wrong_callback_token = True
    await generate(provider, shot(status.identity_ref, request.references[0]))
    await astria.sink.wait(2)
    assert astria.sink.rejected == ["the callback's token does not match"]
    deadline = time.monotonic() + 5.0  # the fake records the answer after the sink has it
    while len(astria.fake.callbacks) < 2:
        assert time.monotonic() < deadline, f"the fake recorded {astria.fake.callbacks}"
        await asyncio.sleep(0.02)
    assert [code for _, code in astria.fake.callbacks] == [200, 401]


def test_verify_callback_reads_a_bare_token_and_either_body_shape() -> None:
    ref = str(uuid.uuid4())
    token = callback_token("s3cret", "prompt", ref)
    bare = verify_callback("s3cret", token, b'{"id": 7, "images": ["https://x/1.png"]}', kind="prompt", ref=ref)
    assert bare.prompt is not None
    assert bare.prompt.images == ["https://x/1.png"]
    wrapped = verify_callback(SecretStr("s3cret"), f"kind=prompt&ref={ref}&token={token}", {"prompt": {"id": 7}})
    assert wrapped.prompt is not None
    assert wrapped.prompt.id == 7
    with pytest.raises(CallbackRejected, match="does not match") as wrong:
        verify_callback("s3cret", token, b"{}", kind="tune", ref=ref)  # a prompt's token is no tune's
    assert wrong.value.status == 401
    with pytest.raises(CallbackRejected, match="no Astria callback secret"):
        verify_callback(None, token, b"{}", kind="prompt", ref=ref)
    with pytest.raises(CallbackRejected, match="not JSON") as unreadable:
        verify_callback("s3cret", token, b"<html>", kind="prompt", ref=ref)
    assert unreadable.value.status == 400


async def test_the_key_is_never_in_errors_logs_or_reprs(astria: AstriaServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong_key = f"sd_{secrets.token_hex(16)}"
    provider = adapter(astria, settings(astria, api_key=SecretStr(wrong_key)))
    with pytest.raises(PermanentProviderError, match="rejected the API key") as refused:
        await provider.create_identity(identity_request())
    assert "ASTRIA_API_KEY" in str(refused.value)
    assert wrong_key not in str(refused.value)

    provider = adapter(astria)
    astria.fake.inject("create_tune", Fault.rate_limited("0"), Fault(422, detail=f"bad header Bearer {astria.key}"))
    with pytest.raises(PermanentProviderError, match=r"\[redacted\]") as echoed:
        await provider.create_identity(identity_request())
    astria.fake.inject("tune", Fault(500, detail=f"echo {astria.key}"))
    await provider.identity_status(f"astria-tune:{FLUX1_DEV}")
    for text in (str(echoed.value), repr(provider), repr(settings(astria)), caplog.text):
        assert astria.key not in text
    assert "[redacted]" in caplog.text
    assert not AstriaTune(AstriaSettings(api_key=None), None).available()
