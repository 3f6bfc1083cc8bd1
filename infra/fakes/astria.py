"""A fake of Astria's tunes and prompts API, on loopback: a test and demo tool, never Astria.

It speaks the contract in provider-contracts.md section 2 (docs.astria.ai/docs/api/flux-api):
`Authorization: Bearer <key>` (401 otherwise); `POST /tunes` as multipart/form-data (`tune[title]`,
`tune[name]`, `tune[base_tune_id]`, `tune[model_type]`, `tune[token]`, `tune[callback]`,
`tune[images][]` files), answered 201 with the tune object; `GET /tunes` (newest first, `limit`),
`GET /tunes/:id`, `DELETE /tunes/:id`; `POST /tunes/:id/prompts` (JSON `{"prompt": {...}}` or
`prompt[...]` form fields) and `GET /tunes/:id/prompts/:prompt_id`. Validation errors are 422s with
Rails-style bodies (`{"images": ["can't be blank"]}`); a prompt posted to a LoRA tune itself gets
the 422 the docs quote ("model_type=lora is not supported. Use a checkpoint instead").

A tune starts training on its second poll (`started_training_at`, `eta`) and is trained
(`trained_at`) after `training_polls` polls and at least `training_s` seconds; a FaceID tune is
trained at once. A prompt is done (`trained_at`, `images`) after `prompt_polls` polls. Both POST their
callback, when one was given, as `{"tune": {...}}` / `{"prompt": {...}}` (or the bare entity with
`wrap_callbacks=False`); `wrong_callback_token` swaps the URL's `token` for a wrong one.

The images are real: the prompt renders the tune's first reference as the offline simulator does
(`sim_images`), so face scoring downstream sees the reference person. Nothing here is Astria's
output, and every answer says so: the `X-Likeness-Fake: astria` header, files named "fake-astria-".
Faults are scripted per endpoint (`inject`): 429 with Retry-After, 5xx, slow answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import httpx
import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infra.fakes.faults import Fault, FaultScript, play
from services.provider_adapter.providers import sim_images
from services.provider_adapter.providers.astria import FLUX1_DEV
from services.provider_adapter.providers.http import FAKE_MARKER_HEADER, FAKE_TRANSFORM_HEADER

FILE_PREFIX: Final = "fake-astria-"
CLASS_NAMES: Final = frozenset({"man", "woman", "person", "boy", "girl", "baby", "cat", "dog", "style"})
MODEL_TYPES: Final = frozenset({"lora", "pti", "faceid"})
Endpoint = Literal["create_tune", "list", "tune", "prompt", "prompt_status", "file"]


@dataclass
class _Tune:
    id: int
    title: str
    name: str
    token: str
    base_tune_id: int | None
    model_type: str | None
    callback: str | None
    references: list[bytes]
    created: float
    started: float | None = None
    trained: float | None = None
    polls: int = 0

    def body(self, base_url: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "name": self.name,
            "token": self.token,
            "base_tune_id": self.base_tune_id,
            "model_type": self.model_type,
            "branch": "flux1",
            "args": None,
            "steps": None,
            "face_crop": None,
            "ckpt_url": None,
            "ckpt_urls": [],
            "eta": _iso(self.started + 60.0) if self.started is not None else None,
            "trained_at": _iso(self.trained),
            "started_training_at": _iso(self.started),
            "expires_at": _iso(self.trained + 30 * 86400.0) if self.trained is not None else None,
            "created_at": _iso(self.created),
            "updated_at": _iso(self.trained or self.started or self.created),
            "callback": self.callback,
            "url": f"{base_url}/tunes/{self.id}.json",
            "orig_images": [
                f"{base_url}/files/{FILE_PREFIX}tune-{self.id}-{i}.png" for i in range(len(self.references))
            ],
        }


@dataclass
class _Prompt:
    id: int
    tune_id: int
    text: str
    source: bytes
    size: tuple[int, int]
    seed: int
    callback: str | None
    created: float
    render: asyncio.Task[tuple[bytes, str]] | None = None
    trained: float | None = None
    polls: int = 0
    images: list[str] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tune_id": self.tune_id,
            "text": self.text,
            "negative_prompt": "",
            "seed": self.seed,
            "w": self.size[0],
            "h": self.size[1],
            "callback": self.callback,
            "trained_at": _iso(self.trained),
            "started_training_at": _iso(self.created),
            "created_at": _iso(self.created),
            "updated_at": _iso(self.trained or self.created),
            "url": f"https://www.astria.ai/tunes/{self.tune_id}/prompts/{self.id}.json (fake)",
            "images": list(self.images),
        }


@dataclass
class AstriaFake:
    """The fake's state, scripts and counters; `app` is the ASGI app to serve (see infra.fakes.server)."""

    api_key: str = field(repr=False)
    training_polls: int = 2  # tune polls before trained_at is set, at the least...
    training_s: float = 0.0  # ...and seconds
    prompt_polls: int = 1  # prompt polls before its images exist
    wrap_callbacks: bool = True  # `{"tune": {...}}` (the starter's reading) or the bare entity (the docs')
    wrong_callback_token: bool = False
    tunes_created: int = field(default=0, init=False)  # accepted POST /tunes
    tune_posts: int = field(default=0, init=False)  # every POST /tunes, whatever it was answered
    prompt_posts: int = field(default=0, init=False)
    prompts_created: int = field(default=0, init=False)
    unauthorized: int = field(default=0, init=False)
    received_tunes: list[dict[str, Any]] = field(default_factory=list, init=False, repr=False)  # accepted forms
    received_prompts: list[dict[str, Any]] = field(default_factory=list, init=False, repr=False)
    callbacks: list[tuple[str, int | str]] = field(default_factory=list, init=False, repr=False)  # url, status
    _faults: FaultScript = field(default_factory=FaultScript, init=False, repr=False)
    _tunes: dict[int, _Tune] = field(default_factory=dict, init=False, repr=False)
    _prompts: dict[int, _Prompt] = field(default_factory=dict, init=False, repr=False)
    _files: dict[str, tuple[bytes, str]] = field(default_factory=dict, init=False, repr=False)  # name: bytes, transform
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)
    _next_id: int = field(default=2_000_000, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        gallery = _Tune(FLUX1_DEV, "Flux1.dev", "flux", "", None, None, None, [], time.time(), trained=time.time())
        self._tunes[FLUX1_DEV] = gallery

    def inject(self, endpoint: Endpoint, *faults: Fault) -> None:
        """The next requests to `endpoint` meet these faults, one each, in order."""
        self._faults.inject(endpoint, *faults)

    def tune(self, tune_id: int) -> dict[str, Any]:
        return self._tunes[tune_id].body("http://fake")

    @property
    def app(self) -> ASGIApp:
        routes = [
            Route("/tunes", self._create_tune, methods=["POST"]),
            Route("/tunes", self._list_tunes, methods=["GET"]),
            Route("/tunes/{tune_id:int}", self._get_tune, methods=["GET"]),
            Route("/tunes/{tune_id:int}", self._delete_tune, methods=["DELETE"]),
            Route("/tunes/{tune_id:int}/prompts", self._create_prompt, methods=["POST"]),
            Route("/tunes/{tune_id:int}/prompts/{prompt_id:int}", self._get_prompt, methods=["GET"]),
            Route("/files/{name}", self._file, methods=["GET"]),
        ]
        return _marked(Starlette(routes=routes))

    # --- tunes -------------------------------------------------------------------------------------

    async def _create_tune(self, request: Request) -> Response:
        self.tune_posts += 1
        refused = await self._gate(request, "create_tune")
        if refused is not None:
            return refused
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return _invalid("images", "send the images as multipart tune[images][] (this fake reaches no network)")
        form = await request.form(max_files=100)
        fields = {key: value for key, value in form.multi_items() if isinstance(value, str)}
        uploads = [
            value for key, value in form.multi_items() if key == "tune[images][]" and isinstance(value, UploadFile)
        ]
        errors: dict[str, list[str]] = {}
        if not fields.get("tune[title]", "").strip():
            errors["title"] = ["can't be blank"]
        name = fields.get("tune[name]", "")
        if name not in CLASS_NAMES:
            errors["name"] = [f"is not included in the list ({', '.join(sorted(CLASS_NAMES))})"]
        model_type = fields.get("tune[model_type]") or None
        if model_type is not None and model_type not in MODEL_TYPES:
            errors["model_type"] = ["is not included in the list (lora, pti, faceid)"]
        base = fields.get("tune[base_tune_id]")
        base_tune_id = int(base) if base and base.isdigit() else None
        if base is not None and (base_tune_id is None or base_tune_id not in self._tunes):
            errors["base_tune_id"] = ["is not a gallery tune"]
        references = [await upload.read() for upload in uploads]
        if not references:
            errors["images"] = ["can't be blank"]
        elif not all(_is_image(data) for data in references):
            errors["images"] = ["could not be processed: not an image"]
        if errors:
            return JSONResponse(errors, status_code=422)
        after: Fault | None = getattr(request.state, "after", None)
        now = time.time()
        tune = _Tune(
            self._new_id(),
            fields["tune[title]"],
            name,
            fields.get("tune[token]") or "ohwx",
            base_tune_id,
            model_type,
            fields.get("tune[callback]") or None,
            references,
            now,
        )
        if model_type == "faceid":  # no training: trained at creation
            tune.started = tune.trained = now
        self._tunes[tune.id] = tune
        self.tunes_created += 1
        self.received_tunes.append({**fields, "images": len(references)})
        base_url = str(request.base_url).rstrip("/")
        if tune.trained is not None:
            self._callback(tune.callback, "tune", tune.body(base_url))
        if after is not None and after.status is not None:
            return JSONResponse({"error": after.detail}, status_code=after.status)
        return JSONResponse(tune.body(base_url), status_code=201)

    async def _list_tunes(self, request: Request) -> Response:
        refused = await self._gate(request, "list")
        if refused is not None:
            return refused
        limit = int(request.query_params.get("limit", "20") or 20)
        base_url = str(request.base_url).rstrip("/")
        ours = sorted((t for t in self._tunes.values() if t.id != FLUX1_DEV), key=lambda t: -t.id)
        return JSONResponse([tune.body(base_url) for tune in ours[:limit]])

    async def _get_tune(self, request: Request) -> Response:
        refused = await self._gate(request, "tune")
        if refused is not None:
            return refused
        tune = self._tunes.get(request.path_params["tune_id"])
        if tune is None:
            return JSONResponse({"error": "Not found"}, status_code=404)
        tune.polls += 1
        now = time.time()
        if tune.started is None:
            if tune.polls > 1:  # the first poll finds it queued
                tune.started = now
        elif tune.trained is None and tune.polls > self.training_polls and now - tune.started >= self.training_s:
            tune.trained = now
            self._callback(tune.callback, "tune", tune.body(str(request.base_url).rstrip("/")))
        return JSONResponse(tune.body(str(request.base_url).rstrip("/")))

    async def _delete_tune(self, request: Request) -> Response:
        refused = await self._gate(request, "tune")
        if refused is not None:
            return refused
        if self._tunes.pop(request.path_params["tune_id"], None) is None:
            return JSONResponse({"error": "Not found"}, status_code=404)
        return Response(status_code=204)

    # --- prompts -----------------------------------------------------------------------------------

    async def _create_prompt(self, request: Request) -> Response:
        self.prompt_posts += 1
        refused = await self._gate(request, "prompt")
        if refused is not None:
            return refused
        tune = self._tunes.get(request.path_params["tune_id"])
        if tune is None:
            return JSONResponse({"error": "Not found"}, status_code=404)
        fields = await _prompt_fields(request)
        if fields is None:
            return _invalid("prompt", 'send a JSON {"prompt": {...}} or prompt[...] form fields')
        errors: dict[str, list[str]] = {}
        text = str(fields.get("text") or "").strip()
        if not text:
            errors["text"] = ["can't be blank"]
        if tune.model_type == "lora":
            errors["tune"] = ["model_type=lora is not supported. Use a checkpoint instead"]
        numbers = {name: _integer(fields.get(name)) for name in ("num_images", "seed", "w", "h", "steps")}
        if not 1 <= (numbers["num_images"] or 1) <= 8:
            errors["num_images"] = ["must be between 1 and 8"]
        width, height = numbers["w"] or 1024, numbers["h"] or 1024
        if width % 8 or height % 8 or not (256 <= width <= 2048 and 256 <= height <= 2048):
            errors["w"] = ["w and h must be multiples of 8 between 256 and 2048"]
        source = tune.references[0] if tune.references else b""
        if tune.id == FLUX1_DEV and not errors.get("text"):
            source = self._lora_source(text, errors)
        if errors:
            return JSONResponse(errors, status_code=422)
        seed = numbers["seed"] if numbers["seed"] is not None else _seed(text)
        callback = fields.get("callback")
        prompt = _Prompt(
            self._new_id(),
            tune.id,
            text,
            source,
            (width, height),
            seed,
            str(callback) if callback else None,
            time.time(),
        )
        prompt.render = asyncio.create_task(asyncio.to_thread(_render, prompt))
        self._prompts[prompt.id] = prompt
        self.prompts_created += 1
        self.received_prompts.append(dict(fields))
        return JSONResponse(prompt.body(), status_code=201)

    def _lora_source(self, text: str, errors: dict[str, list[str]]) -> bytes:
        """The first reference of the trained tune a `<lora:ID:w>` / `<faceid:ID:w>` tag names."""
        for kind in ("lora", "faceid"):
            start = text.find(f"<{kind}:")
            if start < 0:
                continue
            tag_id = text[start + len(kind) + 2 :].split(":", 1)[0]
            tune = self._tunes.get(int(tag_id)) if tag_id.isdigit() else None
            if tune is None or tune.trained is None or not tune.references:
                errors["text"] = [f"{kind} {tag_id} is not a trained tune of this account"]
                return b""
            return tune.references[0]
        errors["text"] = ["a base tune prompt must load a tune: <lora:ID:1> or <faceid:ID:1>"]
        return b""

    async def _get_prompt(self, request: Request) -> Response:
        refused = await self._gate(request, "prompt_status")
        if refused is not None:
            return refused
        prompt = self._prompts.get(request.path_params["prompt_id"])
        if prompt is None or prompt.tune_id != request.path_params["tune_id"]:
            return JSONResponse({"error": "Not found"}, status_code=404)
        prompt.polls += 1
        if prompt.trained is None and prompt.polls >= self.prompt_polls and prompt.render and prompt.render.done():
            image, transform = prompt.render.result()
            name = f"{FILE_PREFIX}prompt-{prompt.id}-0.png"
            self._files[name] = (image, transform)
            prompt.images = [f"{str(request.base_url).rstrip('/')}/files/{name}"]
            prompt.trained = time.time()
            self._callback(prompt.callback, "prompt", prompt.body())
        return JSONResponse(prompt.body())

    async def _file(self, request: Request) -> Response:
        faulted = await self._fault("file")
        if faulted is not None:
            return faulted
        served = self._files.get(request.path_params["name"])
        if served is None:
            return JSONResponse({"error": "Not found"}, status_code=404)
        transform = served[1].encode("ascii", "replace").decode("ascii")
        return Response(served[0], media_type="image/png", headers={FAKE_TRANSFORM_HEADER: transform})

    # --- plumbing ----------------------------------------------------------------------------------

    def _new_id(self) -> int:
        with self._lock:
            self._next_id += 1
            return self._next_id

    def _callback(self, url: str | None, kind: str, entity: dict[str, Any]) -> None:
        """POST the entity to the callback URL, once, not retried (as Astria does), in the background."""
        if not url:
            return
        if self.wrong_callback_token:
            url = str(httpx.URL(url).copy_set_param("token", "0" * 64))
        body = {kind: entity} if self.wrap_callbacks else entity
        task = asyncio.create_task(self._post_callback(url, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post_callback(self, url: str, body: dict[str, Any]) -> None:
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                response = await client.post(url, json=body)
            self.callbacks.append((url, response.status_code))
        except httpx.HTTPError as error:
            self.callbacks.append((url, type(error).__name__))

    async def _gate(self, request: Request, endpoint: Endpoint) -> Response | None:
        """The key first (401), then any scripted fault for this endpoint."""
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.unauthorized += 1
            return JSONResponse({"error": "Unauthorized: send 'Authorization: Bearer sd_...'"}, status_code=401)
        return await self._fault(endpoint, request)

    async def _fault(self, endpoint: Endpoint, request: Request | None = None) -> Response | None:
        fault = self._faults.take(endpoint)
        if fault is None:
            return None
        if fault.processed and request is not None:  # answered after the work is done
            request.state.after = fault
            return None
        return await play(fault, _fault_answer)


async def _prompt_fields(request: Request) -> dict[str, Any] | None:
    """`{"prompt": {...}}` as JSON, or the `prompt[...]` fields of a form."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        try:
            body = await request.json()
        except ValueError:
            return None
        inner = body.get("prompt") if isinstance(body, Mapping) else None
        return dict(inner) if isinstance(inner, Mapping) else None
    form = await request.form()
    fields = {
        key[len("prompt[") : -1]: value
        for key, value in form.multi_items()
        if key.startswith("prompt[") and isinstance(value, str)
    }
    return fields or None


def _integer(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment % 1 * 1000):03d}Z"


def _is_image(data: bytes) -> bool:
    try:
        sim_images.decode_image(data)
    except ValueError:
        return False
    return True


def _render(prompt: _Prompt) -> tuple[bytes, str]:
    """The tune's reference transformed for the prompt's scenario, at the requested size (CPU: a thread)."""
    source = sim_images.decode_image(prompt.source)
    scenario = sim_images.scenario_for(None, prompt.text)
    shot = sim_images.render(source, scenario, prompt.size, np.random.default_rng(prompt.seed), mirror=True)
    width, height = prompt.size
    return sim_images.encode_png(shot), f"{scenario} from the tune's reference: {shot.transform}; {width}x{height}"


def _invalid(field_name: str, message: str) -> JSONResponse:
    return JSONResponse({field_name: [message]}, status_code=422)


def _marked(app: ASGIApp) -> ASGIApp:
    """Every response, errors included, carries `X-Likeness-Fake: astria`."""

    async def marked(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (FAKE_MARKER_HEADER.lower().encode(), b"astria")]
            await send(message)

        await app(scope, receive, send_marked)

    return marked


def _fault_answer(fault: Fault, headers: Mapping[str, str] | None) -> Response:
    return JSONResponse({"error": fault.detail}, status_code=fault.status or 500, headers=headers)
