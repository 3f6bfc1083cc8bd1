"""fal.ai's queue API (docs.fal.ai/model-endpoints/queue), shared by every fal adapter.

A request is submitted to `{queue}/{model}`, polled at its `status_url` until COMPLETED, its output
read at `response_url`, and cancelled at `cancel_url` when we give up on it (a time-out). A shot's
job id, `<adapter>:<model>:<request id>`, is saved by the service before it waits, so a restarted
adapter rebuilds those URLs and resumes polling instead of submitting again; a cancelled wait (a
shutdown) therefore leaves the request running at fal. The status, result and
cancel URLs drop any subpath of the model id (`fal-ai/flux/dev/redux` is polled under `fal-ai/flux`),
which `request_urls` follows when a URL must be rebuilt from a stored request id.

Responses marked by a Likeness fake server (`FAKE_MARKER_HEADER`) make a shot `simulated`: its
image is a transformed reference, and the reports say so.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Generic, Literal, Self, TypeVar

import httpx
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from contracts import SimulationNote
from contracts.values import AspectRatio
from services.provider_adapter.ports import (
    GeneratedImage,
    PermanentProviderError,
    ProgressCallback,
    ProviderError,
    ProviderJobFailed,
    TransientProviderError,
)
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

KEY_SETTING: Final = "FAL_KEY (or LIKENESS_PROVIDER_ADAPTER_FAL_KEY)"

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
_SHOT_JOB = re.compile(r"^(?P<adapter>[a-z0-9-]+):(?P<model>[A-Za-z0-9._/-]+):(?P<request_id>[A-Za-z0-9._-]{1,128})$")


@dataclass(frozen=True)
class FalSettings:
    """What a fal adapter needs: the key (None: not configured), where fal's queue is, price and pacing.

    `model` and `usd_per_megapixel` are the image model an adapter generates shots with. `webhook_url`
    (None: none) is where fal should POST each request's outcome when it finishes (signed with Ed25519;
    infra.webhooks.fal checks it): every submit carries it as `?fal_webhook=`. Polling still runs.
    """

    key: SecretStr | None
    queue_url: str = "https://queue.fal.run"
    model: str = "fal-ai/instant-character"
    usd_per_megapixel: float = 0.10
    poll_s: float = 0.5
    poll_max_s: float = 5.0
    timeout_s: float = 900.0
    max_image_bytes: int = 50 * 1024 * 1024
    webhook_url: str | None = None

    @property
    def configured(self) -> bool:
        return self.key is not None and bool(self.key.get_secret_value().strip())


class FalModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Queued(FalModel):
    request_id: str
    status_url: str
    response_url: str
    cancel_url: str
    status: str = "IN_QUEUE"
    queue_position: int | None = None


class LogLine(FalModel):
    message: str = ""
    timestamp: str | None = None


class Metrics(FalModel):
    inference_time: float | None = None


class Status(FalModel):
    status: str
    queue_position: int | None = None
    error: str | None = None
    error_type: str | None = None
    logs: list[LogLine] | None = None
    metrics: Metrics | None = None


class File(FalModel):
    url: str
    content_type: str | None = None
    width: int | None = None
    height: int | None = None


class ImagesOutput(FalModel):
    images: list[File] = Field(min_length=1)
    seed: int | None = None
    has_nsfw_concepts: list[bool] = Field(default_factory=list)


Parsed = TypeVar("Parsed", bound=FalModel)


def request_urls(queue_url: str, model: str, request_id: str) -> Queued:
    """The documented URLs of a request, rebuilt from its id: `{owner}/{app}` only, the subpath dropped."""
    app = "/".join(model.split("/")[:2])
    base = f"{queue_url}/{app}/requests/{request_id}"
    return Queued(request_id=request_id, status_url=f"{base}/status", response_url=base, cancel_url=f"{base}/cancel")


def parse_job_id(adapter: str, job_id: str) -> tuple[str, str]:
    """The model and fal request id of a shot job id `<adapter>:<model>:<request id>`."""
    found = _SHOT_JOB.match(job_id)
    if found is None or found["adapter"] != adapter:
        raise PermanentProviderError(f"{job_id!r} is not a {adapter} shot job.")
    return found["model"], found["request_id"]


def data_uri(data: bytes, content_type: str) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def image_size(aspect_ratio: AspectRatio) -> str | dict[str, int]:
    size = IMAGE_SIZES[aspect_ratio]
    return size if isinstance(size, str) else dict(size)


def sniff_content_type(data: bytes) -> Literal["image/png", "image/jpeg", "image/webp"] | None:
    for signature, content_type in _SIGNATURES:
        if data.startswith(signature) and (content_type != "image/webp" or data[8:12] == b"WEBP"):
            return content_type
    return None


SettingsT = TypeVar("SettingsT", bound=FalSettings)


class FalAdapter(Generic[SettingsT]):
    """What every fal adapter shares: its settings, its queue (None: no key here), how it is built."""

    name: str
    simulated = False  # shots from a Likeness fake server say so for themselves

    def __init__(
        self,
        settings: SettingsT,
        http: ProviderHttp | None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if settings.configured and http is None:
            raise ValueError("a configured fal provider needs its ProviderHttp")
        self._settings = settings
        self._queue = FalQueue(settings, http, clock=clock, sleep=sleep) if settings.configured and http else None

    @classmethod
    def on(
        cls,
        settings: SettingsT,
        client: httpx.AsyncClient,
        *,
        concurrency: int,
        retry: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        draw: Callable[[], float] = random.random,
        slots: asyncio.Semaphore | None = None,
    ) -> Self:
        """The provider on `client`; its key goes only to `settings.queue_url`'s origin.

        `slots`: one semaphore for every fal adapter on the same account (fal limits requests in
        flight per account, 2 at first); None gives this adapter `concurrency` of its own.
        """
        http = None
        if settings.key is not None and settings.configured:
            auth = ProviderKeyAuth(settings.key, scheme="Key", origins=[settings.queue_url])
            http = ProviderHttp(
                cls.name,
                client,
                auth=auth,
                concurrency=concurrency,
                key_setting=KEY_SETTING,
                retry=retry,
                sleep=sleep,
                wall_clock=wall_clock,
                draw=draw,
                slots=slots,
            )
        return cls(settings, http, clock=clock, sleep=sleep)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(queue_url={self._settings.queue_url!r}, available={self.available()})"

    def available(self) -> bool:
        return self._queue is not None

    def queue(self) -> FalQueue:
        """The queue, or a permanent error where fal has no key here."""
        if self._queue is None:
            raise PermanentProviderError(f"{self.name} is not configured here: set {KEY_SETTING}.")
        return self._queue


class FalQueue:
    """Submit, poll, read, download and cancel on fal's queue, for one adapter's `ProviderHttp`."""

    def __init__(
        self, settings: FalSettings, http: ProviderHttp, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        self.settings = settings
        self.http = http
        self._clock = clock
        self._sleep = sleep
        self._cancels: set[asyncio.Task[None]] = set()
        self._held: HeldJobs[Queued] = HeldJobs(clock)

    async def submit(self, model: str, arguments: Mapping[str, Any]) -> Queued:
        """Queue a request; with `settings.webhook_url`, fal is asked to call it back (`?fal_webhook=`, URL-encoded)."""
        webhook = self.settings.webhook_url
        params = {"fal_webhook": webhook} if webhook else None
        response = await self.http.call(
            "POST", f"{self.settings.queue_url}/{model}", what="submit", json=arguments, params=params
        )
        return parse(Queued, response, "submit")

    async def status(self, queued: Queued, *, logs: bool = False) -> Status:
        url = f"{queued.status_url}?logs=1" if logs else queued.status_url
        return parse(Status, await self.http.call("GET", url, what="status"), "status")

    async def result(self, queued: Queued, model: type[Parsed]) -> tuple[Parsed, httpx.Response]:
        response = await self.http.call("GET", queued.response_url, what="result")
        return parse(model, response, "result"), response

    async def start_job(self, adapter: str, model: str, arguments: Mapping[str, Any]) -> str:
        """Submit one image request to `model` and return its job id, `<adapter>:<model>:<request id>`.

        The concurrency slot is kept for the request until `finish_job` ends.
        """

        async def submit() -> tuple[str, Queued]:
            queued = await self.submit(model, arguments)
            return f"{adapter}:{model}:{queued.request_id}", queued

        return await self._held.submit(self.http.slots, submit)

    async def finish_job(self, adapter: str, job_id: str, on_progress: ProgressCallback | None) -> GeneratedImage:
        """Wait for the request, read its output, download `images[0]`, price it per megapixel.

        Resumable: the status and result URLs are rebuilt from the job id where this process did not
        submit it. A time-out cancels the request at fal (ProviderJobFailed: a new attempt submits
        again); a failed poll or a cancelled wait leaves it running for the next delivery to resume.
        """
        model, request_id = parse_job_id(adapter, job_id)
        async with self._held.waiting(self.http.slots, job_id) as held:
            queued = held.detail or request_urls(self.settings.queue_url, model, request_id)
            finished = await self._wait(queued, on_progress, resumed=held.detail is None)
            if finished.status != "COMPLETED" or finished.error is not None:
                raise await self.failure(queued, finished)
            await report(on_progress, 90.0, "completed on fal; fetching the image")
            output, result = await self.result(queued, ImagesOutput)
            if output.has_nsfw_concepts[:1] == [True]:
                raise PermanentProviderError(
                    "fal's safety checker flagged the image (has_nsfw_concepts), so it is blanked; "
                    "change the prompt or the reference."
                )
            data, download = await self._download(output.images[0])
            latency_ms = (self._clock() - held.started) * 1000.0
        await report(on_progress, 100.0, "done")
        content_type = sniff_content_type(data)
        if content_type is None:
            raise ProviderJobFailed(f"fal's image ({len(data)} bytes) is not a PNG, JPEG or WebP.")
        try:
            with Image.open(io.BytesIO(data)) as decoded:  # reads the header only
                width, height = decoded.size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise ProviderJobFailed(f"fal's image does not decode ({error}).") from None
        return GeneratedImage(
            data=data,
            content_type=content_type,
            latency_ms=latency_ms,
            cost_usd=round(self.settings.usd_per_megapixel * width * height / 1_000_000, 6),
            simulation=simulation_note(result, download),
        )

    async def _wait(self, queued: Queued, on_progress: ProgressCallback | None, *, resumed: bool) -> Status:
        """Poll the status URL, backing off, until the request is finished, well or not.

        `resumed`: the request was submitted before a restart; its status is read first, and a
        request fal no longer knows (404) is a ProviderJobFailed.
        """
        status = Status(status=queued.status, queue_position=queued.queue_position)
        if resumed:
            status = await self._status_of_resumed(queued)
        delay = self.settings.poll_s
        deadline = self._clock() + self.settings.timeout_s
        while status.status in ("IN_QUEUE", "IN_PROGRESS"):
            if status.status == "IN_QUEUE":
                position = "" if status.queue_position is None else f", position {status.queue_position}"
                await report(on_progress, 0.0, f"in fal's queue{position}")
            else:
                await report(on_progress, 50.0, "generating on fal")
            if self._clock() > deadline:
                await self._cancel(queued)
                raise ProviderJobFailed(
                    f"fal request {queued.request_id} not done after {self.settings.timeout_s:.0f} s; cancelled it."
                )
            await self._sleep(delay)
            delay = min(delay * 1.5, self.settings.poll_max_s)
            status = await self.status(queued)
        return status

    async def _status_of_resumed(self, queued: Queued) -> Status:
        try:
            return await self.status(queued)
        except ProviderRefused as refused:
            if refused.response.status_code == 404:
                raise ProviderJobFailed(f"fal no longer knows request {queued.request_id} ({refused}).") from None
            raise

    async def failure(self, queued: Queued, status: Status) -> ProviderError:
        """A request fal finished without output. Its result says why: a 422 is permanent, the rest transient.

        COMPLETED with `error` is how fal's own client sees a failure; FAILED and CANCELLED come from
        third-party schemas only, and anything else is a status the docs do not list.
        """
        kind = f" ({status.error_type})" if status.error_type else ""
        reason = f"fal request {queued.request_id} {status.status.lower()}{kind}: {status.error or 'no reason given'}"
        if status.status in ("COMPLETED", "FAILED"):
            try:
                await self.http.call("GET", queued.response_url, what="result of a failed request", retries=0)
            except TransientProviderError as error:
                return ProviderJobFailed(f"{reason} (its result: {error})")
            except PermanentProviderError as error:
                return error
        return ProviderJobFailed(reason)

    async def _download(self, image: File) -> tuple[bytes, httpx.Response | None]:
        if image.url.startswith("data:"):
            _, _, encoded = image.url.partition(",")
            try:
                return base64.b64decode(encoded, validate=True), None
            except ValueError as error:
                raise TransientProviderError(f"fal's image data URI does not decode: {error}") from None
        response = await self.http.call("GET", image.url, what="image download", follow_redirects=True)
        if len(response.content) > self.settings.max_image_bytes:
            raise PermanentProviderError(
                f"fal's image is {len(response.content)} bytes, over the {self.settings.max_image_bytes} byte limit."
            )
        return response.content, response

    async def _cancel(self, queued: Queued) -> None:
        """Best effort: ask fal to drop a request we no longer wait for (cancelled task, error, time-out)."""
        task = asyncio.create_task(_cancel_request(self.http, queued))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)
        await asyncio.wait({task}, timeout=_CANCEL_WAIT_S)


async def _cancel_request(http: ProviderHttp, queued: Queued) -> None:
    try:
        response = await http.call("PUT", queued.cancel_url, what="cancel", retries=0)
    except (PermanentProviderError, TransientProviderError) as error:
        log.info("fal request %s: cancel not accepted: %s", queued.request_id, error)
        return
    log.info("fal request %s: cancel asked (HTTP %d)", queued.request_id, response.status_code)


def parse(model: type[Parsed], response: httpx.Response, what: str) -> Parsed:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:3])
        raise TransientProviderError(f"fal's {what} answer is not what its API documents ({problems}).") from None


def simulation_note(result: httpx.Response, download: httpx.Response | None) -> SimulationNote | None:
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


async def report(on_progress: ProgressCallback | None, percent: float, message: str) -> None:
    if on_progress is None:
        return
    try:
        await on_progress(percent, message)
    except Exception:  # a failed progress report must not abandon a paid generation
        log.warning("progress callback failed (%.0f%%: %s)", percent, message, exc_info=True)
