"""The offline simulator provider: deterministic shots, honest labels, failures and identities on time."""

from __future__ import annotations

import io
import uuid
from dataclasses import replace
from typing import get_args

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from contracts import ShotParams
from contracts.values import AspectRatio, Strategy
from services.provider_adapter.ports import (
    IdentityRequest,
    PermanentProviderError,
    Provider,
    ProviderJobFailed,
    ReferenceImage,
    ShotRequest,
    TransientProviderError,
)
from services.provider_adapter.providers import SIM_PRICES, SimProvider, SimSettings, sim_images
from services.provider_adapter.providers.sim import drifts, fails
from tests.fakes import reference_image
from tests.provider_shots import generate

T0 = 1_790_000_000.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingSleep:
    """Returns at once and remembers how long the provider asked to wait."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


class RecordingProgress:
    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []

    async def __call__(self, percent: float, message: str) -> None:
        self.calls.append((percent, message))


def png_reference(pixels: np.ndarray, key: str = "ref.png") -> ReferenceImage:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    height, width = pixels.shape[:2]
    return reference_image(buffer.getvalue(), key=key, width=width, height=height)


ASTRONAUT = png_reference(skdata.astronaut())


def make_provider(clock: FakeClock | None = None, settings: SimSettings | None = None) -> SimProvider:
    return SimProvider(settings, clock=clock or FakeClock(), sleep=RecordingSleep())


async def ready_identity(provider: SimProvider, clock: FakeClock, strategy: Strategy = "lora") -> str:
    job_id = await provider.create_identity(
        IdentityRequest(character_id=uuid.uuid4(), tenant_id="t-sim", strategy=strategy, references=[ASTRONAUT])
    )
    clock.now += 3600
    status = await provider.identity_status(job_id)
    assert status.state == "ready"
    assert status.identity_ref is not None
    return status.identity_ref


def shot(identity_ref: str, *, attempt: int = 1, **params: object) -> ShotRequest:
    fields: dict[str, object] = {"prompt": "close-up portrait, soft window light", "seed": 7}
    fields.update(params)
    return ShotRequest(
        shot_id=uuid.uuid4(),
        character_id=uuid.uuid4(),
        identity_ref=identity_ref,
        params=ShotParams.model_validate(fields),
        references=[ASTRONAUT],
        attempt=attempt,
    )


def test_sim_provider_satisfies_the_provider_protocol() -> None:
    provider: Provider = make_provider()  # mypy checks the structure; the rest is behaviour
    assert (provider.name, provider.simulated, provider.available()) == ("sim", True, True)


async def test_same_request_gives_identical_bytes_and_note() -> None:
    clock = FakeClock()
    identity = await ready_identity(make_provider(clock), clock)
    request = shot(identity, seed=11, scenario="low light")
    first = await generate(make_provider(clock), request)
    second = await generate(make_provider(clock), request)
    assert first.data == second.data
    assert first.simulation == second.simulation
    assert first.content_type == "image/png"


async def test_different_seeds_give_different_images() -> None:
    clock = FakeClock()
    provider = make_provider(clock)
    identity = await ready_identity(provider, clock)
    images = {(await generate(provider, shot(identity, seed=seed))).data for seed in range(1, 6)}
    assert len(images) == 5


async def test_failure_rate_one_always_raises_a_retryable_error() -> None:
    clock = FakeClock()
    provider = make_provider(clock, SimSettings(failure_rate=1.0))
    identity = await ready_identity(provider, clock)
    for attempt in (1, 2, 3):
        with pytest.raises(TransientProviderError) as caught:
            await generate(provider, shot(identity, attempt=attempt))
        assert caught.value.retryable


async def test_a_failed_attempt_can_succeed_on_retry_with_the_same_image() -> None:
    clock = FakeClock()
    provider = make_provider(clock, SimSettings(failure_rate=0.5))
    identity = await ready_identity(provider, clock)
    seed = 3
    outcomes = [fails(seed, attempt, 0.5) for attempt in range(1, 21)]
    failing, succeeding = outcomes.index(True) + 1, outcomes.index(False) + 1
    with pytest.raises(TransientProviderError):
        await generate(provider, shot(identity, seed=seed, attempt=failing))
    image = await generate(provider, shot(identity, seed=seed, attempt=succeeding))
    clean = await generate(make_provider(clock), shot(identity, seed=seed, attempt=1))
    assert image.data == clean.data  # the attempt decides failure only, never the picture


def test_failure_share_follows_the_rate() -> None:
    share = np.mean([fails(seed, attempt, 0.3) for seed in range(200) for attempt in (1, 2)])
    assert 0.22 < share < 0.38


async def test_identity_is_pending_with_progress_then_ready_with_cost() -> None:
    clock = FakeClock()
    provider = make_provider(clock, SimSettings(identity_seconds=2.0))
    job_id = await provider.create_identity(
        IdentityRequest(character_id=uuid.uuid4(), tenant_id="t-sim", strategy="lora", references=[ASTRONAUT])
    )
    first = await provider.identity_status(job_id)
    clock.now += 3.0  # lora trains 3 x identity_seconds = 6 s
    halfway = await provider.identity_status(job_id)
    clock.now += 3.0
    done = await provider.identity_status(job_id)
    assert (first.state, first.percent) == ("pending", 0.0)
    assert (halfway.state, halfway.percent) == ("pending", 50.0)
    assert done.state == "ready"
    assert done.identity_ref == f"sim:{job_id}"
    assert done.training_seconds == pytest.approx(6.0)
    assert done.cost_usd == pytest.approx(2.00)


@pytest.mark.parametrize(("strategy", "seconds"), [("instant_reference", 1.0), ("fine_tune", 5.0)])
async def test_training_time_depends_on_strategy(strategy: Strategy, seconds: float) -> None:
    clock = FakeClock()
    provider = make_provider(clock, SimSettings(identity_seconds=1.0))
    job_id = await provider.create_identity(
        IdentityRequest(character_id=uuid.uuid4(), tenant_id="t", strategy=strategy, references=[ASTRONAUT])
    )
    clock.now += seconds - 0.01
    assert (await provider.identity_status(job_id)).state == "pending"
    clock.now += 0.01
    assert (await provider.identity_status(job_id)).state == "ready"


async def test_identity_status_survives_a_restart() -> None:
    clock = FakeClock()
    job_id = await make_provider(clock).create_identity(
        IdentityRequest(character_id=uuid.uuid4(), tenant_id="t", strategy="fine_tune", references=[ASTRONAUT])
    )
    clock.now += 2.5
    before = await make_provider(clock).identity_status(job_id)
    after_restart = await make_provider(clock, SimSettings(identity_seconds=99.0)).identity_status(job_id)
    assert before == after_restart
    assert (after_restart.state, after_restart.percent) == ("pending", 50.0)


async def test_unknown_job_and_identity_are_permanent_errors() -> None:
    provider = make_provider()
    with pytest.raises(PermanentProviderError):
        await provider.identity_status("fal-1234")
    with pytest.raises(PermanentProviderError):
        await generate(provider, shot("sim:not-a-job"))


async def test_unreadable_reference_is_a_permanent_error() -> None:
    bad = ReferenceImage(ref=ASTRONAUT.ref, data=b"not an image")
    with pytest.raises(PermanentProviderError, match="Reference 1"):
        await make_provider().create_identity(
            IdentityRequest(character_id=uuid.uuid4(), tenant_id="t", strategy="lora", references=[bad])
        )


async def test_png_says_it_is_simulated() -> None:
    clock = FakeClock()
    provider = make_provider(clock)
    result = await generate(provider, shot(await ready_identity(provider, clock)))
    with Image.open(io.BytesIO(result.data)) as image:
        assert image.format == "PNG"
        text = dict(image.text)  # type: ignore[attr-defined]
    assert text["Description"] == "Likeness offline simulator: transformed reference, not model output"
    assert result.simulation is not None
    assert result.simulation.simulated is True


@pytest.mark.parametrize("aspect_ratio", get_args(AspectRatio))
async def test_output_honours_the_aspect_ratio(aspect_ratio: AspectRatio) -> None:
    clock = FakeClock()
    provider = make_provider(clock)
    identity = await ready_identity(provider, clock)
    w_part, h_part = (int(part) for part in aspect_ratio.split(":"))
    for scenario in (*sim_images.SCENARIOS, None):
        result = await generate(provider, shot(identity, aspect_ratio=aspect_ratio, scenario=scenario))
        with Image.open(io.BytesIO(result.data)) as image:
            width, height = image.size
        assert max(width, height) == 512
        assert width / height == pytest.approx(w_part / h_part, rel=0.01)


async def test_cost_and_latency_follow_settings_and_progress_is_reported() -> None:
    clock = FakeClock()
    sleep = RecordingSleep()
    provider = SimProvider(SimSettings(latency_ms=300, latency_jitter_ms=100), clock=clock, sleep=sleep)
    identity = await ready_identity(provider, clock, strategy="fine_tune")
    progress = RecordingProgress()
    result = await generate(provider, shot(identity), progress)
    assert 0.2 <= sum(sleep.calls) <= 0.4
    assert result.cost_usd == pytest.approx(0.05)
    assert result.latency_ms > 0
    percents = [percent for percent, _ in progress.calls]
    assert len(percents) >= 2
    assert percents == sorted(percents)
    assert percents[-1] == 100.0


async def test_drift_swaps_the_person_and_says_so() -> None:
    clock = FakeClock()
    identity = await ready_identity(make_provider(clock), clock)
    request = shot(identity, seed=4, scenario="wide shot")
    clean = await generate(make_provider(clock, SimSettings(drift_rate=0.0)), request)
    drifted = await generate(make_provider(clock, SimSettings(drift_rate=1.0)), request)
    assert clean.simulation is not None
    assert drifted.simulation is not None
    assert (clean.simulation.drifted, drifted.simulation.drifted) == (False, True)
    assert "Grace Hopper" in drifted.simulation.transform
    assert clean.data != drifted.data


async def test_drift_ignores_the_attempt() -> None:
    clock = FakeClock()
    provider = make_provider(clock, SimSettings(drift_rate=0.5))
    identity = await ready_identity(provider, clock)
    seen: set[bool] = set()
    for seed in range(1, 5):
        notes = {(await generate(provider, shot(identity, seed=seed, attempt=a))).simulation for a in (1, 4)}
        assert len(notes) == 1
        (note,) = notes
        assert note is not None
        assert note.drifted == drifts(seed, "close-up portrait, soft window light", 0.5)
        seen.add(note.drifted)
    assert seen == {True, False}


def test_demo_drift_rate_gives_a_few_drifted_shots_whatever_the_prompts() -> None:
    prompt_sets = [
        ["close-up portrait", "wide shot", "profile noir", "low light", "action"],
        ["a", "b", "c", "d", "e"],
        ["Studio headshot of Mara", "Mara on a cliff", "Mara, noir", "Mara by candle", "Mara sprinting"],
    ]
    for prompts in prompt_sets:
        drifted = [seed for seed in range(1, 16) if drifts(seed, prompts[(seed - 1) // 3], 0.2)]
        assert 1 <= len(drifted) <= 4, (prompts, drifted)
    share = np.mean([drifts(seed, "any prompt", 0.2) for seed in range(1000)])
    assert share == pytest.approx(0.2, abs=0.01)


def test_any_run_of_fifteen_seeds_drifts_close_to_the_rate() -> None:
    # A demo of 15 consecutive seeds must show drift, but not mostly drift, wherever its seeds start.
    for start in range(0, 20_000, 97):
        drifted = sum(drifts(seed, f"scenario {seed // 3}", 0.2) for seed in range(start, start + 15))
        assert 2 <= drifted <= 4, start


def test_the_prompt_can_change_a_borderline_drift_decision() -> None:
    # seed 2 sits at 0.236 on the sequence: inside the +-0.015 nudge of a 0.24 rate
    decisions = {drifts(2, f"prompt {n}", 0.24) for n in range(40)}
    assert decisions == {True, False}


@pytest.mark.parametrize(
    ("label", "prompt", "expected"),
    [
        (None, "Tight close-up portrait, studio light", sim_images.CLOSE_UP),
        (None, "Full body wide shot on a beach", sim_images.WIDE),
        (None, "Film noir profile, hard light", sim_images.NOIR),
        (None, "At night by a single candle", sim_images.LOW_LIGHT),
        (None, "Sprinting across a rooftop, dynamic", sim_images.ACTION),
        ("action", "close-up portrait", sim_images.ACTION),
        ("my own label", "wide establishing shot", sim_images.WIDE),
        (None, "a character", sim_images.REFRAME),
    ],
)
def test_scenario_comes_from_label_or_prompt(label: str | None, prompt: str, expected: str) -> None:
    assert sim_images.scenario_for(label, prompt) == expected


def test_settings_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="failure_rate"):
        SimSettings(failure_rate=1.5)
    with pytest.raises(ValueError, match="drift_rate"):
        SimSettings(drift_rate=-0.1)
    with pytest.raises(ValueError, match="latency_ms"):
        SimSettings(latency_ms=-1.0)
    with pytest.raises(ValueError, match="fine_tune"):
        SimSettings(prices={"lora": SIM_PRICES["lora"]})


async def test_a_shot_job_resumed_by_a_restarted_simulator_ends_as_it_would_have() -> None:
    clock = FakeClock()
    identity = await ready_identity(make_provider(clock), clock)
    request = shot(identity, seed=5, scenario="wide shot")
    before = make_provider(clock)
    job_id = await before.start_shot(request)
    assert list(before.submitted) == [job_id]
    uninterrupted = await before.finish_shot(job_id, request)
    clock.now += 5.0  # the adapter was down a while: the job finished meanwhile
    restarted = SimProvider(clock=clock, sleep=RecordingSleep())
    resumed = await restarted.finish_shot(job_id, request)
    assert not restarted.submitted  # resuming submits nothing
    assert (resumed.data, resumed.simulation) == (uninterrupted.data, uninterrupted.simulation)
    assert resumed.latency_ms >= 5000.0  # from the submission, not from the resume


async def test_a_resumed_shot_job_waits_only_for_what_is_left_of_it() -> None:
    clock = FakeClock()
    identity = await ready_identity(make_provider(clock), clock)
    sleep = RecordingSleep()
    provider = SimProvider(SimSettings(latency_ms=1000, latency_jitter_ms=0), clock=clock, sleep=sleep)
    request = shot(identity)
    job_id = await provider.start_shot(request)
    clock.now += 0.75
    await SimProvider(SimSettings(latency_ms=1000, latency_jitter_ms=0), clock=clock, sleep=sleep).finish_shot(
        job_id, request
    )
    assert sum(sleep.calls) == pytest.approx(0.25)


async def test_a_failed_shot_job_fails_again_when_resumed_and_a_new_submission_draws_again() -> None:
    clock = FakeClock()
    provider = make_provider(clock, SimSettings(failure_rate=0.5))
    identity = await ready_identity(provider, clock)
    seed = 3
    outcomes = [fails(seed, attempt, 0.5) for attempt in range(1, 21)]
    failing, succeeding = outcomes.index(True) + 1, outcomes.index(False) + 1
    first = shot(identity, seed=seed, attempt=failing)
    job_id = await provider.start_shot(first)
    for _ in range(2):
        with pytest.raises(ProviderJobFailed):
            await provider.finish_shot(job_id, first)
    retry = replace(first, attempt=succeeding)
    assert (await provider.finish_shot(await provider.start_shot(retry), retry)).data


async def test_a_shot_job_id_of_another_shot_is_refused() -> None:
    clock = FakeClock()
    provider = make_provider(clock)
    identity = await ready_identity(provider, clock)
    job_id = await provider.start_shot(shot(identity))
    with pytest.raises(PermanentProviderError, match="is not a job of shot"):
        await provider.finish_shot(job_id, shot(identity))
    with pytest.raises(PermanentProviderError, match="not a simulator shot job"):
        await provider.finish_shot("fal-instant-character:x:y", shot(identity))
