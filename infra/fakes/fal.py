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
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import threading
import time
import uuid
import zipfile
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

from infra.fakes.faults import Fault, FaultScript
from services.provider_adapter.providers import sim_images
from services.provider_adapter.providers.fal import MODEL, NAMED_SIZES
from services.provider_adapter.providers.fal_flux_lora import MODEL as FLUX_LORA_MODEL
from services.provider_adapter.providers.fal_flux_lora import TRAINING_MODEL
from services.provider_adapter.providers.fal_redux import MODEL as REDUX_MODEL
from services.provider_adapter.providers.http import FAKE_MARKER_HEADER, FAKE_TRANSFORM_HEADER

FILE_PREFIX: Final = "fake-fal-"
Endpoint = Literal["submit", "train", "status", "result", "cancel", "file"]  # "train": a training's submit
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
    _faults: FaultScript = field(default_factory=FaultScript, init=False, repr=False)
    _failures: deque[Failure] = field(default_factory=deque, init=False, repr=False)
    _jobs: dict[str, _Job] = field(default_factory=dict, init=False, repr=False)
    _loras: dict[str, bytes] = field(default_factory=dict, init=False, repr=False)  # LoRA URL: first reference
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def inject(self, endpoint: Endpoint, *faults: Fault) -> None:
        """The next requests to `endpoint` meet these faults, one each, in order."""
        self._faults.inject(endpoint, *faults)

    def fail_next(self, count: int = 1, failure: Failure | None = None) -> None:
        """The next `count` accepted requests end COMPLETED with an error."""
        with self._lock:
            self._failures.extend([failure or Failure()] * count)

    @property
    def app(self) -> ASGIApp:
        routes = [Route("/files/{request_id}/{file_name}", self._file, methods=["GET"])]
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
        self._jobs[request_id] = job
        self.accepted += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return job, JSONResponse(
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
                if job.render_input is not None:
                    job.render = asyncio.create_task(asyncio.to_thread(_render, job.render_input))
        elif job.state == "IN_PROGRESS" and job.render_input is None:
            job.polls_in_progress += 1
            if job.polls_in_progress > self.training_polls and time.monotonic() - job.started >= self.training_s:
                self._complete_training(job)
        elif job.state == "IN_PROGRESS" and job.render is not None and job.render.done():
            self._complete(job)
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

    def _complete_training(self, job: _Job) -> None:
        job.state = "COMPLETED"
        job.inference_s = round(time.monotonic() - job.started, 3)
        self.in_flight -= 1
        if job.failure is not None:
            return
        lora = f"{FILE_PREFIX}{job.request_id}-lora.safetensors"
        config = f"{FILE_PREFIX}{job.request_id}-config.json"
        job.files[lora] = (b"fake LoRA weights, not a model: " + job.request_id.encode(), "application/octet-stream")
        job.files[config] = (json.dumps({"fake": True, "steps": job.steps}).encode(), "application/json")
        job.output = {"diffusers_lora_file": self._served(job, lora), "config_file": self._served(job, config)}
        self._loras[job.output["diffusers_lora_file"]["url"]] = job.reference
        self.outputs.append(job.output)

    @staticmethod
    def _served(job: _Job, file_name: str) -> dict[str, Any]:
        data, content_type = job.files[file_name]
        url = f"{job.base_url}/files/{job.request_id}/{file_name}"
        return {"url": url, "content_type": content_type, "file_name": file_name, "file_size": len(data)}


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
