"""The fal Flux LoRA adapter (training, then flux-lora shots) against the loopback fake, over real HTTP."""

from __future__ import annotations

import io
import time
import uuid
import zipfile

import pytest
from PIL import Image
from pydantic import SecretStr

from contracts import ShotParams
from infra.fakes.fal import FILE_PREFIX, Failure
from infra.fakes.faults import Fault
from infra.sample import sample_reference_png
from services.provider_adapter.ports import (
    IdentityRequest,
    IdentityStatus,
    PermanentProviderError,
    ReferenceImage,
    ShotRequest,
)
from services.provider_adapter.providers.fal_flux_lora import (
    FalFluxLora,
    FluxLoraSettings,
    flux_lora_provider,
    training_percent,
    trigger_word,
)
from services.provider_adapter.providers.fal_queue import Status, data_uri, request_urls
from services.provider_adapter.providers.http import RetryPolicy, http_timeout, new_client
from services.provider_adapter.providers.sim_images import SIMULATED_NOTICE
from tests.fakes import RecordingSleep, reference_image
from tests.integration.conftest import FalServer
from tests.provider_shots import generate

pytestmark = pytest.mark.integration


def adapter(server: FalServer, *, steps: int = 1000) -> FalFluxLora:
    """A fresh adapter instance: nothing shared with another but the fake's URL and key."""
    client = new_client(http_timeout(connect_s=2.0, read_s=10.0))
    server.clients.append(client)
    return flux_lora_provider(
        FluxLoraSettings(key=SecretStr(server.key), queue_url=server.url, poll_s=0.02, training_steps=steps),
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


async def settle(provider: FalFluxLora, job_id: str) -> tuple[IdentityStatus, list[IdentityStatus]]:
    pending: list[IdentityStatus] = []
    for _ in range(50):
        status = await provider.identity_status(job_id)
        if status.state != "pending":
            return status, pending
        pending.append(status)
    raise AssertionError(f"{job_id} still pending after 50 polls")


def shot(identity_ref: str, ref: ReferenceImage, **params: object) -> ShotRequest:
    values = {"prompt": "close-up portrait of the astronaut, soft light", "seed": 7, **params}
    return ShotRequest(uuid.uuid4(), uuid.uuid4(), identity_ref, ShotParams.model_validate(values), [ref])


async def test_training_returns_a_job_at_once_reports_progress_then_a_lora_and_its_cost(fal: FalServer) -> None:
    provider = adapter(fal, steps=600)
    request = identity_request(sample_reference_png(), sample_reference_png())
    started = time.monotonic()
    job_id = await provider.create_identity(request)
    assert time.monotonic() - started < 2.0  # the submit only: the service persists the id before waiting
    trigger = trigger_word(request.character_id)
    assert job_id.startswith(f"fal-flux-lora:{trigger}:")
    assert trigger.startswith("lkns")
    sent = fal.fake.received_trainings[-1]
    assert (sent.trigger_word, sent.steps, sent.create_masks) == (trigger, 600, True)
    assert sent.images_data_url.startswith("data:application/zip;base64,")

    status, pending = await settle(provider, job_id)
    percents = [item.percent for item in pending]
    assert percents[0] == 0.0  # IN_QUEUE
    assert any(5.0 <= percent < 100.0 for percent in percents[1:])  # IN_PROGRESS, from the logs' steps
    assert percents == sorted(percents)
    assert status.state == "ready"
    assert status.identity_ref is not None
    lora_url = fal.fake.outputs[-1]["diffusers_lora_file"]["url"]
    assert status.identity_ref == f"fal-flux-lora:{trigger}:{lora_url}"
    assert FILE_PREFIX in lora_url
    assert lora_url.endswith(".safetensors")
    assert (status.cost_usd, status.percent) == (2.0, 100.0)  # the price table's (disputed) $2 a run
    assert status.training_seconds >= 0.0
    assert fal.fake.training_submits == 1


async def test_a_new_adapter_given_only_the_job_id_resumes_polling_and_never_resubmits(fal: FalServer) -> None:
    first = adapter(fal)
    job_id = await first.create_identity(identity_request())
    assert (await first.identity_status(job_id)).state == "pending"
    status, _ = await settle(adapter(fal), job_id)  # as after a restart: a new instance, a new client
    assert status.state == "ready"
    assert fal.fake.training_submits == fal.fake.training_accepted == 1


def test_the_status_url_is_rebuilt_in_the_documented_form_without_a_subpath() -> None:
    urls = request_urls("https://queue.fal.run", "fal-ai/flux/dev/redux", "abc")
    assert urls.status_url == "https://queue.fal.run/fal-ai/flux/requests/abc/status"
    urls = request_urls("https://queue.fal.run", "fal-ai/flux-lora-fast-training", "abc")
    assert (urls.status_url, urls.response_url) == (
        "https://queue.fal.run/fal-ai/flux-lora-fast-training/requests/abc/status",
        "https://queue.fal.run/fal-ai/flux-lora-fast-training/requests/abc",
    )


def test_progress_is_estimated_from_the_logs_steps() -> None:
    assert training_percent(Status(status="IN_QUEUE", queue_position=3)) == 0.0
    assert training_percent(Status(status="IN_PROGRESS")) == 5.0
    logs = [{"message": "step 250/1000"}, {"message": "Training step 500/1000"}]
    assert training_percent(Status.model_validate({"status": "IN_PROGRESS", "logs": logs})) == 50.0


async def test_references_that_are_no_images_are_refused_permanently(fal: FalServer) -> None:
    with pytest.raises(PermanentProviderError, match="Image load error: the zip archive holds no image"):
        await adapter(fal).create_identity(identity_request(b"not an image at all"))
    assert fal.fake.training_accepted == 0


async def test_the_fake_checks_the_training_input_and_zip(fal: FalServer) -> None:
    provider = adapter(fal)
    http = provider.queue().http
    url = f"{fal.url}/fal-ai/flux-lora-fast-training"
    with pytest.raises(PermanentProviderError, match=r"422.*images_data_url"):
        await http.call("POST", url, what="submit", json={"trigger_word": "x"})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("00.txt", "a caption, no image")
    with pytest.raises(PermanentProviderError, match="Image load error: images_data_url is not a zip archive"):
        await http.call("POST", url, what="submit", json={"images_data_url": "data:application/zip;base64,AAAA"})
    only_captions = data_uri(buffer.getvalue(), "application/zip")
    with pytest.raises(PermanentProviderError, match="Image load error: the zip archive holds no image"):
        await http.call("POST", url, what="submit", json={"images_data_url": only_captions})
    assert fal.fake.training_accepted == 0


async def test_a_training_that_fails_with_a_422_result_is_reported_failed_with_fals_message(fal: FalServer) -> None:
    detail = [{"loc": ["body", "images_data_url"], "msg": "Too few faces (fake)", "type": "image_load_error"}]
    fal.fake.fail_next(
        1, Failure(error="Invalid status code: 422", error_type="image_load_error", result_status=422, detail=detail)
    )
    provider = adapter(fal)
    status, _ = await settle(provider, await provider.create_identity(identity_request()))
    assert status.state == "failed"
    assert "Too few faces (fake)" in str(status.reason)
    assert fal.fake.training_submits == 1


async def test_a_429_on_the_training_submit_is_retried_and_the_training_submitted_once(fal: FalServer) -> None:
    fal.fake.inject("train", Fault.rate_limited("0"))
    provider = adapter(fal)
    status, _ = await settle(provider, await provider.create_identity(identity_request()))
    assert status.state == "ready"
    assert (fal.fake.training_submits, fal.fake.training_accepted) == (2, 1)


async def test_a_shot_uses_the_lora_and_trigger_word_and_is_a_simulated_real_image(fal: FalServer) -> None:
    provider = adapter(fal)
    ref = reference_image(sample_reference_png(), key="studio/images/ref0")
    request = IdentityRequest(uuid.uuid4(), "studio", "lora", [ref])
    status, _ = await settle(provider, await provider.create_identity(request))
    assert status.identity_ref is not None
    image = await generate(provider, shot(status.identity_ref, ref, aspect_ratio="3:4", steps=20, guidance=4.5))
    with Image.open(io.BytesIO(image.data)) as decoded:
        assert decoded.size == (768, 1024)  # portrait_4_3
        assert decoded.info["Description"] == SIMULATED_NOTICE
    assert image.cost_usd == pytest.approx(0.035 * 768 * 1024 / 1e6, abs=1e-6)  # $0.035/MP
    assert image.simulation is not None
    assert image.simulation.transform.startswith("fake fal server on loopback")
    sent = fal.fake.received_flux_lora[-1]
    assert sent.prompt == f"{trigger_word(request.character_id)} close-up portrait of the astronaut, soft light"
    assert [(lora.path, lora.scale) for lora in sent.loras] == [(fal.fake.outputs[0]["diffusers_lora_file"]["url"], 1)]
    assert (sent.num_inference_steps, sent.guidance_scale, sent.seed, sent.output_format) == (20, 4.5, 7, "png")


async def test_a_shot_with_a_lora_the_fake_never_issued_is_refused_permanently(fal: FalServer) -> None:
    ref = reference_image(sample_reference_png())
    forged = f"fal-flux-lora:lkns0badf00d:{fal.url}/files/nope/{FILE_PREFIX}nope-lora.safetensors"
    with pytest.raises(PermanentProviderError, match=r"422.*loras"):
        await generate(adapter(fal), shot(forged, ref))
    with pytest.raises(PermanentProviderError, match="not a fal-flux-lora identity"):
        await generate(adapter(fal), shot("fal-instant-character:" + "0" * 64, ref))
