"""A fake of fal.ai's queue API, on loopback: a test and demo tool, never fal.

Models: `fal-ai/instant-character`, `fal-ai/flux-lora-fast-training`, `fal-ai/flux-lora` and
`fal-ai/flux/dev/redux` (no prompt; its request URLs drop the subpath: `/fal-ai/flux/requests/{id}`).

It speaks the documented contract (docs.fal.ai/model-endpoints/queue; provider-contracts.md section 1):
submit answers `{request_id, status_url, response_url, cancel_url, status: IN_QUEUE, queue_position}`;
the status URL answers 202 while IN_QUEUE (the position counts down, one per poll) and IN_PROGRESS,
then 200 COMPLETED with metrics; the response URL answers the model's output JSON, whose image URL
this server serves itself. Bad input gets FastAPI-style 422s, a missing or wrong
`Authorization: Key ...` a 401. Faults are scripted per instance (`inject`, `fail_next`).

The images are real: the `image_url` data URI is decoded and transformed as the offline simulator
does (`sim_images`), so scoring downstream sees the reference person. A training decodes its zip
data URI (a 422 `image_load_error` if it holds no image), runs IN_QUEUE, then IN_PROGRESS with
"step k/N" logs for `training_polls` polls and at least `training_s` seconds, then COMPLETED with a
`diffusers_lora_file` served here; flux-lora takes only a LoRA URL this fake issued (422 otherwise)
and renders the training's first reference. Nothing here is fal's output,
and every answer says so: the `X-Likeness-Fake: fal` header, and file names starting "fake-fal-".

Webhooks (provider-contracts.md, "Webhooks [doc]"): a submit with `?fal_webhook=<url>` runs on by itself
(one step each `webhook_tick_s`, as well as on polls) and, once finished, POSTs
`{request_id, gateway_request_id, status: OK|ERROR, payload}` (an ERROR carries `error` and the error
body as `payload`) to that URL, signed as fal signs: Ed25519 with this instance's own key, whose JWKS is
served at `GET /.well-known/jwks.json`. A cancelled request calls nothing back (fal documents nothing
for it). Deliveries go to loopback only (127.0.0.0/8, ::1, localhost); any other URL is logged, never
called. `tamper_webhooks` makes the next deliveries carry a bad signature or a stale timestamp; `close`
awaits (then cancels) deliveries still under way.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import ipaddress
import json
import logging
import threading
import time
import uuid
import zipfile
from collections import deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import httpx
import numpy as np
from Crypto.PublicKey import ECC
from Crypto.PublicKey.ECC import EccKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infra.fakes.faults import Fault, FaultScript
from infra.webhooks.fal import jwks_document, sign_fal_webhook
from services.provider_adapter.providers import sim_images
from services.provider_adapter.providers.fal import MODEL, NAMED_SIZES
from services.provider_adapter.providers.fal_flux_lora import MODEL as FLUX_LORA_MODEL
from services.provider_adapter.providers.fal_flux_lora import TRAINING_MODEL
from services.provider_adapter.providers.fal_redux import MODEL as REDUX_MODEL
from services.provider_adapter.providers.http import FAKE_MARKER_HEADER, FAKE_TRANSFORM_HEADER

log = logging.getLogger(__name__)

FILE_PREFIX: Final = "fake-fal-"
JWKS_PATH: Final = "/.well-known/jwks.json"
Endpoint = Literal["submit", "train", "status", "result", "cancel", "file", "jwks"]  # "train": a training's submit
WebhookTamper = Literal["bad_signature", "stale_timestamp"]
NamedSize = Literal["square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"]


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


class _ImageInput(BaseModel):
    """The inputs fal's image models share."""

    model_config = ConfigDict(extra="ignore")
    prompt: str = Field(min_length=1)
    seed: int | None = Field(default=None, ge=0)
    num_images: int = Field(default=1, ge=1, le=4)
    enable_safety_checker: bool = True
    output_format: Literal["jpeg", "png"] = "jpeg"
    sync_mode: bool = False


class InstantCharacterInput(_ImageInput):
    """fal-ai/instant-character's input schema (fal-js endpoints.ts), as this fake enforces it."""

    image_url: str = Field(min_length=1)
    image_size: NamedSize | ImageSize = "square_hd"
    scale: float = Field(default=1.0, ge=0.0, le=2.0)
    negative_prompt: str = ""
    num_inference_steps: int = Field(default=28, ge=1, le=100)
    guidance_scale: float = Field(default=3.5, ge=0.0, le=20.0)


class ReduxInput(BaseModel):
    """fal-ai/flux/dev/redux's input schema (provider-contracts.md section 1): no prompt."""

    model_config = ConfigDict(extra="ignore")
    image_url: str = Field(min_length=1)
    image_size: NamedSize | ImageSize = "landscape_4_3"
    num_inference_steps: int = Field(default=28, ge=1, le=50)
    guidance_scale: float = Field(default=3.5, ge=0.0, le=20.0)
    seed: int | None = Field(default=None, ge=0)
    num_images: int = Field(default=1, ge=1, le=4)
    acceleration: Literal["none", "regular", "high"] = "none"
    enable_safety_checker: bool = True
    output_format: Literal["jpeg", "png"] = "jpeg"
    sync_mode: bool = False


class LoraWeight(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1)
    scale: float = Field(default=1.0, ge=0.0, le=4.0)
    force: bool = False


class FluxLoraInput(_ImageInput):
    """fal-ai/flux-lora's input schema (provider-contracts.md section 1), as this fake enforces it."""

    loras: list[LoraWeight] = Field(min_length=1)
    image_size: NamedSize | ImageSize = "landscape_4_3"
    num_inference_steps: int = Field(default=28, ge=1, le=50)
    guidance_scale: float = Field(default=3.5, ge=0.0, le=35.0)


class TrainingInput(BaseModel):
    """fal-ai/flux-lora-fast-training's input schema (provider-contracts.md section 1), as enforced here."""

    model_config = ConfigDict(extra="ignore")
    images_data_url: str = Field(min_length=1)
    trigger_word: str | None = None
    steps: int = Field(default=1000, ge=1, le=10000)
    create_masks: bool = True
    is_style: bool = False


@dataclass(frozen=True)
class _Render:
    """What one image job renders: the source reference's bytes and the output's shape."""

    source: bytes
    prompt: str
    image_size: NamedSize | ImageSize
    seed: int
    output_format: Literal["jpeg", "png"]
    origin: str


@dataclass
class _Job:
    request_id: str
    model: str
    base_url: str
    render_input: _Render | None  # None: a training
    queue_position: int
    failure: Failure | None
    state: Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED", "CANCELLED"] = "IN_QUEUE"
    render: asyncio.Task[tuple[bytes, str, int, int]] | None = None
    started: float = 0.0
    inference_s: float = 0.0
    output: dict[str, Any] | None = None
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # name: (bytes, content type)
    transform: str = ""
    reference: bytes = b""  # a training's first image
    steps: int = 0
    polls_in_progress: int = 0
    webhook: str | None = None  # the submit's `fal_webhook`

    def urls(self) -> dict[str, str]:
        app = "/".join(self.model.split("/")[:2])  # fal's request URLs drop a model's subpath
        base = f"{self.base_url}/{app}/requests/{self.request_id}"
        return {"response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}


@dataclass
class FalFake:
    """The fake's state, scripts and counters; `app` is the ASGI app to serve (see infra.fakes.server)."""

    api_key: str = field(repr=False)
    queue_position: int = 2  # every request starts there and moves up one place per status poll
    training_polls: int = 3  # status polls a training spends IN_PROGRESS, at the least...
    training_s: float = 0.0  # ...and seconds (settable: make it slow enough for a restart to land)
    submits: int = field(default=0, init=False)  # every POST to a model, whatever it was answered
    training_submits: int = field(default=0, init=False)  # every POST to the training endpoint
    training_accepted: int = field(default=0, init=False)
    accepted: int = field(default=0, init=False)
    status_polls: int = field(default=0, init=False)
    cancels: int = field(default=0, init=False)
    unauthorized: int = field(default=0, init=False)
    in_flight: int = field(default=0, init=False)  # accepted, neither completed nor cancelled
    max_in_flight: int = field(default=0, init=False)
    received: list[InstantCharacterInput] = field(default_factory=list, init=False, repr=False)  # accepted inputs
    received_trainings: list[TrainingInput] = field(default_factory=list, init=False, repr=False)
    received_flux_lora: list[FluxLoraInput] = field(default_factory=list, init=False, repr=False)
    received_redux: list[ReduxInput] = field(default_factory=list, init=False, repr=False)
    outputs: list[dict[str, Any]] = field(default_factory=list, init=False, repr=False)  # results served
    webhook_user_id: str = "fake-fal-user"  # X-Fal-Webhook-User-Id
    webhook_tick_s: float = 0.05  # how often a request with a webhook moves on without being polled
    webhook_retries: int = 0  # deliveries tried again (after `webhook_retry_s`) when not answered 2xx
    webhook_retry_s: float = 0.2
    webhook_key: EccKey = field(default_factory=lambda: ECC.generate(curve="Ed25519"), repr=False)
    webhook_urls: list[str] = field(default_factory=list, init=False)  # each accepted submit's fal_webhook
    webhooks_sent: list[tuple[str, str, int | None]] = field(default_factory=list, init=False)  # url, request, HTTP
    _faults: FaultScript = field(default_factory=FaultScript, init=False, repr=False)
    _failures: deque[Failure] = field(default_factory=deque, init=False, repr=False)
    _jobs: dict[str, _Job] = field(default_factory=dict, init=False, repr=False)
    _loras: dict[str, bytes] = field(default_factory=dict, init=False, repr=False)  # LoRA URL: first reference
    _tampers: deque[WebhookTamper] = field(default_factory=deque, init=False, repr=False)
    _background: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)  # drivers, deliveries
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def inject(self, endpoint: Endpoint, *faults: Fault) -> None:
        """The next requests to `endpoint` meet these faults, one each, in order."""
        self._faults.inject(endpoint, *faults)

    def fail_next(self, count: int = 1, failure: Failure | None = None) -> None:
        """The next `count` accepted requests end COMPLETED with an error."""
        with self._lock:
            self._failures.extend([failure or Failure()] * count)

    def tamper_webhooks(self, *tampers: WebhookTamper) -> None:
        """The next webhook deliveries, one each: signed with another key, or a timestamp an hour old."""
        with self._lock:
            self._tampers.extend(tampers)

    def close(self, timeout_s: float = 5.0) -> None:
        """From any thread: await the deliveries still under way (up to `timeout_s`), then cancel what is left.

        Call it before stopping the server; a server stopped without it cancels them with its loop.
        """
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return
        if _running_loop() is loop:
            raise RuntimeError("FalFake.close() from the fake's own loop would block it: await drain() instead")
        asyncio.run_coroutine_threadsafe(self.drain(timeout_s), loop).result(timeout_s + 5.0)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """On the fake's loop: wait for background work (drivers, deliveries) up to `timeout_s`, then cancel it."""
        deadline = time.monotonic() + timeout_s
        while self._background and time.monotonic() < deadline:  # a driver that finishes starts a delivery
            await asyncio.wait(set(self._background), timeout=deadline - time.monotonic())
        late = set(self._background)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    @property
    def app(self) -> ASGIApp:
        routes = [
            Route("/files/{request_id}/{file_name}", self._file, methods=["GET"]),
            Route(JWKS_PATH, self._jwks, methods=["GET"]),
        ]
        models = ((MODEL, self._submit), (FLUX_LORA_MODEL, self._submit), (TRAINING_MODEL, self._train))
        for model, submit in (*models, (REDUX_MODEL, self._submit)):
            app = "/".join(model.split("/")[:2])
            routes += [
                Route(f"/{model}", submit, methods=["POST"]),
                Route(f"/{app}/requests/{{request_id}}/status", self._status, methods=["GET"]),
                Route(f"/{app}/requests/{{request_id}}", self._result, methods=["GET"]),
                Route(f"/{app}/requests/{{request_id}}/cancel", self._cancel, methods=["PUT"]),
            ]
        return _marked(Starlette(routes=routes))

    # --- endpoints ---------------------------------------------------------------------------------

    async def _submit(self, request: Request) -> Response:
        """An image model's submit: instant-character (the reference inline) or flux-lora (a LoRA of ours)."""
        self.submits += 1
        body, refused = await self._body(request, "submit")
        if body is None:
            return refused
        model = request.url.path.strip("/")
        render: _Render
        schemas: dict[str, type[BaseModel]] = {MODEL: InstantCharacterInput, REDUX_MODEL: ReduxInput}
        schema = schemas.get(model, FluxLoraInput)
        try:
            arguments: BaseModel = schema.model_validate(body)
        except ValidationError as error:
            return _detail(422, [_fastapi_error(item) for item in error.errors()])
        if isinstance(arguments, InstantCharacterInput | ReduxInput):
            if not arguments.image_url.startswith("data:"):
                msg = "File download error: this fake reaches no network; send a base64 data: URI"
                return _detail(422, [{"loc": ["body", "image_url"], "msg": msg, "type": "file_download_error"}])
            header, _, encoded = arguments.image_url.partition(",")
            try:
                source = base64.b64decode(encoded, validate=True) if header.endswith(";base64") else b""
            except binascii.Error:
                source = b"not base64"
            prompt = arguments.prompt if isinstance(arguments, InstantCharacterInput) else ""
            seed = _seed(arguments) if isinstance(arguments, InstantCharacterInput) else (arguments.seed or 0)
            render = _Render(source, prompt, arguments.image_size, seed, arguments.output_format, "image_url")
            if isinstance(arguments, ReduxInput):
                self.received_redux.append(arguments)
            else:
                self.received.append(arguments)
        else:
            assert isinstance(arguments, FluxLoraInput)
            reference = self._loras.get(arguments.loras[0].path)
            if reference is None:
                msg = "File download error: not a LoRA this fake trained (send a diffusers_lora_file.url it issued)"
                return _detail(422, [{"loc": ["body", "loras", 0, "path"], "msg": msg, "type": "file_download_error"}])
            render = _Render(
                reference, arguments.prompt, arguments.image_size, _seed(arguments), arguments.output_format, "LoRA"
            )
            self.received_flux_lora.append(arguments)
        return self._accept(request, model, render)[1]

    async def _train(self, request: Request) -> Response:
        """A training's submit: the zip of references decoded now; it completes over several polls."""
        self.submits += 1
        self.training_submits += 1
        body, refused = await self._body(request, "train")
        if body is None:
            return refused
        try:
            arguments = TrainingInput.model_validate(body)
        except ValidationError as error:
            return _detail(422, [_fastapi_error(item) for item in error.errors()])
        try:
            reference = _first_zipped_image(arguments.images_data_url)
        except ValueError as error:
            loc = ["body", "images_data_url"]
            return _detail(422, [{"loc": loc, "msg": f"Image load error: {error}", "type": "image_load_error"}])
        self.received_trainings.append(arguments)
        self.training_accepted += 1
        job, response = self._accept(request, TRAINING_MODEL, None)
        job.reference, job.steps = reference, arguments.steps
        return response

    def _accept(self, request: Request, model: str, render: _Render | None) -> tuple[_Job, JSONResponse]:
        with self._lock:
            failure = self._failures.popleft() if self._failures else None
        request_id = str(uuid.uuid4())
        job = _Job(request_id, model, str(request.base_url).rstrip("/"), render, self.queue_position, failure)
        job.webhook = request.query_params.get("fal_webhook") or None
        self._jobs[request_id] = job
        self.accepted += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if job.webhook is not None:
            self.webhook_urls.append(job.webhook)
            self._spawn(self._drive(job))
        return job, JSONResponse(
            {"request_id": request_id, **job.urls(), "status": "IN_QUEUE", "queue_position": job.queue_position}
        )

    async def _status(self, request: Request) -> Response:
        self.status_polls += 1
        job, refused = await self._job(request, "status")
        if job is None:
            return refused
        self._advance(job)
        body: dict[str, Any] = {"status": "COMPLETED" if job.state == "CANCELLED" else job.state, **job.urls()}
        body["request_id"] = job.request_id
        if job.state == "IN_QUEUE":
            body["queue_position"] = job.queue_position
        if job.render_input is None and job.state == "IN_PROGRESS" and request.query_params.get("logs") == "1":
            done = min(job.steps, job.steps * job.polls_in_progress // max(1, self.training_polls + 1))
            body["logs"] = [
                {"message": "Preprocessing images (fake)", "level": "INFO", "source": "user", "timestamp": _now()},
                {
                    "message": f"Training step {done}/{job.steps} (fake)",
                    "level": "INFO",
                    "source": "user",
                    "timestamp": _now(),
                },
            ]
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

    async def _jwks(self, request: Request) -> Response:
        """fal's public webhook keys (no key needed: fal publishes them); here, this instance's one key."""
        faulted = await self._fault("jwks")
        return faulted if faulted is not None else JSONResponse(jwks_document(self.webhook_key))

    async def _file(self, request: Request) -> Response:
        faulted = await self._fault("file")
        if faulted is not None:
            return faulted
        job = self._jobs.get(request.path_params["request_id"])
        served = None if job is None else job.files.get(request.path_params["file_name"])
        if job is None or served is None:
            return _detail(404, "File not found")
        headers = {FAKE_TRANSFORM_HEADER: job.transform.encode("ascii", "replace").decode("ascii")}
        return Response(served[0], media_type=served[1], headers=headers if job.transform else None)

    # --- plumbing ----------------------------------------------------------------------------------

    async def _gate(self, request: Request, endpoint: Endpoint) -> Response | None:
        """The key first (401), then any scripted fault for this endpoint."""
        if request.headers.get("Authorization") != f"Key {self.api_key}":
            self.unauthorized += 1
            return _detail(401, "Unauthorized: send 'Authorization: Key <FAL_KEY>' with a valid key")
        return await self._fault(endpoint)

    async def _fault(self, endpoint: Endpoint) -> Response | None:
        return await self._faults.meet(
            endpoint, lambda fault, headers: _detail(fault.status or 500, fault.detail, headers)
        )

    async def _body(self, request: Request, endpoint: Endpoint) -> tuple[Any, Response]:
        """The key and faults, then the JSON body (None and the answer when refused)."""
        refused = await self._gate(request, endpoint)
        if refused is not None:
            return None, refused
        try:
            return await request.json(), Response()
        except ValueError:
            return None, _detail(422, [{"loc": ["body"], "msg": "Invalid JSON body", "type": "json_invalid"}])

    async def _job(self, request: Request, endpoint: Endpoint) -> tuple[_Job | None, Response]:
        """The request's job, under the URL of its own model (`{owner}/{app}`: a wrong app is a 404)."""
        refused = await self._gate(request, endpoint)
        if refused is not None:
            return None, refused
        job = self._jobs.get(request.path_params["request_id"])
        app = "/".join(job.model.split("/")[:2]) if job is not None else ""
        if job is None or not request.url.path.startswith(f"/{app}/requests/"):
            return None, _detail(404, "Request not found")
        return job, Response()

    def _advance(self, job: _Job) -> None:
        """One step of a request's life, on a status poll (or a tick, for one with a webhook)."""
        if job.state == "IN_QUEUE":
            if job.queue_position > 0:
                job.queue_position -= 1
            else:
                job.state, job.started = "IN_PROGRESS", time.monotonic()
                if job.render_input is not None:
                    job.render = asyncio.create_task(asyncio.to_thread(_render, job.render_input))
        elif job.state == "IN_PROGRESS" and job.render_input is None:
            job.polls_in_progress += 1
            if job.polls_in_progress > self.training_polls and time.monotonic() - job.started >= self.training_s:
                self._complete_training(job)
        elif job.state == "IN_PROGRESS" and job.render is not None and job.render.done():
            self._complete(job)

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
            self._notify(job)
            return
        image, job.transform, width, height = job.render.result()
        arguments = job.render_input
        assert arguments is not None
        file_name = f"{FILE_PREFIX}{job.request_id}.{'png' if arguments.output_format == 'png' else 'jpg'}"
        job.files[file_name] = (image, f"image/{arguments.output_format}")
        job.output = {
            "images": [{**self._served(job, file_name), "width": width, "height": height}],
            "seed": arguments.seed,
            **({"prompt": arguments.prompt} if arguments.prompt else {}),
            "has_nsfw_concepts": [False],
            "timings": {"inference": job.inference_s},
        }
        self.outputs.append(job.output)
        self._notify(job)

    def _complete_training(self, job: _Job) -> None:
        job.state = "COMPLETED"
        job.inference_s = round(time.monotonic() - job.started, 3)
        self.in_flight -= 1
        if job.failure is not None:
            self._notify(job)
            return
        lora = f"{FILE_PREFIX}{job.request_id}-lora.safetensors"
        config = f"{FILE_PREFIX}{job.request_id}-config.json"
        job.files[lora] = (b"fake LoRA weights, not a model: " + job.request_id.encode(), "application/octet-stream")
        job.files[config] = (json.dumps({"fake": True, "steps": job.steps}).encode(), "application/json")
        job.output = {"diffusers_lora_file": self._served(job, lora), "config_file": self._served(job, config)}
        self._loras[job.output["diffusers_lora_file"]["url"]] = job.reference
        self.outputs.append(job.output)
        self._notify(job)

    # --- webhooks ----------------------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Background work on the server's loop, kept until done (so `close` can await or cancel it)."""
        self._loop = asyncio.get_running_loop()
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _drive(self, job: _Job) -> None:
        """A request with a webhook finishes without being polled, as on fal: one step per tick."""
        while job.state in ("IN_QUEUE", "IN_PROGRESS"):
            await asyncio.sleep(self.webhook_tick_s)
            self._advance(job)

    def _notify(self, job: _Job) -> None:
        """The documented webhook body for a finished request, sent in the background (once per request)."""
        if job.webhook is None:
            return
        body: dict[str, Any] = {"request_id": job.request_id, "gateway_request_id": job.request_id}
        if job.failure is None:
            body.update(status="OK", payload=job.output)
        else:
            body.update(
                status="ERROR",
                error=f"Invalid status code: {job.failure.result_status}",
                payload={"detail": job.failure.detail},
            )
        with self._lock:
            tamper = self._tampers.popleft() if self._tampers else None
        self._spawn(self._deliver(job.webhook, job.request_id, json.dumps(body).encode(), tamper))

    async def _deliver(self, url: str, request_id: str, body: bytes, tamper: WebhookTamper | None) -> None:
        if not _loopback(url):
            log.warning("fake fal: webhook for %s not sent: %r is not a loopback URL", request_id, url[:200])
            self.webhooks_sent.append((url, request_id, None))
            return
        for attempt in range(self.webhook_retries + 1):
            if attempt:
                await asyncio.sleep(self.webhook_retry_s)
            timestamp = int(time.time()) - (3600 if tamper == "stale_timestamp" else 0)
            key = ECC.generate(curve="Ed25519") if tamper == "bad_signature" else self.webhook_key
            headers = {
                "content-type": "application/json",
                "user-agent": "fake-fal-webhook (Likeness test fake)",
                **sign_fal_webhook(
                    key, request_id=request_id, user_id=self.webhook_user_id, timestamp=timestamp, body=body
                ),
            }
            status: int | None = None
            try:
                async with httpx.AsyncClient(timeout=5.0, follow_redirects=False, trust_env=False) as client:
                    status = (await client.post(url, content=body, headers=headers)).status_code
            except httpx.HTTPError as error:
                log.info("fake fal: webhook for %s to %s failed: %s", request_id, url[:200], type(error).__name__)
            self.webhooks_sent.append((url, request_id, status))
            if status is not None and 200 <= status < 300:
                return

    @staticmethod
    def _served(job: _Job, file_name: str) -> dict[str, Any]:
        data, content_type = job.files[file_name]
        url = f"{job.base_url}/files/{job.request_id}/{file_name}"
        return {"url": url, "content_type": content_type, "file_name": file_name, "file_size": len(data)}


def _loopback(url: str) -> bool:
    """Whether `url` is http(s) on this machine: 127.0.0.0/8, ::1 or localhost (the fake calls nothing else)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return False
    host = parsed.host
    if parsed.scheme not in ("http", "https") or not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _seed(arguments: _ImageInput) -> int:
    if arguments.seed is not None:
        return arguments.seed
    return int.from_bytes(hashlib.sha256(arguments.prompt.encode()).digest()[:4], "big")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _first_zipped_image(url: str) -> bytes:
    """The first image (by name) of a `data:` URI zip archive. Raises ValueError when there is none."""
    header, _, encoded = url.partition(",")
    if not url.startswith("data:") or not header.endswith(";base64"):
        raise ValueError("this fake reaches no network; send the zip as a base64 data: URI")
    try:
        archive = zipfile.ZipFile(io.BytesIO(base64.b64decode(encoded, validate=True)))
        names = sorted(name for name in archive.namelist() if not name.endswith((".txt", "/")))
        images = [data for data in (archive.read(name) for name in names) if _is_image(data)]
    except (binascii.Error, zipfile.BadZipFile) as error:
        raise ValueError(f"images_data_url is not a zip archive ({error})") from None
    if not images:
        raise ValueError(f"the zip archive holds no image ({len(names)} other files)")
    return images[0]


def _is_image(data: bytes) -> bool:
    try:
        sim_images.decode_image(data)
    except ValueError:
        return False
    return True


def _render(job: _Render) -> tuple[bytes, str, int, int]:
    """The reference transformed for the prompt's scenario, at the requested size (CPU work: a thread)."""
    source = sim_images.decode_image(job.source)
    size = job.image_size
    width, height = NAMED_SIZES[size] if isinstance(size, str) else (size.width, size.height)
    scenario = sim_images.scenario_for(None, job.prompt)
    shot = sim_images.render(source, scenario, (width, height), np.random.default_rng(job.seed), mirror=True)
    transform = f"{scenario} from the {job.origin} reference: {shot.transform}; {width}x{height}"
    if job.output_format == "png":
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
