"""fal Flux Redux (`fal-ai/flux/dev/redux`) against the loopback fake of fal's queue API, over real HTTP."""

from __future__ import annotations

import asyncio
import io
import uuid

import pytest
from PIL import Image
from pydantic import SecretStr

from contracts import ShotParams
from infra.fakes.faults import Fault
from infra.sample import sample_reference_png
from services.provider_adapter.app import build_providers
from services.provider_adapter.ports import IdentityRequest, PermanentProviderError, ShotRequest
from services.provider_adapter.providers.fal import FalInstantCharacter, FalSettings, identity_for
from services.provider_adapter.providers.fal_redux import MODEL, PROVIDER_NAME, FalFluxRedux, redux_provider
from services.provider_adapter.providers.http import RetryPolicy, http_timeout, new_client
from services.provider_adapter.providers.sim_images import SIMULATED_NOTICE
from services.provider_adapter.settings import ProviderAdapterSettings
from tests.fakes import RecordingSleep, reference_image
from tests.integration.conftest import FalServer
from tests.provider_shots import generate

pytestmark = pytest.mark.integration


def redux(server: FalServer) -> FalFluxRedux:
    settings = FalSettings(
        key=SecretStr(server.key), queue_url=server.url, model=MODEL, usd_per_megapixel=0.025, poll_s=0.02
    )
    client = new_client(http_timeout(connect_s=2.0, read_s=10.0))
    server.clients.append(client)
    retry = RetryPolicy(retries=3, base_s=0.1, cap_s=1.0)
    return redux_provider(settings, client, concurrency=2, retry=retry, sleep=RecordingSleep(pace_s=0.01))


async def request(adapter: FalInstantCharacter, data: bytes | None = None, **params: object) -> ShotRequest:
    ref = reference_image(data or sample_reference_png(), key="studio/images/ref")
    job = await adapter.create_identity(IdentityRequest(uuid.uuid4(), "studio", "instant_reference", [ref]))
    status = await adapter.identity_status(job)
    assert status.identity_ref is not None
    values = {"prompt": "close-up portrait of the astronaut, soft light", "seed": 11, **params}
    return ShotRequest(uuid.uuid4(), uuid.uuid4(), status.identity_ref, ShotParams.model_validate(values), [ref])


async def test_a_redux_shot_is_a_variation_of_the_reference_sent_without_a_prompt(fal: FalServer) -> None:
    adapter = redux(fal)
    shot = await request(adapter, aspect_ratio="3:4", steps=20, guidance=3.0)

    image = await generate(adapter, shot)

    with Image.open(io.BytesIO(image.data)) as decoded:
        assert decoded.size == (768, 1024)
        assert decoded.info["Description"] == SIMULATED_NOTICE
    assert image.cost_usd == pytest.approx(0.025 * 768 * 1024 / 1e6, abs=1e-6)
    sent = fal.fake.received_redux[-1]
    assert (sent.seed, sent.num_inference_steps, sent.guidance_scale, sent.output_format) == (11, 20, 3.0, "png")
    assert fal.fake.received == []  # nothing went to instant-character
    assert "prompt" not in fal.fake.outputs[-1]  # redux has no prompt, and none was sent
    assert fal.fake.status_polls >= 1  # polled at /fal-ai/flux/requests/{id}/status: the subpath dropped


async def test_a_redux_identity_is_its_own_and_not_instant_characters(fal: FalServer) -> None:
    adapter = redux(fal)
    shot = await request(adapter)
    assert shot.identity_ref == identity_for([shot.references[0].ref.sha256], PROVIDER_NAME)
    assert shot.identity_ref.startswith("fal-flux-redux:")
    instant = FalInstantCharacter(FalSettings(key=None), None)
    with pytest.raises(PermanentProviderError, match="not a fal-instant-character identity"):
        await instant.identity_status(shot.identity_ref)


async def test_rate_limits_and_outages_are_retried_and_bad_images_fail_for_good(fal: FalServer) -> None:
    adapter = redux(fal)
    fal.fake.inject("submit", Fault.rate_limited("1"), Fault.unavailable())
    assert (await generate(adapter, await request(adapter))).data
    assert fal.fake.submits == 3
    with pytest.raises(PermanentProviderError, match="image_url: Image load error"):
        await generate(adapter, await request(adapter, b"\x89PNG\r\n\x1a\n not really a png"))
    assert fal.fake.submits == 4


def test_redux_is_offered_with_the_fal_key_at_its_price(fal: FalServer) -> None:
    settings = ProviderAdapterSettings(fal_key=SecretStr(fal.key), fal_queue_url=fal.url)
    providers = build_providers(settings)
    assert isinstance(providers[PROVIDER_NAME], FalFluxRedux)
    assert providers[PROVIDER_NAME].available()
    assert PROVIDER_NAME not in build_providers(ProviderAdapterSettings(fal_key=None))


async def test_the_fal_adapters_built_for_one_account_share_its_concurrency_limit(fal: FalServer) -> None:
    settings = ProviderAdapterSettings(
        fal_key=SecretStr(fal.key), fal_queue_url=fal.url, fal_poll_s=0.02, fal_concurrency=1
    )
    client = new_client(http_timeout(connect_s=2.0, read_s=10.0))
    fal.clients.append(client)
    providers = build_providers(settings, client)
    instant, redux_adapter = providers["fal-instant-character"], providers[PROVIDER_NAME]
    assert isinstance(instant, FalInstantCharacter)
    assert isinstance(redux_adapter, FalFluxRedux)
    requests = [await request(adapter, seed=seed) for seed in range(3) for adapter in (instant, redux_adapter)]
    adapters = [instant, redux_adapter] * 3

    images = await asyncio.gather(*(generate(adapter, shot) for adapter, shot in zip(adapters, requests, strict=True)))

    assert len(images) == 6
    assert fal.fake.max_in_flight == 1  # one account, one request at a time, whichever adapter sent it
