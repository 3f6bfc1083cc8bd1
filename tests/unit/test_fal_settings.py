"""Configuring fal: the key (also as bare FAL_KEY), prices, sizes, and the gateway offering the provider."""

from __future__ import annotations

import uuid
from typing import get_args

import pytest
from pydantic import SecretStr, ValidationError

from contracts import GenerateShot, ShotFailed, ShotParams
from contracts.values import AspectRatio
from services.gateway.settings import GatewaySettings
from services.provider_adapter import handlers
from services.provider_adapter.app import build_providers
from services.provider_adapter.providers.fal import IMAGE_SIZES, NAMED_SIZES
from services.provider_adapter.settings import FAL_PRICES, ProviderAdapterSettings
from tests.provider_shots import InMemoryShotJobs
from tests.unit.test_sim_provider import ASTRONAUT, FakeClock, RecordingProgress, make_provider, ready_identity

KEY = "fal-key-id:fal-key-secret-5e1d"


@pytest.fixture(autouse=True)
def no_fal_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAL_KEY", "LIKENESS_PROVIDER_ADAPTER_FAL_KEY", "LIKENESS_GATEWAY_PROVIDERS"):
        monkeypatch.delenv(name, raising=False)


def test_the_bare_fal_key_variable_configures_fal(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ProviderAdapterSettings().fal_key is None
    assert set(build_providers(ProviderAdapterSettings())) == {"sim"}
    monkeypatch.setenv("FAL_KEY", KEY)
    settings = ProviderAdapterSettings()
    assert settings.fal_key is not None
    assert settings.fal_key.get_secret_value() == KEY
    assert KEY not in repr(settings)
    assert set(build_providers(settings)) == {"sim", "fal-instant-character", "fal-flux-lora", "fal-flux-redux"}


def test_the_prefixed_key_wins_and_a_blank_one_turns_fal_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAL_KEY", KEY)
    monkeypatch.setenv("LIKENESS_PROVIDER_ADAPTER_FAL_KEY", "other:key")
    assert ProviderAdapterSettings().fal_key == SecretStr("other:key")
    monkeypatch.setenv("LIKENESS_PROVIDER_ADAPTER_FAL_KEY", "  ")
    assert ProviderAdapterSettings().fal_key is None


def test_prices_and_queue_url_are_checked() -> None:
    assert (
        ProviderAdapterSettings().fal_prices
        == FAL_PRICES
        == {"fal-ai/instant-character": 0.10, "fal-ai/flux-lora": 0.035, "fal-ai/flux/dev/redux": 0.025}
    )
    with pytest.raises(ValidationError, match="needs a price"):
        ProviderAdapterSettings(fal_prices={"fal-ai/flux-lora": 0.035})
    with pytest.raises(ValidationError, match="needs a price"):
        ProviderAdapterSettings(fal_prices={"fal-ai/instant-character": 0.10})
    assert (ProviderAdapterSettings().fal_training_steps, ProviderAdapterSettings().fal_training_usd_per_run) == (
        1000,
        2.0,
    )
    with pytest.raises(ValidationError, match="http"):
        ProviderAdapterSettings(fal_queue_url="queue.fal.run")
    assert ProviderAdapterSettings(fal_queue_url="http://127.0.0.1:9000/").fal_queue_url == "http://127.0.0.1:9000"


@pytest.mark.parametrize("aspect_ratio", get_args(AspectRatio))
def test_every_aspect_ratio_has_a_fal_size_of_that_shape(aspect_ratio: AspectRatio) -> None:
    size = IMAGE_SIZES[aspect_ratio]
    width, height = NAMED_SIZES[size] if isinstance(size, str) else (size["width"], size["height"])
    w_part, h_part = (int(part) for part in aspect_ratio.split(":"))
    assert width / height == pytest.approx(w_part / h_part, rel=0.01)
    assert 0.5e6 < width * height < 1.4e6  # about one megapixel, the price's unit
    assert width % 16 == 0
    assert height % 16 == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("sim,fal-instant-character", ["sim", "fal-instant-character"]),
        (" sim , fal-instant-character ,", ["sim", "fal-instant-character"]),
        ("sim,fal-instant-character,fal-flux-lora", ["sim", "fal-instant-character", "fal-flux-lora"]),
        ('["sim", "fal-instant-character"]', ["sim", "fal-instant-character"]),
        ("sim", ["sim"]),
    ],
)
def test_the_gateway_offers_the_providers_listed(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: list[str]
) -> None:
    monkeypatch.setenv("LIKENESS_GATEWAY_PROVIDERS", value)
    assert GatewaySettings(api_keys=SecretStr("studio:12345678")).providers == expected


@pytest.mark.parametrize("value", ["Fal Instant", "", "[1]"])
def test_the_gateway_refuses_a_provider_list_it_cannot_read(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("LIKENESS_GATEWAY_PROVIDERS", value)
    with pytest.raises(ValidationError, match="providers"):
        GatewaySettings(api_keys=SecretStr("studio:12345678"))


async def test_generating_passes_progress_reports_to_the_caller() -> None:
    clock = FakeClock()
    provider = make_provider(clock)
    identity = await ready_identity(provider, clock, "instant_reference")
    reference = ASTRONAUT
    character_id = uuid.uuid4()
    command = GenerateShot(
        correlation_id=character_id,
        tenant_id="studio",
        shot_id=uuid.uuid4(),
        character_id=character_id,
        provider="sim",
        identity_ref=identity,
        params=ShotParams(prompt="close-up portrait", seed=2),
        references=[reference.ref],
    )
    progress = RecordingProgress()
    outcome = await handlers.generate(
        command,
        provider=provider,
        references=[reference],
        attempt=1,
        max_attempts=3,
        jobs=InMemoryShotJobs(),
        on_progress=progress,
    )
    assert not isinstance(outcome, ShotFailed)
    assert progress.calls[-1] == (100.0, "done")
