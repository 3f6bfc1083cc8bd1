"""Replicate Flux LoRA: a training (ostris/flux-dev-lora-trainer) builds the identity, its version makes shots.

`create_identity` zips the references in memory and creates a training
(`POST /v1/models/{trainer}/versions/{id}/trainings`) that pushes a new version to the destination
model (which must already exist: Replicate answers 404 otherwise). The zip travels inline as a
`data:application/zip;base64,...` URI; Replicate's files API (`POST /v1/files`, multipart) is not
used, because `ProviderHttp.call` sends JSON only. The job id, `replicate-flux-lora:<trigger>:<training
id>`, is all `identity_status` needs (`GET /v1/trainings/{id}`): a restarted adapter resumes by
polling and never submits twice.

Progress while training is a best-effort estimate: 0 % while `starting`; while `processing`, the last
tqdm-style "<done>/<total>" in the training's logs (the largest total seen, so that a "2/2" of loading
shards does not count) scaled to 5-95 %, else 5 %. Replicate documents `logs` as a string, not its
text; the tqdm lines are what ai-toolkit prints, as seen in public issues, not a promise.

The identity_ref is `replicate-flux-lora:<trigger>:<owner>/<model>:<version id>`: a shot creates a
prediction (`POST /v1/predictions`) on that version with the trigger word leading the prompt
(`start_shot`, job id `replicate-flux-lora:prediction:<id>`, saved by the service), then polls
`GET /v1/predictions/{id}` with backoff, downloads `output[0]` (`finish_shot`, which resumes from the
job id after a restart), and cancels (`POST /v1/predictions/{id}/cancel`) a prediction that times out.
A cancelled wait (a shutdown) leaves the prediction running for the next delivery to resume.
Polling, not `Prefer: wait`:
`ProviderHttp.call` takes no per-call headers, and a held-open POST would sit in a concurrency slot.

Prices (REPLICATE_PRICES_AS_OF, provider-contracts.md section 3, from replicate.com/pricing): Flux
fine-tunes and their trainings run on H100s at $0.001525 a second. A training costs its seconds at
that rate (`metrics.predict_time`, else completed_at - started_at); a per-run figure is not published,
so TRAINING_USD_PER_RUN (about $2 for 1000 steps, third-party reports) is used only when no time is
reported. A shot likewise costs its `metrics.predict_time` at the H100 rate, else USD_PER_IMAGE (an
estimate: about 10 s of H100).

Uncertain (not verified against the live API): the trainer's current version id (TRAINER_VERSION,
seen in replicate/replicate-python#419, 2025-04); the trainer's input names (`input_images`,
`trigger_word`, `steps`, `autocaption`) and the trained version's (`prompt`, `aspect_ratio`,
`num_inference_steps` 1-50, `guidance_scale` 0-10, `output_format`), read from the models' API pages;
how large a data: URI Replicate accepts (large reference sets may need the files API); what a
failed prediction's `error` says for a safety refusal. ProviderHttp retries a POST that met a 5xx or
a time-out, as the official client does not: a training or prediction could, rarely, be created twice.

Webhooks: the gateway checks Replicate's signature with `infra.webhooks.replicate.verify_webhook`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Self, TypeVar

import httpx
from PIL import Image
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from contracts import SimulationNote
from infra.webhooks.replicate import PROVIDER_NAME as PROVIDER_NAME
from services.provider_adapter.ports import (
    GeneratedImage,
    IdentityRequest,
    IdentityStatus,
    PermanentProviderError,
    ProgressCallback,
    ProviderError,
    ProviderJobFailed,
    ShotRequest,
    TransientProviderError,
)
from services.provider_adapter.providers.fal_flux_lora import reference_zip, trigger_word, weights_file
from services.provider_adapter.providers.fal_queue import data_uri, report, sniff_content_type
from services.provider_adapter.providers.held_jobs import HeldJobs
from services.provider_adapter.providers.http import (
    FAKE_MARKER_HEADER,
    FAKE_TRANSFORM_HEADER,
    Clock,
    ProviderHttp,
    ProviderKeyAuth,
    ProviderRefused,
    RetryPolicy,
    Sleep,
)

log = logging.getLogger(__name__)

TOKEN_SETTING: Final = "REPLICATE_API_TOKEN (or LIKENESS_PROVIDER_ADAPTER_REPLICATE_API_TOKEN)"  # noqa: S105 (a setting name, not a token)
BASE_URL: Final = "https://api.replicate.com"
TRAINER: Final = "ostris/flux-dev-lora-trainer"
TRAINER_VERSION: Final = "c6e78d2501e8088876e99ef21e4460d0dc121af7a4b786b9a4c2d75c620e300d"  # unverified
REPLICATE_PRICES_AS_OF: Final = "2026-11-24"
USD_PER_H100_SECOND: Final = 0.001525
TRAINING_USD_PER_RUN: Final = 2.0  # an estimate: used only when a training reports no time
USD_PER_IMAGE: Final = 0.0153  # an estimate: used only when a prediction reports no predict_time
MAX_STEPS: Final = 50  # the trained version's num_inference_steps maximum
MAX_GUIDANCE: Final = 10.0  # ...and guidance_scale's
RUNNING: Final = ("starting", "processing")

_JOB = re.compile(rf"^{PROVIDER_NAME}:(?P<trigger>lkns[0-9a-f]{{8}}):(?P<training_id>[A-Za-z0-9_-]{{1,128}})$")
_IDENTITY = re.compile(
    rf"^{PROVIDER_NAME}:(?P<trigger>lkns[0-9a-f]{{8}}):(?P<model>[\w.-]+/[\w.-]+):(?P<version>[0-9a-f]{{8,128}})$"
)
_PREDICTION_JOB = re.compile(rf"^{PROVIDER_NAME}:prediction:(?P<prediction_id>[A-Za-z0-9_-]{{1,128}})$")
_TRAINED = re.compile(r"^(?P<model>[\w.-]+/[\w.-]+):(?P<version>[0-9a-f]{8,128})$")
_TQDM = re.compile(r"\|\s*(\d+)\s*/\s*(\d+)\s*\[")
_CANCEL_WAIT_S: Final = 5.0


@dataclass(frozen=True)
class ReplicateSettings:
    """What the adapter needs: the token (None: not configured), the trainer, the destination, prices, pacing."""

    token: SecretStr | None
    base_url: str = BASE_URL
    trainer_owner: str = "ostris"
    trainer_model: str = "flux-dev-lora-trainer"
    trainer_version: str = TRAINER_VERSION
    destination_owner: str = ""
    destination_model: str = ""
    training_steps: int = 1000
    usd_per_gpu_second: float = USD_PER_H100_SECOND
    training_usd_per_run: float = TRAINING_USD_PER_RUN
    usd_per_image: float = USD_PER_IMAGE
    prices_as_of: str = REPLICATE_PRICES_AS_OF
    webhook_url: str | None = None  # given to trainings (completed events); the receiver is the gateway's
    poll_s: float = 1.0
    poll_max_s: float = 5.0
    timeout_s: float = 300.0  # one shot, create to download; a prediction not done by then is cancelled
    max_image_bytes: int = 50 * 1024 * 1024

    @property
    def configured(self) -> bool:
        token = self.token is not None and bool(self.token.get_secret_value().strip())
        return token and bool(self.destination_owner.strip() and self.destination_model.strip())

    @property
    def destination(self) -> str:
        return f"{self.destination_owner}/{self.destination_model}"


class ReplicateModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Metrics(ReplicateModel):
    predict_time: float | None = None


class TrainingOutput(ReplicateModel):
    version: str | None = None
    weights: str | None = None


class Training(ReplicateModel):
    id: str
    status: str
    logs: str | None = None
    error: str | None = None
    metrics: Metrics | None = None
    output: TrainingOutput | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None


class Prediction(ReplicateModel):
    id: str
    status: str
    output: list[str] | str | None = None
    error: str | None = None
    logs: str | None = None
    metrics: Metrics | None = None


Parsed = TypeVar("Parsed", bound=ReplicateModel)


def training_percent(training: Training) -> float:
    """An estimate (see the module doc): starting 0, processing 5-95 by the logs' tqdm steps."""
    if training.status != "processing":
        return 0.0
    steps = [(int(done), int(total)) for done, total in _TQDM.findall(training.logs or "") if int(total) > 0]
    if not steps:
        return 5.0
    longest = max(total for _, total in steps)
    done = [step for step, total in steps if total == longest][-1]
    return round(5.0 + 90.0 * min(done, longest) / longest, 1)


def training_seconds(training: Training) -> float:
    if training.metrics is not None and training.metrics.predict_time is not None:
        return max(0.0, training.metrics.predict_time)
    if training.started_at is not None and training.completed_at is not None:
        return max(0.0, (training.completed_at - training.started_at).total_seconds())
    return 0.0


class ReplicateFluxLora:
    """`replicate-flux-lora`: implements `ports.Provider` with a Replicate-trained Flux LoRA per character."""

    name = PROVIDER_NAME
    simulated = False  # shots from a Likeness fake server say so for themselves

    def __init__(
        self,
        settings: ReplicateSettings,
        http: ProviderHttp | None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if settings.configured and http is None:
            raise ValueError("a configured Replicate provider needs its ProviderHttp")
        self._settings = settings
        self._http = http if settings.configured else None
        self._clock = clock
        self._sleep = sleep
        self._cancels: set[asyncio.Task[None]] = set()
        self._held: HeldJobs[tuple[Prediction, httpx.Response]] = HeldJobs(clock)

    @classmethod
    def on(
        cls,
        settings: ReplicateSettings,
        client: httpx.AsyncClient,
        *,
        concurrency: int,
        retry: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        draw: Callable[[], float] = random.random,
    ) -> Self:
        """The provider on `client`; the token goes only to `settings.base_url`'s origin, as a Bearer token."""
        http = None
        if settings.token is not None and settings.configured:
            auth = ProviderKeyAuth(settings.token, scheme="Bearer", origins=[settings.base_url])
            http = ProviderHttp(
                PROVIDER_NAME,
                client,
                auth=auth,
                concurrency=concurrency,
                key_setting=TOKEN_SETTING,
                retry=retry,
                sleep=sleep,
                wall_clock=wall_clock,
                draw=draw,
            )
        return cls(settings, http, clock=clock, sleep=sleep)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(base_url={self._settings.base_url!r}, "
            f"destination={self._settings.destination!r}, available={self.available()})"
        )

    def available(self) -> bool:
        return self._http is not None

    def http(self) -> ProviderHttp:
        """The provider's HTTP, or a permanent error where it is not configured here."""
        if self._http is None:
            raise PermanentProviderError(
                f"{PROVIDER_NAME} is not configured here: set {TOKEN_SETTING} and the destination model "
                "(LIKENESS_PROVIDER_ADAPTER_REPLICATE_DESTINATION_OWNER / _MODEL)."
            )
        return self._http

    # --- identity -------------------------------------------------------------------------------

    def training_body(self, request: IdentityRequest) -> dict[str, Any]:
        """The trainings.create body (provider-contracts.md section 3)."""
        trigger = trigger_word(request.character_id)
        body: dict[str, Any] = {
            "destination": self._settings.destination,
            "input": {
                "input_images": data_uri(reference_zip(request), "application/zip"),
                "trigger_word": trigger,
                "steps": self._settings.training_steps,
                "autocaption": True,
            },
        }
        if self._settings.webhook_url:
            body.update(webhook=self._settings.webhook_url, webhook_events_filter=["completed"])
        return body

    async def create_identity(self, request: IdentityRequest) -> str:
        http = self.http()
        if not request.references:
            raise PermanentProviderError("An identity needs at least one reference image; upload one.")
        settings = self._settings
        url = (
            f"{settings.base_url}/v1/models/{settings.trainer_owner}/{settings.trainer_model}"
            f"/versions/{settings.trainer_version}/trainings"
        )
        async with http.slots:
            response = await http.call("POST", url, what="training create", json=self.training_body(request))
        training = parse(Training, response, "training create")
        return f"{PROVIDER_NAME}:{trigger_word(request.character_id)}:{training.id}"

    async def identity_status(self, job_id: str) -> IdentityStatus:
        http = self.http()
        job = _JOB.match(job_id)
        if job is None:
            raise PermanentProviderError(f"{job_id!r} is not a {PROVIDER_NAME} training job.")
        url = f"{self._settings.base_url}/v1/trainings/{job['training_id']}"
        training = parse(Training, await http.call("GET", url, what="training status"), "training status")
        if training.status in RUNNING:
            return IdentityStatus(state="pending", percent=training_percent(training))
        seconds = training_seconds(training)
        if training.status != "succeeded":  # billed for the time it ran, if Replicate says how long
            why = training.error or ("cancelled" if training.status == "canceled" else "no reason given")
            return IdentityStatus(
                state="failed",
                reason=f"Replicate training {training.id} {training.status}: {why}",
                training_seconds=seconds,
                cost_usd=round(seconds * self._settings.usd_per_gpu_second, 6),
            )
        cost = seconds * self._settings.usd_per_gpu_second if seconds > 0 else self._settings.training_usd_per_run
        trained = _TRAINED.match(training.output.version or "") if training.output is not None else None
        if trained is None:
            return IdentityStatus(
                state="failed",
                reason=f"Replicate training {training.id} succeeded without a model version in its output.",
                training_seconds=seconds,
            )
        return IdentityStatus(
            state="ready",
            percent=100.0,
            identity_ref=f"{PROVIDER_NAME}:{job['trigger']}:{trained['model']}:{trained['version']}",
            training_seconds=seconds,
            weights=(
                weights_file(training.output.weights, self._settings.base_url, "trained_model.tar")
                if training.output is not None and training.output.weights
                else None
            ),
            cost_usd=round(cost, 6),
        )

    # --- shots ----------------------------------------------------------------------------------

    def prediction_body(self, request: ShotRequest) -> dict[str, Any]:
        """A prediction on the trained version: the trigger word leads the prompt, the LoRA at scale 1.

        Steps and guidance beyond the trained version's limits (50, 10) are clamped to them.
        """
        identity = _IDENTITY.match(request.identity_ref)
        if identity is None:
            raise PermanentProviderError(f"{request.identity_ref!r} is not a {PROVIDER_NAME} identity; rebuild it.")
        params = request.params
        return {
            "version": identity["version"],
            "input": {
                "prompt": f"{identity['trigger']} {params.prompt}",
                "aspect_ratio": params.aspect_ratio,
                "num_outputs": 1,
                "lora_scale": 1.0,
                "num_inference_steps": min(params.steps, MAX_STEPS),
                "guidance_scale": min(params.guidance, MAX_GUIDANCE),
                "seed": params.seed,
                "output_format": "png",
                "model": "dev",
            },
        }

    async def start_shot(self, request: ShotRequest) -> str:
        """Create the prediction; its job id is `replicate-flux-lora:prediction:<prediction id>`."""
        http = self.http()
        body = self.prediction_body(request)

        async def create() -> tuple[str, tuple[Prediction, httpx.Response]]:
            created = await http.call(
                "POST", f"{self._settings.base_url}/v1/predictions", what="prediction create", json=body
            )
            prediction = parse(Prediction, created, "prediction create")
            return f"{PROVIDER_NAME}:prediction:{prediction.id}", (prediction, created)

        return await self._held.submit(http.slots, create)

    async def finish_shot(
        self, job_id: str, request: ShotRequest, on_progress: ProgressCallback | None = None
    ) -> GeneratedImage:
        """Poll the prediction until it is done and download `output[0]`; resumable from the job id alone.

        A time-out cancels the prediction (ProviderJobFailed); a failed poll or a cancelled wait leaves it
        running for the next delivery to resume.
        """
        http = self.http()
        found = _PREDICTION_JOB.match(job_id)
        if found is None:
            raise PermanentProviderError(f"{job_id!r} is not a {PROVIDER_NAME} prediction.")
        async with self._held.waiting(http.slots, job_id) as held:
            created: httpx.Response | None = None
            if held.detail is not None:
                prediction, created = held.detail
            else:
                prediction = await self._resumed(found["prediction_id"])
            prediction, polled = await self._wait(prediction, on_progress)
            if prediction.status != "succeeded":
                raise prediction_failure(prediction)
            await report(on_progress, 90.0, "succeeded on Replicate; fetching the image")
            outputs = [prediction.output] if isinstance(prediction.output, str) else prediction.output or []
            if not outputs:
                raise ProviderJobFailed(f"Replicate prediction {prediction.id} succeeded without an output.")
            data, download = await self._download(outputs[0])
            latency_ms = (self._clock() - held.started) * 1000.0
        await report(on_progress, 100.0, "done")
        content_type = sniff_content_type(data)
        if content_type is None:
            raise ProviderJobFailed(f"Replicate's image ({len(data)} bytes) is not a PNG, JPEG or WebP.")
        try:
            with Image.open(io.BytesIO(data)):  # reads the header only
                pass
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise ProviderJobFailed(f"Replicate's image does not decode ({error}).") from None
        seconds = prediction.metrics.predict_time if prediction.metrics is not None else None
        cost = seconds * self._settings.usd_per_gpu_second if seconds else self._settings.usd_per_image
        return GeneratedImage(
            data=data,
            content_type=content_type,
            latency_ms=latency_ms,
            cost_usd=round(cost, 6),
            simulation=simulation_note(created, polled, download),
        )

    async def _resumed(self, prediction_id: str) -> Prediction:
        """A prediction created before a restart, as Replicate has it now (gone: ProviderJobFailed)."""
        url = f"{self._settings.base_url}/v1/predictions/{prediction_id}"
        try:
            response = await self.http().call("GET", url, what="prediction status")
        except ProviderRefused as refused:
            if refused.response.status_code == 404:
                raise ProviderJobFailed(f"Replicate no longer knows prediction {prediction_id} ({refused}).") from None
            raise
        return parse(Prediction, response, "prediction status")

    async def _wait(
        self, prediction: Prediction, on_progress: ProgressCallback | None
    ) -> tuple[Prediction, httpx.Response | None]:
        """Poll the prediction, backing off, until it is finished, well or not; past the time-out, cancel it."""
        http = self.http()
        delay = self._settings.poll_s
        deadline = self._clock() + self._settings.timeout_s
        response: httpx.Response | None = None
        url = f"{self._settings.base_url}/v1/predictions/{prediction.id}"
        while prediction.status in RUNNING:
            if prediction.status == "starting":
                await report(on_progress, 0.0, "starting on Replicate")
            else:
                await report(on_progress, 50.0, "generating on Replicate")
            if self._clock() > deadline:
                await self._cancel(prediction.id)
                raise ProviderJobFailed(
                    f"Replicate prediction {prediction.id} not done after {self._settings.timeout_s:.0f} s; "
                    "cancelled it."
                )
            await self._sleep(delay)
            delay = min(delay * 1.5, self._settings.poll_max_s)
            response = await http.call("GET", url, what="prediction status")
            prediction = parse(Prediction, response, "prediction status")
        return prediction, response

    async def _download(self, url: str) -> tuple[bytes, httpx.Response | None]:
        if url.startswith("data:"):
            _, _, encoded = url.partition(",")
            try:
                return base64.b64decode(encoded, validate=True), None
            except ValueError as error:
                raise TransientProviderError(f"Replicate's image data URI does not decode: {error}") from None
        response = await self.http().call("GET", url, what="image download", follow_redirects=True)
        if len(response.content) > self._settings.max_image_bytes:
            raise PermanentProviderError(
                f"Replicate's image is {len(response.content)} bytes, over the "
                f"{self._settings.max_image_bytes} byte limit."
            )
        return response.content, response

    async def _cancel(self, prediction_id: str) -> None:
        """Best effort: ask Replicate to stop a prediction we no longer wait for (and no longer pay for)."""
        task = asyncio.create_task(_cancel_prediction(self.http(), self._settings.base_url, prediction_id))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)
        await asyncio.wait({task}, timeout=_CANCEL_WAIT_S)


async def _cancel_prediction(http: ProviderHttp, base_url: str, prediction_id: str) -> None:
    url = f"{base_url}/v1/predictions/{prediction_id}/cancel"
    try:
        response = await http.call("POST", url, what="prediction cancel", retries=0)
    except ProviderError as error:
        log.info("Replicate prediction %s: cancel not accepted: %s", prediction_id, error)
        return
    log.info("Replicate prediction %s: cancel asked (HTTP %d)", prediction_id, response.status_code)


def prediction_failure(prediction: Prediction) -> ProviderError:
    """A prediction Replicate finished without output: a safety refusal is permanent, the rest transient."""
    reason = f"Replicate prediction {prediction.id} {prediction.status}: {prediction.error or 'no reason given'}"
    if prediction.error is not None and "nsfw" in prediction.error.lower():
        return PermanentProviderError(f"{reason}; change the prompt or the reference.")
    return ProviderJobFailed(reason)


def parse(model: type[Parsed], response: httpx.Response, what: str) -> Parsed:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:3])
        raise TransientProviderError(f"Replicate's {what} answer is not what its API documents ({problems}).") from None


def simulation_note(*responses: httpx.Response | None) -> SimulationNote | None:
    """A shot from a Likeness fake Replicate server is a transformed reference: say so, as the simulator does."""
    marked = [response for response in responses if response is not None and FAKE_MARKER_HEADER in response.headers]
    if not marked:
        return None
    transform = next((r.headers[FAKE_TRANSFORM_HEADER] for r in marked if FAKE_TRANSFORM_HEADER in r.headers), None)
    return SimulationNote(
        transform=f"fake Replicate server on loopback, not replicate.com: {transform or 'a transformed reference'}",
        drifted=False,
    )


replicate_provider = ReplicateFluxLora.on
