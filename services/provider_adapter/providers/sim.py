"""The offline simulator provider `sim`: deterministic, free of network, and honest about being fake.

Identities "train" for a configured time that is encoded in the job id, so status survives a restart.
Shots are references reframed for the scenario (see `sim_images`); a configurable share of shots
"drifts" to a different real person, and a configurable share of attempts fails transiently, so the
pipeline's scoring and retries have something real to catch. Every decision is a pure function of
the request: the same request gives the same bytes.

Shots behave like an asynchronous provider's jobs: `start_shot` submits (remembered in `submitted`)
and returns a job id holding the shot, the submission number, when it was submitted and how long it
runs; `finish_shot` waits on the wall clock until then. Whether the job fails and what it shows
follow from the job id and the request alone, so a job resumed by a restarted adapter ends exactly
as it would have.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, cast, get_args

import numpy as np
from PIL import Image

from contracts import SimulationNote, Strategy
from services.provider_adapter.ports import (
    GeneratedImage,
    IdentityRequest,
    IdentityStatus,
    PermanentProviderError,
    ProgressCallback,
    ProviderJobFailed,
    ShotRequest,
)
from services.provider_adapter.providers import sim_images

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class SimPrice:
    per_identity_usd: float
    per_shot_usd: float


# The simulator's own invented prices (set 2026-11-24), loosely in the range of public price
# pages for instant-reference, LoRA and fine-tune services. No provider charges these.
SIM_PRICES_AS_OF: Final = "2026-11-24"
SIM_PRICES: Final[Mapping[Strategy, SimPrice]] = MappingProxyType(
    {
        "instant_reference": SimPrice(per_identity_usd=0.0, per_shot_usd=0.04),
        "lora": SimPrice(per_identity_usd=2.00, per_shot_usd=0.035),
        "fine_tune": SimPrice(per_identity_usd=3.00, per_shot_usd=0.05),
    }
)
# Training an identity takes `identity_seconds` times this.
TRAINING_TIME_FACTOR: Final[Mapping[Strategy, float]] = MappingProxyType(
    {"instant_reference": 1.0, "lora": 3.0, "fine_tune": 5.0}
)


@dataclass(frozen=True)
class SimSettings:
    """How the simulator behaves. Rates are probabilities in [0, 1]; times are means."""

    latency_ms: float = 300.0
    latency_jitter_ms: float = 100.0
    identity_seconds: float = 1.0
    failure_rate: float = 0.0
    drift_rate: float = 0.0
    prices: Mapping[Strategy, SimPrice] = field(default_factory=lambda: SIM_PRICES)

    def __post_init__(self) -> None:
        for name in ("latency_ms", "latency_jitter_ms", "identity_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"SimSettings.{name} must be zero or more, got {getattr(self, name)}")
        for name in ("failure_rate", "drift_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SimSettings.{name} is a probability in [0, 1], got {getattr(self, name)}")
        missing = set(get_args(Strategy)) - set(self.prices)
        if missing:
            raise ValueError(f"SimSettings.prices lacks a price for {sorted(missing)}")


_STRATEGIES = "|".join(get_args(Strategy))
# sim-<strategy>-<character id hex>-<start, ms since the epoch>-<training time, ms>
_JOB_ID = re.compile(rf"^sim-(?P<strategy>{_STRATEGIES})-(?P<character>[0-9a-f]{{32}})-(?P<start>\d+)-(?P<ms>\d+)$")
IDENTITY_PREFIX: Final = "sim:"
_SUBMITTED_KEPT: Final = 10_000
# sim-shot-<shot id hex>-<submission>-<submitted, ms since the epoch>-<latency, ms>
_SHOT_JOB_ID = re.compile(r"^sim-shot-(?P<shot>[0-9a-f]{32})-(?P<attempt>\d{1,6})-(?P<start>\d+)-(?P<ms>\d+)$")

# Knuth's multiplicative constant, round(2**32 / golden ratio): seed * K mod 2**32 walks [0, 1)
# as evenly as any sequence can, so over consecutive seeds the drifted share tracks drift_rate.
_GOLDEN_32: Final = 2654435769
_PROMPT_NUDGE: Final = 0.015


@dataclass(frozen=True)
class _Job:
    strategy: Strategy
    started_at: float
    training_seconds: float


def drifts(seed: int, prompt: str, drift_rate: float) -> bool:
    """Whether a shot shows a different person. Depends on the seed and the prompt, never the attempt.

    The seed places the shot on a golden-ratio (Weyl) sequence, so any run of consecutive seeds drifts
    in close to `drift_rate` of its shots (seeds 1..15 at 0.2: exactly 3, whatever the prompts); the
    prompt nudges that place by at most +-0.015, so one seed may drift under one prompt and not another.
    """
    place = ((seed * _GOLDEN_32) % 2**32) / 2**32
    nudge = (_unit_hash("drift", " ".join(prompt.lower().split())) - 0.5) * 2 * _PROMPT_NUDGE
    return (place + nudge) % 1.0 < drift_rate


def fails(seed: int, attempt: int, failure_rate: float) -> bool:
    """Whether one generate attempt fails transiently. A retry (attempt + 1) draws again."""
    return _unit_hash("failure", str(seed), str(attempt)) < failure_rate


class SimProvider:
    """The `sim` provider: implements `ports.Provider` with no network and no model."""

    name = "sim"
    simulated = True

    def __init__(
        self,
        settings: SimSettings | None = None,
        *,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._settings = settings or SimSettings()
        self._clock = clock
        self._sleep = sleep
        # the shot jobs this instance submitted, latest last (the service's own record: provider.shot_jobs)
        self.submitted: deque[str] = deque(maxlen=_SUBMITTED_KEPT)

    def available(self) -> bool:
        return True

    async def create_identity(self, request: IdentityRequest) -> str:
        if not request.references:
            raise PermanentProviderError("An identity needs at least one reference image; upload one.")
        # Decoding is CPU work: keep it off the event loop. An unreadable reference fails the identity now.
        for index, reference in enumerate(request.references, start=1):
            await asyncio.to_thread(_decode_reference, reference.data, index)
        seconds = self._settings.identity_seconds * TRAINING_TIME_FACTOR[request.strategy]
        started_ms = round(self._clock() * 1000)
        return f"sim-{request.strategy}-{request.character_id.hex}-{started_ms}-{round(seconds * 1000)}"

    async def identity_status(self, job_id: str) -> IdentityStatus:
        job = _parse_job(job_id)
        elapsed = max(0.0, self._clock() - job.started_at)
        if elapsed < job.training_seconds:
            return IdentityStatus(state="pending", percent=round(100.0 * elapsed / job.training_seconds, 1))
        return IdentityStatus(
            state="ready",
            percent=100.0,
            identity_ref=f"{IDENTITY_PREFIX}{job_id}",
            training_seconds=job.training_seconds,
            cost_usd=self._settings.prices[job.strategy].per_identity_usd,
        )

    async def start_shot(self, request: ShotRequest) -> str:
        """Submit a simulated shot job: its id holds the shot, the submission, when and how long it runs."""
        self._check_shot(request)
        started_ms = round(self._clock() * 1000)
        latency_ms = round(self._latency_s(request.params.seed) * 1000)
        job_id = f"sim-shot-{request.shot_id.hex}-{request.attempt}-{started_ms}-{latency_ms}"
        self.submitted.append(job_id)
        return job_id

    async def finish_shot(
        self, job_id: str, request: ShotRequest, on_progress: ProgressCallback | None = None
    ) -> GeneratedImage:
        """Wait for the job as a real provider's runs: on the wall clock from its submission, so a job
        resumed after a restart finishes when it would have; the outcome depends on the job id alone."""
        job = _parse_shot_job(job_id)
        if job.shot_id != request.shot_id.hex:
            raise PermanentProviderError(f"{job_id!r} is not a job of shot {request.shot_id}.")
        identity = self._check_shot(request)
        params = request.params
        halfway, done = job.started_at + job.latency_s / 2, job.started_at + job.latency_s

        await _report(on_progress, 0.0, "queued on the offline simulator")
        await self._sleep(max(0.0, halfway - self._clock()))
        if fails(params.seed, job.attempt, self._settings.failure_rate):
            raise ProviderJobFailed(
                f"Simulated provider hiccup on attempt {job.attempt} "
                f"(failure_rate={self._settings.failure_rate}); retrying can succeed."
            )
        await _report(on_progress, 50.0, "transforming a reference")
        data, note = await asyncio.to_thread(self._render, request)
        await self._sleep(max(0.0, done - max(self._clock(), halfway)))
        await _report(on_progress, 100.0, "done")
        return GeneratedImage(
            data=data,
            content_type="image/png",
            latency_ms=max(job.latency_s, self._clock() - job.started_at) * 1000.0,
            cost_usd=self._settings.prices[identity.strategy].per_shot_usd,
            simulation=note,
        )

    def _check_shot(self, request: ShotRequest) -> _Job:
        if not request.identity_ref.startswith(IDENTITY_PREFIX):
            raise PermanentProviderError(f"{request.identity_ref!r} is not a simulator identity; build one first.")
        identity = _parse_job(request.identity_ref.removeprefix(IDENTITY_PREFIX))
        if not request.references:
            raise PermanentProviderError("A shot needs at least one reference image.")
        return identity

    def _latency_s(self, seed: int) -> float:
        offset = np.random.default_rng([seed, 1]).uniform(-1.0, 1.0)
        return max(0.0, self._settings.latency_ms + self._settings.latency_jitter_ms * float(offset)) / 1000.0

    def _render(self, request: ShotRequest) -> tuple[bytes, SimulationNote]:
        params = request.params
        index = params.seed % len(request.references)
        drifted = drifts(params.seed, params.prompt, self._settings.drift_rate)
        if drifted:
            # The stand-in keeps her own orientation: mirrored, dlib puts her ~0.04 closer to the demo's
            # astronaut reference, and a drifted shot should read as clearly someone else.
            source, mirror = sim_images.stand_in_face(), False
            origin = f"DRIFTED: a different person (Grace Hopper, public domain) instead of reference {index + 1}"
        else:
            source, mirror = _decode_reference(request.references[index].data, index + 1), True
            origin = f"reference {index + 1} of {len(request.references)}"
        scenario = sim_images.scenario_for(params.scenario, params.prompt)
        size = sim_images.output_size(params.aspect_ratio)
        shot = sim_images.render(source, scenario, size, np.random.default_rng(params.seed), mirror=mirror)
        transform = f"{scenario} from {origin}: {shot.transform}; {size[0]}x{size[1]}"
        return sim_images.encode_png(shot), SimulationNote(transform=transform, drifted=drifted)


def _parse_job(job_id: str) -> _Job:
    match = _JOB_ID.match(job_id)
    if match is None:
        raise PermanentProviderError(f"{job_id!r} is not a simulator identity job id.")
    return _Job(
        strategy=cast(Strategy, match["strategy"]),  # the pattern admits only Strategy values
        started_at=int(match["start"]) / 1000.0,
        training_seconds=int(match["ms"]) / 1000.0,
    )


@dataclass(frozen=True)
class _ShotJob:
    shot_id: str
    attempt: int
    started_at: float
    latency_s: float


def _parse_shot_job(job_id: str) -> _ShotJob:
    match = _SHOT_JOB_ID.match(job_id)
    if match is None:
        raise PermanentProviderError(f"{job_id!r} is not a simulator shot job id.")
    return _ShotJob(
        shot_id=match["shot"],
        attempt=int(match["attempt"]),
        started_at=int(match["start"]) / 1000.0,
        latency_s=int(match["ms"]) / 1000.0,
    )


def _decode_reference(data: bytes, number: int) -> Image.Image:
    try:
        return sim_images.decode_image(data)
    except ValueError as exc:
        raise PermanentProviderError(f"Reference {number} is not a readable image ({exc}); re-upload it.") from exc


async def _report(on_progress: ProgressCallback | None, percent: float, message: str) -> None:
    if on_progress is not None:
        await on_progress(percent, message)


def _unit_hash(*parts: str) -> float:
    """A stable number in [0, 1) from text, the same in every process and on every machine."""
    digest = hashlib.sha256(":".join(("likeness-sim", *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
