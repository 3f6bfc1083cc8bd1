"""The fal Instant Character adapter against the loopback fake of fal's queue API, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import time
import traceback
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from PIL import Image
from pydantic import SecretStr

from contracts import ShotParams
from infra.fakes.fal import FILE_PREFIX, Failure, FalFake
from infra.fakes.faults import Fault
from infra.sample import sample_reference_png
from infra.stack.ports import free_port
from services.provider_adapter.app import build_providers
from services.provider_adapter.ports import (
    IdentityRequest,
    PermanentProviderError,
    ProviderError,
    ProviderJobFailed,
    ReferenceImage,
    ShotRequest,
    TransientProviderError,
)
from services.provider_adapter.providers.fal import FalInstantCharacter, FalSettings, fal_provider, identity_for
from services.provider_adapter.providers.http import RetryPolicy, http_timeout, new_client
from services.provider_adapter.providers.sim_images import SIMULATED_NOTICE
from services.provider_adapter.settings import ProviderAdapterSettings
from tests.fakes import RecordingSleep, reference_image
from tests.integration.conftest import FalServer
from tests.provider_shots import generate

pytestmark = pytest.mark.integration

T0 = 1_790_000_000.0


class RecordingProgress:
    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []

    async def __call__(self, percent: float, message: str) -> None:
        self.calls.append((percent, message))


def reference(data: bytes | None = None) -> ReferenceImage:
    return reference_image(sample_reference_png() if data is None else data, key="studio/images/ref")


def provider(
    server: FalServer,
    *,
    sleep: RecordingSleep | None = None,
    key: str | None = None,
    concurrency: int = 2,
    read_s: float = 10.0,
    wall_clock: float | None = None,
) -> FalInstantCharacter:
    settings = FalSettings(key=SecretStr(server.key if key is None else key), queue_url=server.url, poll_s=0.02)
    client = new_client(http_timeout(connect_s=2.0, read_s=read_s))
    server.clients.append(client)
    return fal_provider(
        settings,
        client,
        concurrency=concurrency,
        retry=RetryPolicy(retries=3, base_s=0.1, cap_s=1.0),
        sleep=sleep or RecordingSleep(pace_s=0.01),
        wall_clock=(lambda: wall_clock) if wall_clock is not None else time.time,
    )


async def shot(fal: FalInstantCharacter, ref: ReferenceImage | None = None, **params: object) -> ShotRequest:
    ref = ref or reference()
    job = await fal.create_identity(IdentityRequest(uuid.uuid4(), "studio", "instant_reference", [ref]))
    status = await fal.identity_status(job)
    assert status.identity_ref is not None
    values = {"prompt": "close-up portrait of the astronaut, soft light", "seed": 7, **params}
    return ShotRequest(uuid.uuid4(), uuid.uuid4(), status.identity_ref, ShotParams.model_validate(values), [ref])


def all_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)) + repr(error)


async def test_an_instant_identity_is_ready_at_once_for_free_and_names_its_references() -> None:
    fal = FalInstantCharacter(FalSettings(key=None), None)
    ref = reference()
    job = await fal.create_identity(IdentityRequest(uuid.uuid4(), "studio", "instant_reference", [ref]))
    status = await fal.identity_status(job)
    assert (status.state, status.percent, status.cost_usd, status.training_seconds) == ("ready", 100.0, 0.0, 0.0)
    assert status.identity_ref == job == identity_for([ref.ref.sha256])
    with pytest.raises(PermanentProviderError):
        await fal.identity_status("sim-lora-xyz")


async def test_a_shot_comes_back_as_a_real_image_with_cost_latency_progress_and_a_simulated_label(
    fal: FalServer,
) -> None:
    adapter = provider(fal)
    progress = RecordingProgress()
    started = time.monotonic()
    image = await generate(adapter, await shot(adapter, negative_prompt="blurry", steps=20, guidance=4.5), progress)
    elapsed_ms = (time.monotonic() - started) * 1000
    with Image.open(io.BytesIO(image.data)) as decoded:
        assert decoded.size == (1024, 1024)  # square_hd
        assert decoded.info["Description"] == SIMULATED_NOTICE
    assert image.content_type == "image/png"
    assert image.cost_usd == pytest.approx(0.10 * 1024 * 1024 / 1e6, abs=1e-6)
    assert 0 < image.latency_ms <= elapsed_ms
    assert image.simulation is not None
    assert image.simulation.drifted is False
    assert image.simulation.transform.startswith("fake fal server on loopback, not fal.ai: close-up portrait")
    messages = [message for _, message in progress.calls]
    assert messages[:4] == [
        "in fal's queue, position 2",
        "in fal's queue, position 1",
        "in fal's queue, position 0",
        "generating on fal",
    ]
    assert progress.calls[-2:] == [(90.0, "completed on fal; fetching the image"), (100.0, "done")]
    sent = fal.fake.received[-1]
    assert (sent.prompt, sent.negative_prompt, sent.seed) == (
        "close-up portrait of the astronaut, soft light",
        "blurry",
        7,
    )
    assert (sent.num_inference_steps, sent.guidance_scale, sent.output_format) == (20, 4.5, "png")
    assert fal.fake.submits == 1
    assert fal.fake.outputs[-1]["images"][0]["file_name"].startswith(FILE_PREFIX)


@pytest.mark.parametrize(
    ("aspect_ratio", "size"),
    [("3:4", (768, 1024)), ("16:9", (1024, 576)), ("2:3", (832, 1248))],
)
async def test_aspect_ratios_map_to_fals_image_sizes(fal: FalServer, aspect_ratio: str, size: tuple[int, int]) -> None:
    adapter = provider(fal)
    image = await generate(adapter, await shot(adapter, aspect_ratio=aspect_ratio, prompt="wide shot of her"))
    with Image.open(io.BytesIO(image.data)) as decoded:
        assert decoded.size == size
    assert image.cost_usd == pytest.approx(0.10 * size[0] * size[1] / 1e6, abs=1e-6)


@pytest.mark.parametrize("retry_after", ["2", "http-date"])
async def test_a_429_is_waited_out_for_at_least_its_retry_after_then_the_shot_succeeds(
    fal: FalServer, retry_after: str
) -> None:
    header = format_datetime(datetime.fromtimestamp(T0 + 3, UTC), usegmt=True) if retry_after == "http-date" else "2"
    fal.fake.inject("submit", Fault.rate_limited(header))
    sleep = RecordingSleep(pace_s=0.01)
    adapter = provider(fal, sleep=sleep, wall_clock=T0)
    image = await generate(adapter, await shot(adapter))
    assert image.data
    assert fal.fake.submits == 2
    assert sleep.calls[0] >= (3.0 if retry_after == "http-date" else 2.0)


async def test_a_503_on_submit_and_on_a_status_poll_are_retried_and_the_shot_succeeds(fal: FalServer) -> None:
    fal.fake.inject("submit", Fault.unavailable())
    fal.fake.inject("status", Fault.unavailable())
    image = await generate(provider(fal), await shot(provider(fal)))
    assert image.data
    assert fal.fake.submits == 2
    assert fal.fake.accepted == 1


async def test_a_submit_that_times_out_is_retried(fal: FalServer) -> None:
    fal.fake.inject("submit", Fault.slow(1.0))
    adapter = provider(fal, read_s=0.3)
    image = await generate(adapter, await shot(adapter))
    assert image.data
    assert fal.fake.submits == 2


async def test_a_validation_error_fails_for_good_after_one_submit_with_fals_message(fal: FalServer) -> None:
    sleep = RecordingSleep(pace_s=0.01)
    adapter = provider(fal, sleep=sleep)
    request = await shot(adapter)
    broken = ShotParams.model_construct(**{**request.params.model_dump(), "prompt": ""})  # slipped past our checks
    with pytest.raises(PermanentProviderError) as raised:
        await generate(adapter, replace(request, params=broken))
    assert "HTTP 422: prompt: String should have at least 1 character" in str(raised.value)
    assert fal.fake.submits == 1
    assert sleep.calls == []


async def test_an_unreadable_reference_fails_for_good_with_fals_image_load_error(fal: FalServer) -> None:
    adapter = provider(fal)
    with pytest.raises(PermanentProviderError, match="image_url: Image load error"):
        await generate(adapter, await shot(adapter, reference(b"\x89PNG\r\n\x1a\n not really a png")))
    assert fal.fake.submits == 1


async def test_completed_with_an_error_is_a_failure_the_job_retries(fal: FalServer) -> None:
    fal.fake.fail_next(1, Failure(error="Runner disconnected (fake)", error_type="runner_disconnected"))
    adapter = provider(fal)
    with pytest.raises(
        TransientProviderError,
        match=r"completed \(runner_disconnected\): Runner disconnected \(fake\) \(its result: .*HTTP 500",
    ):
        await generate(adapter, await shot(adapter))
    assert fal.fake.cancels == 0  # fal had finished with it
    assert (await generate(adapter, await shot(adapter))).data  # the job-level retry: a new request succeeds
    assert fal.fake.submits == 2


async def test_without_a_key_fal_is_not_available_and_not_offered(fal: FalServer) -> None:
    unconfigured = FalInstantCharacter(FalSettings(key=SecretStr("  "), queue_url=fal.url), None)
    assert not unconfigured.available()
    with pytest.raises(PermanentProviderError, match="set FAL_KEY"):
        await generate(unconfigured, await shot(unconfigured))
    assert set(build_providers(ProviderAdapterSettings(fal_key=None))) == {"sim"}
    configured = ProviderAdapterSettings(fal_key=SecretStr(fal.key), fal_queue_url=fal.url)
    assert set(build_providers(configured)) == {"sim", "fal-instant-character", "fal-flux-lora", "fal-flux-redux"}
    assert fal.fake.submits == 0


async def test_the_key_appears_in_no_exception_log_or_repr(fal: FalServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong_key = f"fal-test-wrong:{secrets.token_hex(16)}"
    rejected = provider(fal, key=wrong_key)
    with pytest.raises(PermanentProviderError, match="rejected the API key") as refused:
        await generate(rejected, await shot(rejected))
    fal.fake.inject("submit", *[Fault.unavailable()] * 4)
    accepted = provider(fal)
    with pytest.raises(TransientProviderError, match="gave up after 4 tries") as gave_up:
        await generate(accepted, await shot(accepted))
    assert "retry 3 of 3" in caplog.text
    settings = ProviderAdapterSettings(fal_key=SecretStr(fal.key), fal_queue_url=fal.url)
    for key in (wrong_key, fal.key):
        for text in (all_text(refused.value), all_text(gave_up.value), caplog.text):
            assert key not in text
        for thing in (rejected, accepted, settings, fal.fake, build_providers(settings)):
            assert key not in repr(thing)


@pytest.mark.parametrize(("limit", "most"), [(2, 2), (5, 5)])
async def test_no_more_requests_are_in_flight_than_the_concurrency_limit(fal: FalServer, limit: int, most: int) -> None:
    adapter = provider(fal, concurrency=limit)
    requests = [await shot(adapter, seed=seed) for seed in range(5)]
    images = await asyncio.gather(*(generate(adapter, request) for request in requests))
    assert len({image.data for image in images}) == 5
    assert fal.fake.max_in_flight == most  # limit 5 shows the fake would see more if the adapter allowed it


async def test_cancelling_the_wait_leaves_the_request_at_fal_and_a_restarted_adapter_resumes_it(
    fal: FalServer,
) -> None:
    fal.fake.queue_position = 20  # twenty polls to the front
    adapter = provider(fal)
    queued = asyncio.Event()

    async def on_progress(percent: float, message: str) -> None:
        if fal.fake.status_polls >= 2:
            queued.set()

    request = await shot(adapter)
    job_id = await adapter.start_shot(request)
    task = asyncio.create_task(adapter.finish_shot(job_id, request, on_progress))
    await asyncio.wait_for(queued.wait(), timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (fal.fake.cancels, fal.fake.in_flight) == (0, 1)  # a shutdown must not throw away a paid request
    restarted = provider(fal)  # a new process: nothing of the first in memory, only the saved job id
    image = await restarted.finish_shot(job_id, request)
    assert image.data.startswith(b"\x89PNG")
    assert (fal.fake.submits, fal.fake.accepted, fal.fake.in_flight) == (1, 1, 0)


async def test_a_request_that_outlives_the_time_out_is_cancelled_and_a_new_attempt_may_submit(fal: FalServer) -> None:
    fal.fake.queue_position = 1000  # never reaches the front
    settings = FalSettings(key=SecretStr(fal.key), queue_url=fal.url, poll_s=0.02, timeout_s=0.2)
    client = new_client(http_timeout(connect_s=2.0, read_s=10.0))
    fal.clients.append(client)
    adapter = fal_provider(settings, client, concurrency=2, sleep=RecordingSleep(pace_s=0.05))
    request = await shot(adapter)
    with pytest.raises(ProviderJobFailed, match="not done after 0 s; cancelled it"):
        await generate(adapter, request)
    assert (fal.fake.cancels, fal.fake.in_flight) == (1, 0)


async def test_a_request_fal_no_longer_knows_is_a_failed_job_when_resumed(fal: FalServer) -> None:
    adapter = provider(fal)
    request = await shot(adapter)
    with pytest.raises(ProviderJobFailed, match="no longer knows request"):
        await adapter.finish_shot(f"{adapter.name}:fal-ai/instant-character:{uuid.uuid4()}", request)


async def test_an_unreachable_queue_is_a_transient_failure() -> None:
    server = FalServer(FalFake(api_key="unused:key"), f"http://127.0.0.1:{free_port()}", "unused:key")
    adapter = provider(server)
    with pytest.raises(ProviderError, match=r"connection failed \(ConnectError\)") as raised:
        await generate(adapter, await shot(adapter))
    assert raised.value.retryable
    await server.close()
