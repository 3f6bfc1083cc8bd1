"""A fake of Leonardo.ai's v1 REST API and its S3 init-image uploads, on loopback: a test and demo tool.

It speaks the contract in provider-contracts.md section 4, under `/api/rest/v1` (the real base path):
- `POST /init-image {"extension"}` (Bearer key) answers `{"uploadInitImage": {id, url, fields, key}}`
  with `fields` a JSON *string*; `url` is this server's `/s3-upload`, standing in for S3.
- `POST /s3-upload` takes multipart/form-data with no auth, as S3's presigned POST does: every issued
  field must come back unchanged, then a `file` part holding an image, within 2 minutes (`upload_ttl_s`).
  A request carrying an `Authorization` header is refused (400), and counted in `upload_authorizations`.
- `POST /generations` checks the body (prompt, size, one Character Reference controlnet on an uploaded
  init image of ours) and answers `{"sdGenerationJob": {generationId, apiCreditCost}}`; bad input is a
  400 `{"error", "path": "$", "code"}`, Leonardo's error shape.
- `GET /generations/{id}` answers `{"generations_by_pk": {...}}`: PENDING for `pending_polls` polls,
  then COMPLETE with `generated_images[0].url` served here (or FAILED, by `fail_next`).
- `deliver_webhook` POSTs the `image_generation.complete` callback to a URL with
  `authorization: Bearer <key>`, right or wrong as the test pleases.

The images are real: the uploaded reference is transformed as the offline simulator does
(`sim_images`), so scoring sees the reference person; they are PNGs carrying the simulator's notice
(real Leonardo serves JPEGs from its CDN). Every answer says it is fake: the `X-Likeness-Fake: leonardo`
header, and file names starting "fake-leonardo-". Faults are scripted per endpoint (`inject`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infra.fakes.faults import Fault, FaultScript
from services.provider_adapter.providers import sim_images
from services.provider_adapter.providers.http import FAKE_MARKER_HEADER, FAKE_TRANSFORM_HEADER

API_PREFIX: Final = "/api/rest/v1"
FILE_PREFIX: Final = "fake-leonardo-"
CREDITS_PER_IMAGE: Final = 17  # what this fake reports as apiCreditCost for one image
Endpoint = Literal["init-image", "upload", "generate", "status", "file"]


class Controlnet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    initImageId: str = Field(min_length=1)
    initImageType: Literal["UPLOADED", "GENERATED"]
    preprocessorId: int
    strengthType: Literal["Low", "Mid", "High"] | None = None
    weight: float | None = Field(default=None, ge=0, le=2)


class GenerationInput(BaseModel):
    """The `POST /generations` fields this fake reads (others are ignored, as Leonardo's extras would be)."""

    model_config = ConfigDict(extra="ignore")
    prompt: str = Field(min_length=1, max_length=1500)
    modelId: str | None = None
    negative_prompt: str | None = None
    width: int = Field(default=1024, ge=32, le=1536, multiple_of=8)
    height: int = Field(default=768, ge=32, le=1536, multiple_of=8)
    num_images: int = Field(default=4, ge=1, le=8)
    seed: int | None = Field(default=None, ge=0)
    num_inference_steps: int | None = Field(default=None, ge=10, le=60)
    guidance_scale: int | None = Field(default=None, ge=1, le=20)
    controlnets: list[Controlnet] = Field(default_factory=list)


@dataclass
class _Upload:
    id: str
    fields: dict[str, str]
    issued: float
    image: bytes | None = None


@dataclass
class _Generation:
    id: str
    base_url: str
    arguments: GenerationInput
    source: bytes
    render: asyncio.Task[tuple[bytes, str]] | None = None
    status: Literal["PENDING", "COMPLETE", "FAILED"] = "PENDING"
    polls: int = 0
    failed: bool = False
    file_name: str = ""
    image: bytes = b""
    transform: str = ""

    def body(self) -> dict[str, Any]:
        images = []
        if self.status == "COMPLETE":
            url = f"{self.base_url}/files/{self.id}/{self.file_name}"
            images = [{"id": str(uuid.uuid5(uuid.NAMESPACE_URL, url)), "url": url, "nsfw": False, "likeCount": 0}]
        return {
            "id": self.id,
            "status": self.status,
            "generated_images": images,
            "modelId": self.arguments.modelId,
            "prompt": self.arguments.prompt,
            "seed": self.arguments.seed,
            "imageWidth": self.arguments.width,
            "imageHeight": self.arguments.height,
        }


@dataclass
class LeonardoFake:
    """The fake's state, scripts and counters; `app` is the ASGI app to serve (see infra.fakes.server)."""

    api_key: str = field(repr=False)
    pending_polls: int = 2  # status polls a generation answers PENDING before it can complete
    upload_ttl_s: float = 120.0  # Leonardo: upload within 2 minutes of the presign
    presigns: int = field(default=0, init=False)  # every POST /init-image, whatever it was answered
    uploads: int = field(default=0, init=False)  # uploads accepted
    upload_attempts: int = field(default=0, init=False)  # every POST to the upload URL
    upload_authorizations: list[str] = field(default_factory=list, init=False, repr=False)  # headers seen there
    submits: int = field(default=0, init=False)  # every POST /generations
    accepted: int = field(default=0, init=False)
    status_polls: int = field(default=0, init=False)
    unauthorized: int = field(default=0, init=False)
    received: list[GenerationInput] = field(default_factory=list, init=False, repr=False)
    _faults: FaultScript = field(default_factory=FaultScript, init=False, repr=False)
    _failures: int = field(default=0, init=False, repr=False)
    _uploads: dict[str, _Upload] = field(default_factory=dict, init=False, repr=False)
    _generations: dict[str, _Generation] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def inject(self, endpoint: Endpoint, *faults: Fault) -> None:
        """The next requests to `endpoint` meet these faults, one each, in order."""
        self._faults.inject(endpoint, *faults)

    def fail_next(self, count: int = 1) -> None:
        """The next `count` accepted generations end FAILED."""
        with self._lock:
            self._failures += count

    @property
    def app(self) -> ASGIApp:
        routes = [
            Route(f"{API_PREFIX}/init-image", self._init_image, methods=["POST"]),
            Route("/s3-upload", self._upload, methods=["POST"]),
            Route(f"{API_PREFIX}/generations", self._generate, methods=["POST"]),
            Route(f"{API_PREFIX}/generations/{{generation_id}}", self._status, methods=["GET"]),
            Route("/files/{generation_id}/{file_name}", self._file, methods=["GET"]),
        ]
        return _marked(Starlette(routes=routes))

    def webhook(self, generation_id: str) -> dict[str, Any]:
        """The callback body Leonardo sends when a generation completes (docs: webhook callback guide)."""
        generation = self._generations[generation_id]
        data = generation.body()
        data["images"] = data.pop("generated_images")
        return {
            "type": "image_generation.complete",
            "object": "generation",
            "timestamp": int(time.time() * 1000),
            "api_version": "v1",
            "data": {"object": data},
        }

    async def deliver_webhook(self, generation_id: str, url: str, callback_key: str | None) -> httpx.Response:
        """POST the completion callback to `url`, with `authorization: Bearer <callback_key>` (none if None)."""
        headers = {"authorization": f"Bearer {callback_key}"} if callback_key is not None else {}
        async with httpx.AsyncClient(timeout=5.0) as client:
            return await client.post(url, json=self.webhook(generation_id), headers=headers)

    # --- endpoints ---------------------------------------------------------------------------------

    async def _init_image(self, request: Request) -> Response:
        self.presigns += 1
        refused = await self._gate(request, "init-image")
        if refused is not None:
            return refused
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "Invalid JSON body")
        extension = body.get("extension") if isinstance(body, dict) else None
        if extension not in ("png", "jpg", "jpeg", "webp"):
            return _error(400, f"extension has to be png, jpg, jpeg, or webp, got {extension!r}")
        image_id = str(uuid.uuid4())
        key = f"{FILE_PREFIX}init/{image_id}.{extension}"
        fields = {
            "key": key,
            "bucket": "fake-leonardo-init-images",
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Credential": "FAKE/20261124/us-west-2/s3/aws4_request",
            "X-Amz-Date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
            "Policy": secrets.token_urlsafe(24),
            "X-Amz-Signature": secrets.token_hex(32),
        }
        with self._lock:
            self._uploads[fields["key"]] = _Upload(image_id, fields, time.monotonic())
        upload = {"id": image_id, "url": f"{str(request.base_url).rstrip('/')}/s3-upload", "fields": json.dumps(fields)}
        return JSONResponse({"uploadInitImage": {**upload, "key": key}})

    async def _upload(self, request: Request) -> Response:
        """S3's presigned POST: no auth header, every issued field, then the file."""
        self.upload_attempts += 1
        authorization = request.headers.get("Authorization")
        if authorization is not None:
            self.upload_authorizations.append(authorization)
            return _s3_error(400, "InvalidArgument", "Only one auth mechanism allowed")
        faulted = await self._fault("upload")
        if faulted is not None:
            return faulted
        form = await request.form()
        upload = self._uploads.get(str(form.get("key", "")))
        if upload is None:
            return _s3_error(403, "AccessDenied", "Invalid according to Policy: no such presigned key")
        if time.monotonic() - upload.issued > self.upload_ttl_s:
            return _s3_error(403, "AccessDenied", "Invalid according to Policy: Policy expired.")
        for name, value in upload.fields.items():
            if form.get(name) != value:
                return _s3_error(403, "AccessDenied", f"Invalid according to Policy: field {name} does not match")
        file = form.get("file")
        if not isinstance(file, UploadFile):
            return _s3_error(400, "InvalidArgument", "POST requires exactly one file upload per request.")
        data = await file.read()
        try:
            sim_images.decode_image(data)
        except ValueError:
            return _s3_error(400, "InvalidArgument", "the file is not an image (fake check)")
        upload.image = data
        self.uploads += 1
        return Response(status_code=204)

    async def _generate(self, request: Request) -> Response:
        self.submits += 1
        refused = await self._gate(request, "generate")
        if refused is not None:
            return refused
        try:
            arguments = GenerationInput.model_validate(await request.json())
        except ValueError as error:
            if isinstance(error, ValidationError):
                first = error.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                return _error(400, f"{where}: {first['msg']}", code="unexpected")
            return _error(400, "Invalid JSON body")
        if len(arguments.controlnets) != 1:
            return _error(400, "this fake takes exactly one controlnet (a Character Reference)")
        controlnet = arguments.controlnets[0]
        if controlnet.preprocessorId != 133 or controlnet.initImageType != "UPLOADED":
            msg = "controlnets[0]: this fake knows Character Reference on SDXL only (preprocessorId 133, UPLOADED)"
            return _error(400, msg)
        if (controlnet.strengthType is None) == (controlnet.weight is None):
            return _error(400, "controlnets[0]: give strengthType or weight, not both")
        source = next((u.image for u in self._uploads.values() if u.id == controlnet.initImageId), None)
        if source is None:
            return _error(400, f"controlnets[0].initImageId: no uploaded init image {controlnet.initImageId}")
        with self._lock:
            failed, self._failures = self._failures > 0, max(0, self._failures - 1)
        generation = _Generation(str(uuid.uuid4()), str(request.base_url).rstrip("/"), arguments, source, failed=failed)
        generation.render = asyncio.create_task(asyncio.to_thread(_render, source, arguments))
        self._generations[generation.id] = generation
        self.received.append(arguments)
        self.accepted += 1
        credits = CREDITS_PER_IMAGE * arguments.num_images
        return JSONResponse({"sdGenerationJob": {"generationId": generation.id, "apiCreditCost": credits}})

    async def _status(self, request: Request) -> Response:
        self.status_polls += 1
        refused = await self._gate(request, "status")
        if refused is not None:
            return refused
        generation = self._generations.get(request.path_params["generation_id"])
        if generation is None:
            return JSONResponse({"generations_by_pk": None})  # how Hasura answers an unknown id
        generation.polls += 1
        render = generation.render
        if generation.status == "PENDING" and generation.polls > self.pending_polls and render and render.done():
            if generation.failed or render.exception() is not None:
                generation.status = "FAILED"
            else:
                generation.image, generation.transform = render.result()
                generation.file_name = f"{FILE_PREFIX}{generation.id}.png"
                generation.status = "COMPLETE"
        return JSONResponse({"generations_by_pk": generation.body()})

    async def _file(self, request: Request) -> Response:
        faulted = await self._fault("file")
        if faulted is not None:
            return faulted
        generation = self._generations.get(request.path_params["generation_id"])
        if generation is None or generation.file_name != request.path_params["file_name"]:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        headers = {FAKE_TRANSFORM_HEADER: generation.transform.encode("ascii", "replace").decode("ascii")}
        return Response(generation.image, media_type="image/png", headers=headers)

    # --- plumbing ----------------------------------------------------------------------------------

    async def _gate(self, request: Request, endpoint: Endpoint) -> Response | None:
        """The Bearer key first (401), then any scripted fault for this endpoint."""
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.unauthorized += 1
            return _error(401, "Invalid authentication: send 'authorization: Bearer <api key>'", code="access-denied")
        return await self._fault(endpoint)

    async def _fault(self, endpoint: Endpoint) -> Response | None:
        return await self._faults.meet(
            endpoint, lambda fault, headers: _error(fault.status or 500, fault.detail, headers=headers)
        )


def _render(source: bytes, arguments: GenerationInput) -> tuple[bytes, str]:
    """The reference transformed for the prompt's scenario, at the requested size (CPU work: a thread)."""
    seed = arguments.seed
    if seed is None:
        seed = int.from_bytes(hashlib.sha256(arguments.prompt.encode()).digest()[:4], "big")
    size = (arguments.width, arguments.height)
    scenario = sim_images.scenario_for(None, arguments.prompt)
    shot = sim_images.render(sim_images.decode_image(source), scenario, size, np.random.default_rng(seed))
    transform = f"{scenario} from the uploaded init image: {shot.transform}; {size[0]}x{size[1]}"
    return sim_images.encode_png(shot), transform


def _error(
    status: int, message: str, *, code: str = "unexpected", headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message, "path": "$", "code": code}, status_code=status, headers=headers)


def _s3_error(status: int, code: str, message: str) -> Response:
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return Response(body, status_code=status, media_type="application/xml")


def _marked(app: ASGIApp) -> ASGIApp:
    """Every response, errors included, carries `X-Likeness-Fake: leonardo`."""

    async def marked(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (FAKE_MARKER_HEADER.lower().encode(), b"leonardo")]
            await send(message)

        await app(scope, receive, send_marked)

    return marked
