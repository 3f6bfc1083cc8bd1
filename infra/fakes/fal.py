"""A fake of fal.ai's queue API for `fal-ai/instant-character`, on loopback: a test and demo tool, never fal.

It speaks the documented contract (docs.fal.ai/model-endpoints/queue; provider-contracts.md section 1):
submit answers `{request_id, status_url, response_url, cancel_url, status: IN_QUEUE, queue_position}`;
the status URL answers 202 while IN_QUEUE (the position counts down, one per poll) and IN_PROGRESS,
then 200 COMPLETED with metrics; the response URL answers the model's output JSON, whose image URL
this server serves itself. Bad input gets FastAPI-style 422s, a missing or wrong
`Authorization: Key ...` a 401. Faults are scripted per instance (`inject`, `fail_next`).

The images are real: the `image_url` data URI is decoded and transformed as the offline simulator
does (`sim_images`), so scoring downstream sees the reference person. Nothing here is fal's output,
and every answer says so: the `X-Likeness-Fake: fal` header, and file names starting "fake-fal-".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.provider_adapter.providers import sim_images
from services.provider_adapter.providers.fal import MODEL, NAMED_SIZES
from services.provider_adapter.providers.http import FAKE_MARKER_HEADER, FAKE_TRANSFORM_HEADER

FILE_PREFIX: Final = "fake-fal-"
Endpoint = Literal["submit", "status", "result", "cancel", "file"]
NamedSize = Literal["square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"]


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour: wait `delay_s`, then answer `status` (None: answer normally after the wait)."""

    status: int | None = None
    retry_after: str | None = None
    delay_s: float = 0.0
    detail: str = "injected fault"

    @classmethod
    def rate_limited(cls, retry_after: str = "1") -> Fault:
        return cls(429, retry_after=retry_after, detail="Rate limit exceeded (fake)")

    @classmethod
    def unavailable(cls) -> Fault:
        return cls(503, detail="runner_scheduling_failure (fake)")

    @classmethod
    def slow(cls, delay_s: float) -> Fault:
        return cls(None, delay_s=delay_s)


@dataclass(frozen=True)
class Failure:
    """How a request that fal accepted ends badly: COMPLETED with `error`, its result answering `result_status`."""

    error: str = "Internal server error (fake)"
    error_type: str = "runner_disconnected"
    result_status: int = 500
    detail: list[dict[str, Any]] | str = "Internal server error (fake)"


class ImageSize(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(ge=64, le=2048)
    height: int = Field(ge=64, le=2048)


class InstantCharacterInput(BaseModel):
    """fal-ai/instant-character's input schema (fal-js endpoints.ts), as this fake enforces it."""

    model_config = ConfigDict(extra="ignore")
    prompt: str = Field(min_length=1)
    image_url: str = Field(min_length=1)
    image_size: NamedSize | ImageSize = "square_hd"
    scale: float = Field(default=1.0, ge=0.0, le=2.0)
    negative_prompt: str = ""
    num_inference_steps: int = Field(default=28, ge=1, le=100)
    guidance_scale: float = Field(default=3.5, ge=0.0, le=20.0)
    seed: int | None = Field(default=None, ge=0)
    num_images: int = Field(default=1, ge=1, le=4)
    enable_safety_checker: bool = True
    output_format: Literal["jpeg", "png"] = "jpeg"
    sync_mode: bool = False


@dataclass
class _Job:
    request_id: str
    base_url: str
    arguments: InstantCharacterInput
    queue_position: int
    failure: Failure | None
    state: Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED", "CANCELLED"] = "IN_QUEUE"
    render: asyncio.Task[tuple[bytes, str, int, int]] | None = None
    started: float = 0.0
    inference_s: float = 0.0
    output: dict[str, Any] | None = None
    image: bytes = b""
    transform: str = ""

    def urls(self) -> dict[str, str]:
        base = f"{self.base_url}/{MODEL}/requests/{self.request_id}"
        return {"response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}


@dataclass
class FalFake:
    """The fake's state, scripts and counters; `app` is the ASGI app to serve (see infra.fakes.server)."""

    api_key: str = field(repr=False)
    queue_position: int = 2  # every request starts there and moves up one place per status poll
    submits: int = field(default=0, init=False)  # every POST to the model, whatever it was answered
    accepted: int = field(default=0, init=False)
    status_polls: int = field(default=0, init=False)
    cancels: int = field(default=0, init=False)
    unauthorized: int = field(default=0, init=False)
    in_flight: int = field(default=0, init=False)  # accepted, neither completed nor cancelled
    max_in_flight: int = field(default=0, init=False)
    received: list[InstantCharacterInput] = field(default_factory=list, init=False, repr=False)  # accepted inputs
    outputs: list[dict[str, Any]] = field(default_factory=list, init=False, repr=False)  # results served
    _faults: dict[str, deque[Fault]] = field(default_factory=dict, init=False, repr=False)
    _failures: deque[Failure] = field(default_factory=deque, init=False, repr=False)
    _jobs: dict[str, _Job] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def inject(self, endpoint: Endpoint, *faults: Fault) -> None:
        """The next requests to `endpoint` meet these faults, one each, in order."""
        with self._lock:
            self._faults.setdefault(endpoint, deque()).extend(faults)

    def fail_next(self, count: int = 1, failure: Failure | None = None) -> None:
        """The next `count` accepted requests end COMPLETED with an error."""
        with self._lock:
            self._failures.extend([failure or Failure()] * count)

    @property
    def app(self) -> ASGIApp:
        routes = [
            Route(f"/{MODEL}", self._submit, methods=["POST"]),
            Route(f"/{MODEL}/requests/{{request_id}}/status", self._status, methods=["GET"]),
            Route(f"/{MODEL}/requests/{{request_id}}", self._result, methods=["GET"]),
            Route(f"/{MODEL}/requests/{{request_id}}/cancel", self._cancel, methods=["PUT"]),
            Route("/files/{request_id}/{file_name}", self._file, methods=["GET"]),
        ]
        return _marked(Starlette(routes=routes))

    # --- endpoints ---------------------------------------------------------------------------------

    async def _submit(self, request: Request) -> Response:
        self.submits += 1
        refused = await self._gate(request, "submit")
        if refused is not None:
            return refused
        try:
            body = await request.json()
        except ValueError:
            return _detail(422, [{"loc": ["body"], "msg": "Invalid JSON body", "type": "json_invalid"}])
        try:
            arguments = InstantCharacterInput.model_validate(body)
        except ValidationError as error:
            return _detail(422, [_fastapi_error(item) for item in error.errors()])
        if not arguments.image_url.startswith("data:"):
            msg = "File download error: this fake reaches no network; send a base64 data: URI"
            return _detail(422, [{"loc": ["body", "image_url"], "msg": msg, "type": "file_download_error"}])
        with self._lock:
            failure = self._failures.popleft() if self._failures else None
        request_id = str(uuid.uuid4())
        job = _Job(request_id, str(request.base_url).rstrip("/"), arguments, self.queue_position, failure)
        self._jobs[request_id] = job
        self.received.append(arguments)
        self.accepted += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return JSONResponse(
            {"request_id": request_id, **job.urls(), "status": "IN_QUEUE", "queue_position": job.queue_position}
        )

    async def _status(self, request: Request) -> Response:
        self.status_polls += 1
        job, refused = await self._job(request, "status")
        if job is None:
            return refused
        if job.state == "IN_QUEUE":
            if job.queue_position > 0:
                job.queue_position -= 1
            else:
                job.state, job.started = "IN_PROGRESS", time.monotonic()
                job.render = asyncio.create_task(asyncio.to_thread(_render, job.arguments))
        elif job.state == "IN_PROGRESS" and job.render is not None and job.render.done():
            self._complete(job)
        body: dict[str, Any] = {"status": "COMPLETED" if job.state == "CANCELLED" else job.state, **job.urls()}
        body["request_id"] = job.request_id
        if job.state == "IN_QUEUE":
            body["queue_position"] = job.queue_position
        if job.state in ("IN_QUEUE", "IN_PROGRESS"):
            return JSONResponse(body, status_code=202)
        body["metrics"] = {"inference_time": job.inference_s}
        if job.state == "CANCELLED":  # what fal answers here is not documented; an error is the safe reading
            body.update(error="Request was cancelled", error_type="request_cancelled")
        elif job.failure is not None:
            body.update(error=job.failure.error, error_type=job.failure.error_type)
        return JSONResponse(body)

    async def _result(self, request: Request) -> Response:
        job, refused = await self._job(request, "result")
        if job is None:
            return refused
        if job.state != "COMPLETED":
            return _detail(400, "Request is still in progress" if job.state != "CANCELLED" else "Request was cancelled")
        if job.failure is not None:
            return _detail(job.failure.result_status, job.failure.detail)
        return JSONResponse(job.output, headers={"x-fal-request-id": job.request_id})

    async def _cancel(self, request: Request) -> Response:
        self.cancels += 1
        job, refused = await self._job(request, "cancel")
        if job is None:
            return refused if refused.status_code != 404 else JSONResponse({"status": "NOT_FOUND"}, status_code=404)
        if job.state in ("COMPLETED", "CANCELLED"):
            return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)
        job.state = "CANCELLED"
        self.in_flight -= 1
        return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)

    async def _file(self, request: Request) -> Response:
        faulted = await self._fault("file")
        if faulted is not None:
            return faulted
        job = self._jobs.get(request.path_params["request_id"])
        if (
            job is None
            or job.output is None
            or request.path_params["file_name"] != job.output["images"][0]["file_name"]
        ):
            return _detail(404, "File not found")
        content_type = job.output["images"][0]["content_type"]
        headers = {FAKE_TRANSFORM_HEADER: job.transform.encode("ascii", "replace").decode("ascii")}
        return Response(job.image, media_type=content_type, headers=headers)

    # --- plumbing ----------------------------------------------------------------------------------

    async def _gate(self, request: Request, endpoint: Endpoint) -> Response | None:
        """The key first (401), then any scripted fault for this endpoint."""
        if request.headers.get("Authorization") != f"Key {self.api_key}":
            self.unauthorized += 1
            return _detail(401, "Unauthorized: send 'Authorization: Key <FAL_KEY>' with a valid key")
        return await self._fault(endpoint)

    async def _fault(self, endpoint: Endpoint) -> Response | None:
        with self._lock:
            queued = self._faults.get(endpoint)
            fault = queued.popleft() if queued else None
        if fault is None:
            return None
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault.status is None:
            return None
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
        return _detail(fault.status, fault.detail, headers)

    async def _job(self, request: Request, endpoint: Endpoint) -> tuple[_Job | None, Response]:
        refused = await self._gate(request, endpoint)
        if refused is not None:
            return None, refused
        job = self._jobs.get(request.path_params["request_id"])
        return (job, Response()) if job is not None else (None, _detail(404, "Request not found"))

    def _complete(self, job: _Job) -> None:
        assert job.render is not None
        job.state = "COMPLETED"
        job.inference_s = round(time.monotonic() - job.started, 3)
        self.in_flight -= 1
        error = job.render.exception()
        if error is not None and job.failure is None:
            loc = ["body", "image_url"]
            job.failure = Failure(
                error="Invalid status code: 422",
                error_type="image_load_error",
                result_status=422,
                detail=[{"loc": loc, "msg": f"Image load error: {error}", "type": "image_load_error"}],
            )
        if job.failure is not None:
            return
        image, job.transform, width, height = job.render.result()
        arguments = job.arguments
        file_name = f"{FILE_PREFIX}{job.request_id}.{'png' if arguments.output_format == 'png' else 'jpg'}"
        job.image = image
        job.output = {
            "images": [
                {
                    "url": f"{job.base_url}/files/{job.request_id}/{file_name}",
                    "width": width,
                    "height": height,
                    "content_type": f"image/{arguments.output_format}",
                    "file_name": file_name,
                    "file_size": len(image),
                }
            ],
            "seed": _seed(arguments),
            "prompt": arguments.prompt,
            "has_nsfw_concepts": [False],
            "timings": {"inference": job.inference_s},
        }
        self.outputs.append(job.output)


def _seed(arguments: InstantCharacterInput) -> int:
    if arguments.seed is not None:
        return arguments.seed
    return int.from_bytes(hashlib.sha256(arguments.prompt.encode()).digest()[:4], "big")


def _render(arguments: InstantCharacterInput) -> tuple[bytes, str, int, int]:
    """The reference transformed for the prompt's scenario, at the requested size (CPU work: a thread)."""
    header, _, encoded = arguments.image_url.partition(",")
    try:
        data = base64.b64decode(encoded, validate=True) if header.endswith(";base64") else b""
    except binascii.Error as error:
        raise ValueError(f"the data URI is not base64 ({error})") from None
    source = sim_images.decode_image(data)
    size = arguments.image_size
    width, height = NAMED_SIZES[size] if isinstance(size, str) else (size.width, size.height)
    scenario = sim_images.scenario_for(None, arguments.prompt)
    shot = sim_images.render(source, scenario, (width, height), np.random.default_rng(_seed(arguments)), mirror=True)
    transform = f"{scenario} from the image_url reference: {shot.transform}; {width}x{height}"
    if arguments.output_format == "png":
        return sim_images.encode_png(shot), transform, width, height
    buffer = io.BytesIO()
    shot.image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue(), transform, width, height


def _fastapi_error(item: Mapping[str, Any]) -> dict[str, Any]:
    return {"loc": ["body", *item["loc"]], "msg": item["msg"], "type": item["type"]}


def _detail(status: int, detail: object, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _marked(app: ASGIApp) -> ASGIApp:
    """Every response, errors included, carries `X-Likeness-Fake: fal`."""

    async def marked(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (FAKE_MARKER_HEADER.lower().encode(), b"fal")]
            await send(message)

        await app(scope, receive, send_marked)

    return marked
