"""A fake of Replicate's HTTP API (trainings, predictions, webhooks), on loopback: a test and demo tool.

It speaks the contract in provider-contracts.md section 3: `Authorization: Bearer <token>` (401
otherwise); `POST /v1/models/{owner}/{model}/versions/{id}/trainings` with a `destination` that must
be one of `destinations` (404 with Replicate's message otherwise) and an `input_images` zip data URI
(422 when it holds no image); `GET /v1/trainings/{id}` runs `starting`, then `processing` with
ai-toolkit-style tqdm logs for `training_polls` polls and at least `training_s` seconds, then
`succeeded` with `output.version` = "<destination>:<hash>"; `POST /v1/predictions` on a version this
fake trained (422 "Invalid version or not permitted" otherwise) renders the training's first
reference as the offline simulator does (`sim_images`), `GET` runs it `starting`, `processing`,
`succeeded` with `output` = [a URL served here]; `Prefer: wait[=N]` holds the create open until done
(at most N s); `POST .../cancel` cancels. Validation failures answer 422 in Replicate's shape
(`{title, status, detail, invalid_fields}`). Faults are scripted per endpoint (`inject`): 429 with
Retry-After, 5xx, slow answers. `fail_next` makes the next job end `failed`; `hold_predictions`
keeps predictions `processing` until cancelled.

Webhooks: a job created with `webhook` gets a POST of its object on start and on completion (as its
`webhook_events_filter` allows), signed as Replicate signs them with `webhook_secret` (served at
`GET /v1/webhooks/default/secret`); `tamper_webhooks` makes the next deliveries carry a bad
signature or a stale timestamp. Nothing here is Replicate's output, and every answer says so: the
`X-Likeness-Fake: replicate` header, file names starting "fake-replicate-".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import io
import json
import secrets
import threading
import time
import uuid
import zipfile
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infra.fakes.faults import Fault, FaultScript
from services.provider_adapter.providers import sim_images
from services.provider_adapter.providers.http import FAKE_MARKER_HEADER, FAKE_TRANSFORM_HEADER

FILE_PREFIX: Final = "fake-replicate-"
TRAINER: Final = "ostris/flux-dev-lora-trainer"
Endpoint = Literal["train", "training", "predict", "prediction", "cancel", "file"]
Status = Literal["starting", "processing", "succeeded", "failed", "canceled"]
WebhookTamper = Literal["bad_signature", "stale"]
# Flux's about-1-megapixel sizes per aspect ratio (multiples of 16), as the trained version renders them.
SIZES: Final[Mapping[str, tuple[int, int]]] = {
    "1:1": (1024, 1024),
    "16:9": (1344, 768),
    "9:16": (768, 1344),
    "4:3": (1152, 896),
    "3:4": (896, 1152),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "4:5": (896, 1120),
    "5:4": (1120, 896),
    "21:9": (1536, 640),
    "9:21": (640, 1536),
}


class TrainingInput(BaseModel):
    """ostris/flux-dev-lora-trainer's input, as far as this fake enforces it (the trainer's API page)."""

    model_config = ConfigDict(extra="ignore")
    input_images: str = Field(min_length=1)
    trigger_word: str = "TOK"
    steps: int = Field(default=1000, ge=3, le=6000)
    autocaption: bool = True
    lora_rank: int = Field(default=16, ge=1, le=128)


class TrainingBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    destination: str = Field(min_length=3)
    input: dict[str, Any]
    webhook: str | None = None
    webhook_events_filter: list[Literal["start", "output", "logs", "completed"]] | None = None


class PredictionInput(BaseModel):
    """A trained Flux LoRA version's input, as this fake enforces it (the trainer's predict schema)."""

    model_config = ConfigDict(extra="ignore")
    prompt: str = Field(min_length=1)
    aspect_ratio: Literal["1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21"] = "1:1"
    num_outputs: int = Field(default=1, ge=1, le=4)
    lora_scale: float = Field(default=1.0, ge=-1.0, le=2.0)
    num_inference_steps: int = Field(default=28, ge=1, le=50)
    guidance_scale: float = Field(default=3.5, ge=0.0, le=10.0)
    seed: int | None = None
    output_format: Literal["webp", "jpg", "png"] = "webp"
    model: Literal["dev", "schnell"] = "dev"


class PredictionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(min_length=1)
    input: dict[str, Any]
    webhook: str | None = None
    webhook_events_filter: list[Literal["start", "output", "logs", "completed"]] | None = None
    stream: bool = False


@dataclass
class _Job:
    id: str
    kind: Literal["training", "prediction"]
    base_url: str
    input: dict[str, Any]
    version: str
    webhook: str | None
    events: list[str]
    failure: str | None
    status: Status = "starting"
    polls: int = 0
    created_at: str = ""
    started: float = 0.0
    started_at: str | None = None
    completed_at: str | None = None
    predict_time: float | None = None
    logs: str = ""
    output: Any = None
    destination: str | None = None
    reference: bytes = b""
    steps: int = 0
    render: asyncio.Task[tuple[bytes, str]] | None = None
    transform: str = ""

    def body(self) -> dict[str, Any]:
        kind = "trainings" if self.kind == "training" else "predictions"
        url = f"{self.base_url}/v1/{kind}/{self.id}"
        body: dict[str, Any] = {
            "id": self.id,
            "model": TRAINER if self.kind == "training" else (self.destination or ""),
            "version": self.version,
            "input": {k: v for k, v in self.input.items() if k != "input_images"},
            "status": self.status,
            "logs": self.logs,
            "error": self.failure if self.status == "failed" else None,
            "output": self.output,
            "metrics": {} if self.predict_time is None else {"predict_time": self.predict_time},
            "created_at": self.created_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "urls": {"get": url, "cancel": f"{url}/cancel"},
        }
        if self.kind == "training":
            body["destination"] = self.destination
        return body


@dataclass
class ReplicateFake:
    """The fake's state, scripts and counters; `app` is the ASGI app to serve (see infra.fakes.server)."""

    api_token: str = field(repr=False)
    destinations: set[str] = field(default_factory=lambda: {"likeness/characters"})
    starting_polls: int = 1  # GETs a job spends `starting`
    training_polls: int = 3  # GETs a training spends `processing`, at the least...
    training_s: float = 0.0  # ...and seconds (settable: make it slow enough for a restart to land)
    hold_predictions: bool = False  # predictions stay `processing` until cancelled
    webhook_secret: str = field(
        default_factory=lambda: "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(), repr=False
    )
    training_submits: int = field(default=0, init=False)  # every POST to the trainings endpoint
    training_accepted: int = field(default=0, init=False)
    prediction_submits: int = field(default=0, init=False)
    predictions_accepted: int = field(default=0, init=False)
    polls: int = field(default=0, init=False)
    cancels: int = field(default=0, init=False)
    unauthorized: int = field(default=0, init=False)
    received_trainings: list[TrainingBody] = field(default_factory=list, init=False, repr=False)
    received_predictions: list[PredictionBody] = field(default_factory=list, init=False, repr=False)
    webhooks_sent: list[tuple[str, str, int | None]] = field(default_factory=list, init=False)  # url, event, HTTP
    _faults: FaultScript = field(default_factory=FaultScript, init=False, repr=False)
    _failures: deque[str] = field(default_factory=deque, init=False, repr=False)
    _tampers: deque[WebhookTamper] = field(default_factory=deque, init=False, repr=False)
    _jobs: dict[str, _Job] = field(default_factory=dict, init=False, repr=False)
    _versions: dict[str, bytes] = field(default_factory=dict, init=False, repr=False)  # version id: reference
    _files: dict[str, tuple[bytes, str, str]] = field(default_factory=dict, init=False, repr=False)
    _deliveries: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def inject(self, endpoint: Endpoint, *faults: Fault) -> None:
        """The next requests to `endpoint` meet these faults, one each, in order."""
        self._faults.inject(endpoint, *faults)

    def fail_next(self, count: int = 1, error: str = "CUDA out of memory (fake)") -> None:
        """The next `count` accepted trainings or predictions end `failed` with `error`."""
        with self._lock:
            self._failures.extend([error] * count)

    def tamper_webhooks(self, *tampers: WebhookTamper) -> None:
        """The next webhook deliveries, one each: a signature made with another key, or a stale timestamp."""
        with self._lock:
            self._tampers.extend(tampers)

    def job_ids(self, kind: Literal["training", "prediction"]) -> list[str]:
        """The ids of the trainings or predictions accepted, oldest first."""
        return [job.id for job in self._jobs.values() if job.kind == kind]

    def status_of(self, job_id: str) -> str | None:
        job = self._jobs.get(job_id)
        return None if job is None else job.status

    @property
    def app(self) -> ASGIApp:
        routes = [
            Route("/v1/models/{owner}/{model}/versions/{version}/trainings", self._train, methods=["POST"]),
            Route("/v1/trainings/{job_id}", self._get, methods=["GET"]),
            Route("/v1/trainings/{job_id}/cancel", self._cancel, methods=["POST"]),
            Route("/v1/predictions", self._predict, methods=["POST"]),
            Route("/v1/predictions/{job_id}", self._get, methods=["GET"]),
            Route("/v1/predictions/{job_id}/cancel", self._cancel, methods=["POST"]),
            Route("/v1/webhooks/default/secret", self._secret, methods=["GET"]),
            Route("/files/{name}", self._file, methods=["GET"]),
        ]
        return _marked(Starlette(routes=routes))

    # --- endpoints ---------------------------------------------------------------------------------

    async def _train(self, request: Request) -> Response:
        self.training_submits += 1
        body, refused = await self._body(request, "train")
        if body is None:
            return refused
        path = request.path_params
        if f"{path['owner']}/{path['model']}" != TRAINER:
            return _problem(404, "Not found", "The requested model does not exist or is not trainable (fake)")
        try:
            training = TrainingBody.model_validate(body)
        except ValidationError as error:
            return _invalid(error, prefix="")
        try:
            arguments = TrainingInput.model_validate(training.input)
        except ValidationError as error:
            return _invalid(error, prefix="input.")
        if training.destination not in self.destinations:
            return _problem(404, "Not found", "The specified training destination does not exist")
        try:
            reference = first_zipped_image(arguments.input_images)
        except ValueError as error:
            return _problem(422, "Input validation failed", f"- input.input_images: {error}")
        job = self._accept("training", request, training.input, path["version"], training.webhook)
        job.events = list(training.webhook_events_filter or ["start", "output", "logs", "completed"])
        job.destination, job.reference, job.steps = training.destination, reference, arguments.steps
        self.training_accepted += 1
        self.received_trainings.append(training)
        self._notify(job, "start")
        return JSONResponse(job.body(), status_code=201)

    async def _predict(self, request: Request) -> Response:
        self.prediction_submits += 1
        body, refused = await self._body(request, "predict")
        if body is None:
            return refused
        try:
            prediction = PredictionBody.model_validate(body)
        except ValidationError as error:
            return _invalid(error, prefix="")
        try:
            arguments = PredictionInput.model_validate(prediction.input)
        except ValidationError as error:
            return _invalid(error, prefix="input.")
        version = prediction.version.rpartition(":")[2]
        reference = self._versions.get(version)
        if reference is None:
            return _problem(422, "Invalid version or not permitted", "The specified version does not exist (fake)")
        job = self._accept("prediction", request, prediction.input, version, prediction.webhook)
        job.events = list(prediction.webhook_events_filter or ["start", "output", "logs", "completed"])
        job.destination = next((j.destination for j in self._jobs.values() if j.version == version), None)
        job.status, job.started, job.started_at = "processing", time.monotonic(), _now()
        job.render = asyncio.create_task(asyncio.to_thread(_render, reference, arguments))
        self.predictions_accepted += 1
        self.received_predictions.append(prediction)
        self._notify(job, "start")
        wait = _prefer_wait(request.headers.get("Prefer"))
        if wait and not self.hold_predictions and job.failure is None:
            await asyncio.wait({job.render}, timeout=wait)
            self._advance(job)
        elif job.failure is None:
            job.status = "starting"
        return JSONResponse(job.body(), status_code=201)

    async def _get(self, request: Request) -> Response:
        self.polls += 1
        kind = "training" if request.url.path.startswith("/v1/trainings/") else "prediction"
        job, refused = await self._job(request, kind)
        if job is None:
            return refused
        job.polls += 1
        self._advance(job)
        return JSONResponse(job.body())

    async def _cancel(self, request: Request) -> Response:
        self.cancels += 1
        kind = "training" if request.url.path.startswith("/v1/trainings/") else "prediction"
        job, refused = await self._job(request, kind, endpoint="cancel")
        if job is None:
            return refused
        if job.status in ("starting", "processing"):
            job.status, job.completed_at = "canceled", _now()
            if job.render is not None:
                job.render.cancel()
            self._notify(job, "completed")
        return JSONResponse(job.body())

    async def _secret(self, request: Request) -> Response:
        refused = await self._gate(request, None)
        return refused if refused is not None else JSONResponse({"key": self.webhook_secret})

    async def _file(self, request: Request) -> Response:
        faulted = await self._fault("file")
        if faulted is not None:
            return faulted
        served = self._files.get(request.path_params["name"])
        if served is None:
            return _problem(404, "Not found", "File not found")
        data, content_type, transform = served
        headers = {FAKE_TRANSFORM_HEADER: transform.encode("ascii", "replace").decode("ascii")}
        return Response(data, media_type=content_type, headers=headers)

    # --- state -------------------------------------------------------------------------------------

    def _accept(
        self,
        kind: Literal["training", "prediction"],
        request: Request,
        arguments: dict[str, Any],
        version: str,
        webhook: str | None,
    ) -> _Job:
        with self._lock:
            failure = self._failures.popleft() if self._failures else None
        base_url = f"{request.url.scheme}://{request.url.netloc}"
        job_id = uuid.uuid4().hex[:26]
        job = _Job(job_id, kind, base_url, arguments, version, webhook, [], failure, created_at=_now())
        self._jobs[job_id] = job
        return job

    def _advance(self, job: _Job) -> None:
        """One step of the job's life, on a poll: starting -> processing -> succeeded (or failed)."""
        if job.status not in ("starting", "processing"):
            return
        if job.status == "starting" and job.kind == "training":
            if job.polls > self.starting_polls:
                job.status, job.started, job.started_at = "processing", time.monotonic(), _now()
                job.polls = 0
            return
        if job.kind == "training":
            done = min(job.steps, job.steps * job.polls // max(1, self.training_polls + 1))
            percent = 100 * done // max(1, job.steps)
            job.logs = (
                "Preprocessing images (fake)\nLoading checkpoint shards: 100%|##########| 3/3 [00:01<00:00]\n"
                f"flux_train_replicate: {percent:3d}%|####      | {done}/{job.steps} [00:10<00:30, 1.02s/it]\n"
            )
            if job.failure is None and (
                job.polls <= self.training_polls or time.monotonic() - job.started < self.training_s
            ):
                return
            self._finish(job)
            return
        job.status = "processing"
        if job.failure is not None or (job.render is not None and job.render.done() and not self.hold_predictions):
            self._finish(job)

    def _finish(self, job: _Job) -> None:
        job.completed_at = _now()
        job.predict_time = round(time.monotonic() - job.started, 3)
        if job.failure is not None:
            job.status = "failed"
        elif job.kind == "training":
            version = hashlib.sha256(f"{job.id}:{job.destination}".encode()).hexdigest()
            weights = f"{FILE_PREFIX}{job.id}-trained_model.tar"
            self._files[weights] = (b"fake LoRA weights, not a model", "application/x-tar", "")
            job.output = {"version": f"{job.destination}:{version}", "weights": f"{job.base_url}/files/{weights}"}
            self._versions[version] = job.reference
            job.status = "succeeded"
        else:
            assert job.render is not None
            error = job.render.exception()
            if error is not None:
                job.status, job.failure = "failed", f"{type(error).__name__}: {error}"
            else:
                image, job.transform = job.render.result()
                name = f"{FILE_PREFIX}{job.id}.png"
                self._files[name] = (image, "image/png", job.transform)
                job.output = [f"{job.base_url}/files/{name}"]
                job.status = "succeeded"
        self._notify(job, "completed")

    # --- webhooks ----------------------------------------------------------------------------------

    def _notify(self, job: _Job, event: Literal["start", "completed"]) -> None:
        if job.webhook is None or event not in job.events:
            return
        with self._lock:
            tamper = self._tampers.popleft() if self._tampers else None
        body = json.dumps(job.body()).encode()
        task = asyncio.create_task(self._deliver(job.webhook, event, body, tamper))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, url: str, event: str, body: bytes, tamper: WebhookTamper | None) -> None:
        webhook_id = f"msg_{uuid.uuid4().hex}"
        timestamp = int(time.time()) - (3600 if tamper == "stale" else 0)
        secret = self.webhook_secret if tamper != "bad_signature" else "whsec_" + base64.b64encode(b"x" * 24).decode()
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, webhook_id, timestamp, body),
        }
        status: int | None = None
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                status = (await client.post(url, content=body, headers=headers)).status_code
        except httpx.HTTPError:
            status = None
        self.webhooks_sent.append((url, event, status))

    # --- plumbing ----------------------------------------------------------------------------------

    async def _gate(self, request: Request, endpoint: Endpoint | None) -> Response | None:
        """The token first (401), then any scripted fault for this endpoint."""
        if request.headers.get("Authorization") != f"Bearer {self.api_token}":
            self.unauthorized += 1
            return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        return await self._fault(endpoint) if endpoint is not None else None

    async def _fault(self, endpoint: Endpoint) -> Response | None:
        return await self._faults.meet(
            endpoint, lambda fault, headers: _problem(fault.status or 500, "Injected fault", fault.detail, headers)
        )

    async def _body(self, request: Request, endpoint: Endpoint) -> tuple[Any, Response]:
        refused = await self._gate(request, endpoint)
        if refused is not None:
            return None, refused
        try:
            return await request.json(), Response()
        except ValueError:
            return None, _problem(400, "Bad request", "The request body is not valid JSON")

    async def _job(
        self, request: Request, kind: str, *, endpoint: Endpoint | None = None
    ) -> tuple[_Job | None, Response]:
        refused = await self._gate(request, endpoint or ("training" if kind == "training" else "prediction"))
        if refused is not None:
            return None, refused
        job = self._jobs.get(request.path_params["job_id"])
        if job is None or job.kind != kind:
            return None, _problem(404, "Not found", f"The requested {kind} does not exist")
        return job, Response()


def first_zipped_image(url: str) -> bytes:
    """The first image (by name) in a base64 `data:` URI zip archive. Raises ValueError when there is none."""
    header, _, encoded = url.partition(",")
    if not url.startswith("data:") or not header.endswith(";base64"):
        raise ValueError("this fake reaches no network; send the zip as a base64 data: URI")
    try:
        archive = zipfile.ZipFile(io.BytesIO(base64.b64decode(encoded, validate=True)))
        names = sorted(name for name in archive.namelist() if not name.endswith((".txt", "/")))
        for name in names:
            data = archive.read(name)
            try:
                sim_images.decode_image(data)
            except ValueError:
                continue
            return data
    except (binascii.Error, zipfile.BadZipFile) as error:
        raise ValueError(f"not a zip archive ({error})") from None
    raise ValueError(f"the zip archive holds no image ({len(names)} other files)")


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """A `webhook-signature` value as Replicate sends it: "v1,<base64 HMAC-SHA256>"."""
    key = base64.b64decode(secret.split("_", 1)[1])
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return f"v1,{base64.b64encode(digest).decode()}"


def _render(reference: bytes, arguments: PredictionInput) -> tuple[bytes, str]:
    """The training's reference transformed for the prompt's scenario (CPU work: a thread)."""
    source = sim_images.decode_image(reference)
    width, height = SIZES[arguments.aspect_ratio]
    seed = (
        arguments.seed
        if arguments.seed is not None
        else int(hashlib.sha256(arguments.prompt.encode()).hexdigest()[:8], 16)
    )
    scenario = sim_images.scenario_for(None, arguments.prompt)
    shot = sim_images.render(source, scenario, (width, height), np.random.default_rng(seed), mirror=True)
    transform = f"{scenario} from the training's first reference: {shot.transform}; {width}x{height}"
    return sim_images.encode_png(shot), transform


def _prefer_wait(header: str | None) -> float:
    """Seconds a `Prefer: wait` or `Prefer: wait=N` asks the create to be held open (0: not asked)."""
    if not header or not header.strip().startswith("wait"):
        return 0.0
    _, _, value = header.partition("=")
    try:
        return min(60.0, max(1.0, float(value))) if value.strip() else 60.0
    except ValueError:
        return 60.0


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


def _invalid(error: ValidationError, *, prefix: str) -> JSONResponse:
    fields = [
        {"type": item["type"], "field": prefix + ".".join(map(str, item["loc"])), "description": item["msg"]}
        for item in error.errors()
    ]
    detail = "".join(f"- {item['field']}: {item['description']}\n" for item in fields)
    return _problem(422, "Input validation failed", detail, invalid_fields=fields)


def _problem(
    status: int,
    title: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """Replicate's RFC 7807 error body."""
    return JSONResponse(
        {"title": title, "status": status, "detail": detail, **extra}, status_code=status, headers=headers
    )


def _marked(app: ASGIApp) -> ASGIApp:
    """Every response, errors included, carries `X-Likeness-Fake: replicate`."""

    async def marked(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (FAKE_MARKER_HEADER.lower().encode(), b"replicate")]
            await send(message)

        await app(scope, receive, send_marked)

    return marked
