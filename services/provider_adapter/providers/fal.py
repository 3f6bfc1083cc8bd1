"""fal.ai Instant Character (`fal-ai/instant-character`): reference-based identity, no training.

The identity is the reference photos themselves: `create_identity` calls nothing and returns a job
id made from the references' sha256s, and `identity_status` reports it ready at once, at no cost.
A shot goes through fal's queue (docs.fal.ai/model-endpoints/queue): submit, poll the `status_url`
the submit returned until COMPLETED, read the `response_url`, download `images[0].url`. The first
reference travels inline as a base64 `data:` URI (documented as accepted for file inputs).

Responses marked by a Likeness fake server (`FAKE_MARKER_HEADER`) make a shot `simulated`: its
image is a transformed reference, and the reports say so.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal, NoReturn, TypeVar

import httpx
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from contracts import SimulationNote
from contracts.values import AspectRatio
from services.provider_adapter.ports import (
    GeneratedImage,
    IdentityRequest,
    IdentityStatus,
    PermanentProviderError,
    ProgressCallback,
    ShotRequest,
    TransientProviderError,
)
from services.provider_adapter.providers.http import (
    FAKE_MARKER_HEADER,
    FAKE_TRANSFORM_HEADER,
    Clock,
    ProviderHttp,
    ProviderKeyAuth,
    RetryPolicy,
    Sleep,
)

log = logging.getLogger(__name__)

PROVIDER_NAME: Final = "fal-instant-character"
MODEL: Final = "fal-ai/instant-character"
KEY_SETTING: Final = "FAL_KEY (or LIKENESS_PROVIDER_ADAPTER_FAL_KEY)"
_IDENTITY = re.compile(rf"^{PROVIDER_NAME}:(?P<digest>[0-9a-f]{{64}})$")

# fal's named image sizes (its ImageSize enum) and the pixels each stands for.
NAMED_SIZES: Final[Mapping[str, tuple[int, int]]] = MappingProxyType(
    {
        "square_hd": (1024, 1024),
        "square": (512, 512),
        "portrait_4_3": (768, 1024),
        "portrait_16_9": (576, 1024),
        "landscape_4_3": (1024, 768),
        "landscape_16_9": (1024, 576),
    }
)
# Our aspect ratios as fal's image_size: a named size where fal has one, else explicit pixels (about 1 MP).
IMAGE_SIZES: Final[Mapping[AspectRatio, str | Mapping[str, int]]] = MappingProxyType(
    {
        "1:1": "square_hd",
        "3:4": "portrait_4_3",
        "9:16": "portrait_16_9",
        "4:3": "landscape_4_3",
        "16:9": "landscape_16_9",
        "2:3": MappingProxyType({"width": 832, "height": 1248}),
        "3:2": MappingProxyType({"width": 1248, "height": 832}),
    }
)
_SIGNATURES: Final[tuple[tuple[bytes, Literal["image/png", "image/jpeg", "image/webp"]], ...]] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"RIFF", "image/webp"),
)
_CANCEL_WAIT_S: Final = 5.0


@dataclass(frozen=True)
class FalSettings:
    """What the adapter needs: the key (None: not configured), where fal's queue is, price and pacing."""

    key: SecretStr | None
    queue_url: str = "https://queue.fal.run"
    model: str = MODEL
    usd_per_megapixel: float = 0.10
    poll_s: float = 0.5
    poll_max_s: float = 5.0
    timeout_s: float = 900.0
    max_image_bytes: int = 50 * 1024 * 1024

    @property
    def configured(self) -> bool:
        return self.key is not None and bool(self.key.get_secret_value().strip())


class _FalModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Queued(_FalModel):
    request_id: str
    status_url: str
    response_url: str
    cancel_url: str
    status: str = "IN_QUEUE"
    queue_position: int | None = None


class _Status(_FalModel):
    status: str
    queue_position: int | None = None
    error: str | None = None
    error_type: str | None = None


class _File(_FalModel):
    url: str
    content_type: str | None = None
    width: int | None = None
    height: int | None = None


class _Output(_FalModel):
    images: list[_File] = Field(min_length=1)
    seed: int | None = None
    has_nsfw_concepts: list[bool] = Field(default_factory=list)


_Parsed = TypeVar("_Parsed", bound=_FalModel)


def identity_for(reference_sha256s: Sequence[str]) -> str:
    """The identity of an instant-reference character: its references, in order, by sha256."""
    return f"{PROVIDER_NAME}:{hashlib.sha256(':'.join(reference_sha256s).encode()).hexdigest()}"


def data_uri(data: bytes, content_type: str) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def sniff_content_type(data: bytes) -> Literal["image/png", "image/jpeg", "image/webp"] | None:
    for signature, content_type in _SIGNATURES:
        if data.startswith(signature) and (content_type != "image/webp" or data[8:12] == b"WEBP"):
            return content_type
    return None


def fal_provider(
    settings: FalSettings,
    client: httpx.AsyncClient,
    *,
    concurrency: int,
    retry: RetryPolicy | None = None,
    sleep: Sleep = asyncio.sleep,
    clock: Clock = time.monotonic,
    wall_clock: Clock = time.time,
    draw: Callable[[], float] = random.random,
) -> FalInstantCharacter:
    """The provider on `client`; its key goes only to `settings.queue_url`'s origin."""
    http = None
    if settings.key is not None and settings.configured:
        auth = ProviderKeyAuth(settings.key, scheme="Key", origins=[settings.queue_url])
        http = ProviderHttp(
            PROVIDER_NAME,
            client,
            auth=auth,
            concurrency=concurrency,
            key_setting=KEY_SETTING,
            retry=retry,
            sleep=sleep,
            wall_clock=wall_clock,
            draw=draw,
        )
    return FalInstantCharacter(settings, http, clock=clock, sleep=sleep)


class FalInstantCharacter:
    """`fal-instant-character`: implements `ports.Provider` over fal's queue API."""

    name = PROVIDER_NAME
    simulated = False  # the identity is the references themselves; shots say for themselves

    def __init__(
        self,
        settings: FalSettings,
        http: ProviderHttp | None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if settings.configured and http is None:
            raise ValueError("a configured fal provider needs its ProviderHttp")
        self._settings = settings
        self._http = http if settings.configured else None
        self._clock = clock
        self._sleep = sleep
        self._cancels: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"FalInstantCharacter(queue_url={self._settings.queue_url!r}, available={self.available()})"

    def available(self) -> bool:
        return self._http is not None

    async def create_identity(self, request: IdentityRequest) -> str:
        if not request.references:
            raise PermanentProviderError("An identity needs at least one reference image; upload one.")
        return identity_for([reference.ref.sha256 for reference in request.references])

    async def identity_status(self, job_id: str) -> IdentityStatus:
        if _IDENTITY.match(job_id) is None:
            raise PermanentProviderError(f"{job_id!r} is not a {PROVIDER_NAME} identity.")
        return IdentityStatus(state="ready", percent=100.0, identity_ref=job_id, training_seconds=0.0, cost_usd=0.0)

    def arguments(self, request: ShotRequest) -> dict[str, Any]:
        """The instant-character input for one shot (docs: fal.ai/models/fal-ai/instant-character/api)."""
        params = request.params
        reference = request.references[0]
        size = IMAGE_SIZES[params.aspect_ratio]
        return {
            "prompt": params.prompt,
            "image_url": data_uri(reference.data, reference.ref.content_type),
            "negative_prompt": params.negative_prompt,
            "seed": params.seed,
            "num_inference_steps": params.steps,
            "guidance_scale": params.guidance,
            "image_size": size if isinstance(size, str) else dict(size),
            "num_images": 1,
            "output_format": "png",
            "enable_safety_checker": True,
        }

    async def generate(self, request: ShotRequest, on_progress: ProgressCallback | None = None) -> GeneratedImage:
        http = self._http
        if http is None:
            raise PermanentProviderError(f"{PROVIDER_NAME} is not configured here: set {KEY_SETTING}.")
        if not request.references:
            raise PermanentProviderError("A shot needs at least one reference image.")
        if request.identity_ref != identity_for([reference.ref.sha256 for reference in request.references]):
            raise PermanentProviderError(
                f"{request.identity_ref!r} is not the {PROVIDER_NAME} identity of these references; rebuild it."
            )
        arguments = self.arguments(request)
        async with http.slots:
            started = self._clock()
            submitted = await http.call(
                "POST", f"{self._settings.queue_url}/{self._settings.model}", what="submit", json=arguments
            )
            queued = _parse(_Queued, submitted, "submit")
            try:
                finished = await self._wait(http, queued, on_progress)
            except BaseException:  # cancelled, timed out, polls failing: fal need not finish it
                await self._cancel(http, queued)
                raise
            if finished.status != "COMPLETED" or finished.error is not None:
                await self._failed(http, queued, finished)
            await _report(on_progress, 90.0, "completed on fal; fetching the image")
            result = await http.call("GET", queued.response_url, what="result")
            output = _parse(_Output, result, "result")
            if output.has_nsfw_concepts[:1] == [True]:
                raise PermanentProviderError(
                    "fal's safety checker flagged the image (has_nsfw_concepts), so it is blanked; "
                    "change the prompt or the reference."
                )
            data, download = await self._download(http, output.images[0])
            latency_ms = (self._clock() - started) * 1000.0
        await _report(on_progress, 100.0, "done")
        content_type = sniff_content_type(data)
        if content_type is None:
            raise TransientProviderError(f"fal's image ({len(data)} bytes) is not a PNG, JPEG or WebP.")
        try:
            with Image.open(io.BytesIO(data)) as decoded:  # reads the header only
                width, height = decoded.size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise TransientProviderError(f"fal's image does not decode ({error}).") from None
        return GeneratedImage(
            data=data,
            content_type=content_type,
            latency_ms=latency_ms,
            cost_usd=round(self._settings.usd_per_megapixel * width * height / 1_000_000, 6),
            simulation=_simulation_note(result, download),
        )

    async def _wait(self, http: ProviderHttp, queued: _Queued, on_progress: ProgressCallback | None) -> _Status:
        """Poll the status URL fal gave us, backing off, until the request is finished, well or not."""
        status = _Status(status=queued.status, queue_position=queued.queue_position)
        delay = self._settings.poll_s
        deadline = self._clock() + self._settings.timeout_s
        while status.status in ("IN_QUEUE", "IN_PROGRESS"):
            if status.status == "IN_QUEUE":
                position = "" if status.queue_position is None else f", position {status.queue_position}"
                await _report(on_progress, 0.0, f"in fal's queue{position}")
            else:
                await _report(on_progress, 50.0, "generating on fal")
            if self._clock() > deadline:
                raise TransientProviderError(
                    f"fal request {queued.request_id} not done after {self._settings.timeout_s:.0f} s; cancelled it."
                )
            await self._sleep(delay)
            delay = min(delay * 1.5, self._settings.poll_max_s)
            status = _parse(_Status, await http.call("GET", queued.status_url, what="status"), "status")
        return status

    async def _failed(self, http: ProviderHttp, queued: _Queued, status: _Status) -> NoReturn:
        """A request fal finished without an image. Its result says why: a 422 is permanent, the rest transient.

        COMPLETED with `error` is how fal's own client sees a failure; FAILED and CANCELLED come from
        third-party schemas only, and anything else is a status the docs do not list.
        """
        kind = f" ({status.error_type})" if status.error_type else ""
        reason = f"fal request {queued.request_id} {status.status.lower()}{kind}: {status.error or 'no reason given'}"
        if status.status in ("COMPLETED", "FAILED"):
            try:
                await http.call("GET", queued.response_url, what="result of a failed request", retries=0)
            except TransientProviderError as error:
                raise TransientProviderError(f"{reason} (its result: {error})") from None
        raise TransientProviderError(reason)

    async def _download(self, http: ProviderHttp, image: _File) -> tuple[bytes, httpx.Response | None]:
        if image.url.startswith("data:"):
            _, _, encoded = image.url.partition(",")
            try:
                return base64.b64decode(encoded, validate=True), None
            except ValueError as error:
                raise TransientProviderError(f"fal's image data URI does not decode: {error}") from None
        response = await http.call("GET", image.url, what="image download", follow_redirects=True)
        if len(response.content) > self._settings.max_image_bytes:
            raise PermanentProviderError(
                f"fal's image is {len(response.content)} bytes, over the {self._settings.max_image_bytes} byte limit."
            )
        return response.content, response

    async def _cancel(self, http: ProviderHttp, queued: _Queued) -> None:
        """Best effort: ask fal to drop a request we no longer wait for (cancelled task, error, time-out)."""
        task = asyncio.create_task(_cancel_request(http, queued))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)
        await asyncio.wait({task}, timeout=_CANCEL_WAIT_S)


async def _cancel_request(http: ProviderHttp, queued: _Queued) -> None:
    try:
        response = await http.call("PUT", queued.cancel_url, what="cancel", retries=0)
    except (PermanentProviderError, TransientProviderError) as error:
        log.info("fal request %s: cancel not accepted: %s", queued.request_id, error)
        return
    log.info("fal request %s: cancel asked (HTTP %d)", queued.request_id, response.status_code)


def _parse(model: type[_Parsed], response: httpx.Response, what: str) -> _Parsed:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:3])
        raise TransientProviderError(f"fal's {what} answer is not what its API documents ({problems}).") from None


def _simulation_note(result: httpx.Response, download: httpx.Response | None) -> SimulationNote | None:
    """A shot from a Likeness fake fal server is a transformed reference: say so, as the simulator does."""
    marked = [
        response for response in (result, download) if response is not None and FAKE_MARKER_HEADER in response.headers
    ]
    if not marked:
        return None
    transform = next((r.headers[FAKE_TRANSFORM_HEADER] for r in marked if FAKE_TRANSFORM_HEADER in r.headers), None)
    return SimulationNote(
        transform=f"fake fal server on loopback, not fal.ai: {transform or 'a transformed reference'}", drifted=False
    )


async def _report(on_progress: ProgressCallback | None, percent: float, message: str) -> None:
    if on_progress is None:
        return
    try:
        await on_progress(percent, message)
    except Exception:  # a failed progress report must not abandon a paid generation
        log.warning("progress callback failed (%.0f%%: %s)", percent, message, exc_info=True)
